"""``exact_dedup``: keep the first occurrence of each instruction/answer (or pair), drop the repeats.

The comparison key can ignore case (``case_insensitive``, via casefold) and whitespace differences
(``normalize_whitespace``: runs of any whitespace compare as one space, ends trimmed); the kept row is
returned exactly as it was. ``key`` chooses what must match: the whole pair, only the instruction (one
answer per question), or only the answer.
"""

from __future__ import annotations

from typing import Literal, cast

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["ExactDedup", "ExactDedupParams"]


class ExactDedupParams(OperatorParams):
    key: Literal["pair", "instruction", "answer"] = "pair"
    case_insensitive: bool = True
    normalize_whitespace: bool = True


@register_operator
class ExactDedup(Operator):
    name = "exact_dedup"
    team = Team.CLEANING
    version = "1"
    Params = ExactDedupParams

    def _norm(self, text: str) -> str:
        p = cast(ExactDedupParams, self.params)
        if p.normalize_whitespace:
            text = " ".join(text.split())
        return text.casefold() if p.case_insensitive else text

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(ExactDedupParams, self.params)
        seen: set[tuple[str, ...]] = set()
        keep = []
        for instruction, answer in zip(batch["instruction"], batch["answer"], strict=True):
            parts = {"pair": (instruction, answer), "instruction": (instruction,), "answer": (answer,)}
            k = tuple(self._norm(t) for t in parts[p.key])
            keep.append(k not in seen)
            seen.add(k)
        return batch, keep
