"""The JSON schema of a meta-agent answer, built from the operator catalog, and the catalog as the prompt
shows it.

An answer is ``{"strategies": [[step, ...], ...]}``: a fixed number of strategies, each a short list of
steps, each step ``{"op": <catalog name>, "params": {...}}``. Steps are an ``anyOf`` with one branch per
operator whose ``op`` is a one-value enum, so a guided decoder can only write, after a given name, that
operator's own parameters with their types and bounds. Every parameter is required (strict mode wants all
properties listed): the model states each value, and a strategy has one canonical form for dedupe.
``default`` is left out of the schema (some structured-output backends reject unknown keywords) and shown
in the prompt instead.

Diverse starts (``starts``): the strategies array becomes a tuple (``prefixItems``) whose slot j must
begin with an operator from its own group of names, the groups disjoint where the catalog allows. A small
model's commonest failure is writing one strategy K times in one answer; with disjoint first steps that
cannot happen, and the rest of each strategy is still the model's choice. xgrammar (the local backend and
vLLM's default) supports ``prefixItems``; a server that does not can run with ``agent.diverse_starts: false``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from protos.views import OperatorSpec, ParamSpec, Team

__all__ = ["ANSWER_KEY", "CHOICE_KEY", "answer_schema", "catalog_for_prompt", "choice_schema", "operator_schema",
           "start_groups", "teams_for_prompt"]

ANSWER_KEY = "strategies"
CHOICE_KEY = "choices"


def _param_schema(spec: ParamSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.json_schema().items() if k != "default"}


def operator_schema(spec: OperatorSpec) -> dict[str, Any]:
    """One ``anyOf`` branch: this operator's name and exactly its typed parameters."""
    params = {p.name: _param_schema(p) for p in spec.params}
    return {
        "type": "object",
        "properties": {
            "op": {"type": "string", "enum": [spec.name]},
            "params": {"type": "object", "properties": params, "required": list(params),
                       "additionalProperties": False},
        },
        "required": ["op", "params"],
        "additionalProperties": False,
    }


def start_groups(catalog: Sequence[OperatorSpec], k: int, seed: int) -> list[list[str]]:
    """``k`` groups of operator names, one per strategy slot, for :func:`answer_schema`'s ``starts``: the
    catalog's names in a seeded shuffle, dealt round-robin, so the groups are disjoint and every operator
    may start some strategy. With more slots than operators, a slot beyond the catalog gets one name again
    (dealt in the same order)."""
    names = sorted(s.name for s in catalog)
    if k < 1 or not names:
        raise ValueError("start groups need k >= 1 and a catalog")
    random.Random(seed).shuffle(names)
    if k >= len(names):
        return [[names[i % len(names)]] for i in range(k)]
    return [sorted(names[i::k]) for i in range(k)]


def answer_schema(catalog: Sequence[OperatorSpec], k: int, max_length: int,
                  starts: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """Exactly ``k`` strategies of 1..``max_length`` steps over ``catalog`` (which must not be empty); with
    ``starts`` (one group of catalog names per strategy), strategy j's first step is one of ``starts[j]``."""
    if not catalog:
        raise ValueError("an answer schema needs at least one operator")
    if k < 1 or max_length < 1:
        raise ValueError("k and max_length must be >= 1")
    by_name = {s.name: s for s in catalog}
    step = {"anyOf": [operator_schema(by_name[n]) for n in sorted(by_name)]}
    strategies: dict[str, Any]
    if starts is None:
        strategy = {"type": "array", "minItems": 1, "maxItems": max_length, "items": step}
        strategies = {"type": "array", "minItems": k, "maxItems": k, "items": strategy}
    else:
        if len(starts) != k or any(not g or any(n not in by_name for n in g) for g in starts):
            raise ValueError("starts: one non-empty group of catalog names per strategy")
        slots = [{"type": "array", "minItems": 1, "maxItems": max_length,
                  "prefixItems": [{"anyOf": [operator_schema(by_name[n]) for n in sorted(set(g))]}], "items": step}
                 for g in starts]
        strategies = {"type": "array", "minItems": k, "maxItems": k, "prefixItems": slots, "items": False}
    return {
        "type": "object",
        "properties": {ANSWER_KEY: strategies},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }


def choice_schema(n_candidates: int, k: int) -> dict[str, Any]:
    """The ``choose`` mode's answer: ``{"choices": [id, ...]}``, exactly ``k`` candidate ids in 1..n."""
    if not 1 <= k <= n_candidates:
        raise ValueError("a choice needs 1 <= k <= the number of candidates")
    ids = {"type": "integer", "minimum": 1, "maximum": n_candidates}
    return {
        "type": "object",
        "properties": {CHOICE_KEY: {"type": "array", "minItems": k, "maxItems": k, "items": ids}},
        "required": [CHOICE_KEY],
        "additionalProperties": False,
    }


def teams_for_prompt(catalog: Sequence[OperatorSpec]) -> str:
    """One line per team with its operators' names (the ``choose`` prompt shows strategies, not parameters)."""
    lines = []
    for team in Team:
        names = sorted(s.name for s in catalog if s.team is team)
        if names:
            lines.append(f"{team.value}: {', '.join(names)}")
    return "\n".join(lines)


def catalog_for_prompt(catalog: Sequence[OperatorSpec]) -> str:
    """One line per operator, grouped by team: ``name: {param: {type, minimum, maximum, default}}``."""
    lines: list[str] = []
    for team in Team:
        specs = sorted((s for s in catalog if s.team is team), key=lambda s: s.name)
        if not specs:
            continue
        lines.append(f"[{team.value}]")
        for s in specs:
            params = {p.name: p.json_schema() for p in s.params}
            lines.append(f"{s.name}: {json.dumps(params, separators=(',', ':'))}")
    return "\n".join(lines)
