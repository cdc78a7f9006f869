"""The meta-agent's prompts: versioned template files and the group relative comparison of past rounds.

Templates live in ``coordinator/agent/prompts/<name>.<version>.txt`` (``#`` lines are comments, ``$field``
placeholders, :class:`string.Template`). Changing a prompt means a new file and a new ``PROMPT_VERSION``,
so a search report can say which prompt produced its proposals.

What a prompt may contain: catalog names (operators, teams, parameters, enum choices), numbers, and ids
made here (``r2.3`` = round 2, third strategy). Strategies and scores are the only history shown; the
coordinator has nothing else, and nothing else should ever be added here.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from importlib.resources import files
from string import Template

from coordinator.agent.schema import catalog_for_prompt, teams_for_prompt
from coordinator.proposers import ScoredStrategy
from protos.views import OperatorSpec, Strategy

__all__ = ["PROMPT_VERSION", "build_choice_messages", "build_messages", "load_prompt", "render_comparison",
           "render_reask"]

# v2: diverse starts shown per strategy; a strategy built on a shown one must change; mode "choose"
PROMPT_VERSION = "v2"
MAX_ROUNDS_SHOWN = 8  # older rounds are summarized in one line: the prompt stays bounded on long searches


@functools.cache
def load_prompt(name: str, version: str = PROMPT_VERSION) -> Template:
    text = files("coordinator.agent").joinpath("prompts").joinpath(f"{name}.{version}.txt").read_text("utf-8")
    return Template("\n".join(line for line in text.splitlines() if not line.startswith("#")).strip())


def _num(x: float) -> str:
    """Signed, 4 decimals, and never "-0.0000" (a float rounding artefact that reads as a loss)."""
    text = f"{x:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def _strategy(s: Strategy) -> str:
    return json.dumps(s.canonical(), separators=(",", ":"))


def _contrast(best: Strategy, worst: Strategy) -> str:
    """What the best strategy of a round did differently from the worst: operators and parameter values."""
    b, w = {c.op: c.kwargs for c in best.calls}, {c.op: c.kwargs for c in worst.calls}
    parts: list[str] = []
    if only := [op for op in b if op not in w]:
        parts.append("only in best: " + ", ".join(only))
    if only := [op for op in w if op not in b]:
        parts.append("only in worst: " + ", ".join(only))
    for op in (op for op in b if op in w):
        parts += [f"{op}.{p} {v} (best) vs {w[op].get(p)} (worst)" for p, v in b[op].items() if w[op].get(p) != v]
    shared_b, shared_w = [op for op in b if op in w], [op for op in w if op in b]
    if shared_b != shared_w:
        parts.append("shared steps in a different order")
    return "; ".join(parts[:12]) or "no difference in operators or parameters"


def _round_block(round_no: int, entries: Sequence[tuple[str, ScoredStrategy]]) -> list[str]:
    scored = [(i, e) for i, e in entries if e.score is not None]
    unscored = [(i, e) for i, e in entries if e.score is None]
    if not scored:
        lines = [f"Round {round_no}: no strategy was scored (no site answered)."]
    else:
        scores = [e.score for _, e in scored if e.score is not None]
        mean = sum(scores) / len(scores)
        lines = [f"Round {round_no}: {len(scored)} scored, round mean {_num(mean)}, "
                 f"best {_num(max(scores))}, worst {_num(min(scores))}"]
        ranked = sorted(scored, key=lambda ie: -(ie[1].score or 0.0))
        for ident, e in ranked:
            s = e.score or 0.0
            rank = 1 + sum(x > s for x in scores)
            vs0 = "better than" if s > 0 else "worse than" if s < 0 else "same as"
            lines.append(f"  rank {rank} | id {ident} | score {_num(s)} | vs round mean {_num(s - mean)} | "
                         f"{vs0} no processing | {_strategy(e.strategy)}")
        if len(ranked) > 1 and ranked[0][1].score != ranked[-1][1].score:
            lines.append(f"  best ({ranked[0][0]}) vs worst ({ranked[-1][0]}): "
                         + _contrast(ranked[0][1].strategy, ranked[-1][1].strategy))
    lines += [f"  not scored | id {i} | no site answered | {_strategy(e.strategy)}" for i, e in unscored]
    return lines


def render_comparison(history: Sequence[ScoredStrategy], round_no: int) -> str:
    """The group relative comparison of every finished round before ``round_no``."""
    rounds: dict[int, list[tuple[str, ScoredStrategy]]] = defaultdict(list)
    for e in history:
        if e.round_no < round_no:
            rounds[e.round_no].append((f"r{e.round_no}.{len(rounds[e.round_no]) + 1}", e))
    order = sorted(rounds)
    older, recent = order[:-MAX_ROUNDS_SHOWN], order[-MAX_ROUNDS_SHOWN:]
    lines: list[str] = []
    if older:
        n = sum(len(rounds[r]) for r in older)
        lines.append(f"Rounds {older[0]}-{older[-1]}: {n} strategies (details left out; the best is named below).")
    for r in recent:
        lines += _round_block(r, rounds[r])
    every = [(i, e) for r in order for i, e in rounds[r] if e.score is not None]
    if every:
        ident, best = max(every, key=lambda ie: ie[1].score or 0.0)
        lines.append(f"Best so far: id {ident} | score {_num(best.score or 0.0)} | {_strategy(best.strategy)}")
    return "\n".join(lines) if lines else "No round has finished yet."


def _chosen(entries: Sequence[ScoredStrategy]) -> str:
    if not entries:
        return ""
    body = "\n".join(f"  id c{i} | {_strategy(e.strategy)}" for i, e in enumerate(entries, 1))
    return f"\nAlready proposed, not scored yet (do not repeat them):\n{body}\n"


def _starts(starts: Sequence[Sequence[str]] | None) -> str:
    if not starts:
        return ""
    body = "\n".join(f"- strategy {j} starts with {'one of: ' if len(g) > 1 else ''}{', '.join(g)}"
                     for j, g in enumerate(starts, 1))
    head = "So that the strategies differ, each one starts with its own operator (then any steps you choose):"
    return f"\n{head}\n{body}\n"


def _finished(history: Sequence[ScoredStrategy], round_no: int) -> bool:
    """Some round before ``round_no`` has a score: the prompt shows the group relative comparison."""
    return any(e.round_no < round_no and e.score is not None for e in history)


def _messages(system: str, first: str, refine: str, fields: dict[str, str], history: Sequence[ScoredStrategy],
              round_no: int) -> list[dict[str, str]]:
    """The system template as is and a user message: template ``first`` filled with ``fields`` until some
    earlier round has a score, then ``refine`` with the group relative comparison as well."""
    if _finished(history, round_no):
        user = load_prompt(refine).substitute(fields, comparison=render_comparison(history, round_no))
    else:
        user = load_prompt(first).substitute(fields)
    return [{"role": "system", "content": load_prompt(system).template}, {"role": "user", "content": user}]


def build_messages(round_no: int, k: int, max_length: int, catalog: Sequence[OperatorSpec],
                   history: Sequence[ScoredStrategy],
                   starts: Sequence[Sequence[str]] | None = None) -> list[dict[str, str]]:
    """System and user message: the first-round prompt until some earlier round has a score, then the
    refine prompt with the group relative comparison. ``starts``: the first-step groups the answer schema
    imposes (:func:`coordinator.agent.schema.start_groups`), shown so the text and the grammar agree."""
    finished = _finished(history, round_no)
    # Without a finished round there is no comparison to show them in: list every earlier proposal.
    pending = [e for e in history if e.round_no >= round_no or not finished]
    fields = {"k": str(k), "max_length": str(max_length), "round_no": str(round_no),
              "catalog": catalog_for_prompt(catalog), "chosen": _chosen(pending), "starts": _starts(starts)}
    return _messages("system", "round1", "refine", fields, history, round_no)


def render_reask(problems: str, need: int) -> str:
    return load_prompt("reask").substitute(problems=problems, need=str(need))


def build_choice_messages(round_no: int, k: int, catalog: Sequence[OperatorSpec],
                          history: Sequence[ScoredStrategy], candidates: Sequence[Strategy]) -> list[dict[str, str]]:
    """System and user message of mode ``choose``: the candidates numbered from 1, to pick ``k`` of, after
    the group relative comparison of the finished rounds (none in the first round's prompt)."""
    fields = {"k": str(k), "round_no": str(round_no), "teams": teams_for_prompt(catalog),
              "candidates": "\n".join(f"  id {i} | {_strategy(s)}" for i, s in enumerate(candidates, 1))}
    return _messages("system_choose", "choose_round1", "choose_refine", fields, history, round_no)
