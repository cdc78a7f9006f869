"""The JSON schema of a meta-agent answer, built from the operator catalog, and the catalog as the prompt
shows it.

An answer is ``{"strategies": [[step, ...], ...]}``: a fixed number of strategies, each a short list of
steps, each step ``{"op": <catalog name>, "params": {...}}``. Steps are an ``anyOf`` with one branch per
operator whose ``op`` is a one-value enum, so a guided decoder can only write, after a given name, that
operator's own parameters with their types and bounds. Every parameter is required (strict mode wants all
properties listed): the model states each value, and a strategy has one canonical form for dedupe.
``default`` is left out of the schema (some structured-output backends reject unknown keywords) and shown
in the prompt instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from protos.views import OperatorSpec, ParamSpec, Team

__all__ = ["ANSWER_KEY", "answer_schema", "catalog_for_prompt", "operator_schema"]

ANSWER_KEY = "strategies"


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


def answer_schema(catalog: Sequence[OperatorSpec], k: int, max_length: int) -> dict[str, Any]:
    """Exactly ``k`` strategies of 1..``max_length`` steps over ``catalog`` (which must not be empty)."""
    if not catalog:
        raise ValueError("an answer schema needs at least one operator")
    if k < 1 or max_length < 1:
        raise ValueError("k and max_length must be >= 1")
    step = {"anyOf": [operator_schema(s) for s in sorted(catalog, key=lambda s: s.name)]}
    strategy = {"type": "array", "minItems": 1, "maxItems": max_length, "items": step}
    return {
        "type": "object",
        "properties": {ANSWER_KEY: {"type": "array", "minItems": k, "maxItems": k, "items": strategy}},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }


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
