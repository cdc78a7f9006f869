"""``length_balanced_topk``: keep the best ``fraction`` of rows within each answer-length bucket.

Ranking a whole dataset by one quality signal tends to keep one kind of row: by answer length it keeps
only long answers, and a screener may quietly prefer some lengths too. Here rows are first split into
``buckets`` equal-count groups by answer length (characters, surrounding whitespace ignored), and in
every bucket the top ``round(fraction * size)`` rows (at least one) by ``signal`` are kept, so short
and long answers both survive in their original proportions:

- ``answer_length``: longer is better within the bucket (more content at a similar length);
- ``screening``: the screener's P(clean) = 1 - P(needs processing); needs the site's screener.

Ties keep the earlier row. Rows are never rewritten.
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.context import RunContext
from site_agent.operators.registry import register_operator

__all__ = ["LengthBalancedTopK", "LengthBalancedTopKParams"]


class LengthBalancedTopKParams(OperatorParams):
    fraction: float = Field(default=0.5, ge=0.05, le=1.0)
    buckets: int = Field(default=4, ge=1, le=20)
    signal: Literal["answer_length", "screening"] = "answer_length"


@register_operator
class LengthBalancedTopK(Operator):
    name = "length_balanced_topk"
    team = Team.SELECTION
    version = "1"
    Params = LengthBalancedTopKParams

    def bind(self, context: RunContext) -> LengthBalancedTopK:
        # The screener is needed only for one signal, so it cannot be a class-level requirement.
        p = cast(LengthBalancedTopKParams, self.params)
        if p.signal == "screening" and "screener" not in context.provides():
            raise OperatorError(f"operator '{self.name}' needs ['screener'] for signal 'screening', "
                                "not configured at this site")
        super().bind(context)
        return self

    def _quality(self, batch: Batch, lengths: np.ndarray) -> np.ndarray:
        p = cast(LengthBalancedTopKParams, self.params)
        if p.signal == "answer_length":
            return lengths.astype(np.float64)
        proba = np.asarray(self.context.get_screener().noisy_proba(batch), dtype=np.float64)
        if proba.shape != lengths.shape:
            raise OperatorError(f"operator '{self.name}': the screener returned {proba.size} scores "
                                f"for {lengths.size} rows")
        return np.nan_to_num(1.0 - proba, nan=-np.inf)

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(LengthBalancedTopKParams, self.params)
        n = len(batch["answer"])
        if n == 0:
            return batch, []
        lengths = np.array([len(a.strip()) for a in batch["answer"]])
        quality = self._quality(batch, lengths)
        keep = np.zeros(n, dtype=bool)
        by_length = np.argsort(lengths, kind="stable")
        for bucket in np.array_split(by_length, min(p.buckets, n)):
            k = max(1, round(p.fraction * bucket.size))
            # lexsort's last key is primary: best quality first, then the earlier row.
            order = np.lexsort((bucket, -quality[bucket]))
            keep[bucket[order[:k]]] = True
        return batch, [bool(x) for x in keep]
