"""``length_filter``: drop rows whose instruction or answer is too short, or whose answer is too long.

Lengths are counted in characters after trimming surrounding whitespace, so an answer of only spaces
counts as empty. Too-short answers are typically truncated exports; overlong ones are often
degenerate generations stuck in a repetition loop. Rows are never rewritten.
"""

from __future__ import annotations

from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["LengthFilter", "LengthFilterParams"]


class LengthFilterParams(OperatorParams):
    # min > max is allowed and simply keeps nothing: the score, not a validator, judges the choice.
    min_answer_chars: int = Field(default=2, ge=0, le=10_000)
    max_answer_chars: int = Field(default=4_000, ge=1, le=100_000)
    min_instruction_chars: int = Field(default=3, ge=0, le=1_000)


@register_operator
class LengthFilter(Operator):
    name = "length_filter"
    team = Team.CLEANING
    version = "1"
    Params = LengthFilterParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(LengthFilterParams, self.params)
        keep = []
        for instruction, answer in zip(batch["instruction"], batch["answer"], strict=True):
            a = len(answer.strip())
            keep.append(len(instruction.strip()) >= p.min_instruction_chars
                        and p.min_answer_chars <= a <= p.max_answer_chars)
        return batch, keep
