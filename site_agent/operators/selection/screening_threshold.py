"""``screening_threshold``: keep the rows the screening classifier considers clean enough.

The site's screener (Processing Target Selection) gives each row P(needs processing). Rows at or below
``max_noisy_proba`` are kept; the rest are dropped rather than repaired, which is the cheap strategy
when the dataset is large enough to afford losing its worst rows. Rows are never rewritten.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["ScreeningThreshold", "ScreeningThresholdParams"]


class ScreeningThresholdParams(OperatorParams):
    max_noisy_proba: float = Field(default=0.5, ge=0.0, le=1.0)


@register_operator
class ScreeningThreshold(Operator):
    name = "screening_threshold"
    team = Team.SELECTION
    version = "1"
    Params = ScreeningThresholdParams
    requires = frozenset({"screener"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(ScreeningThresholdParams, self.params)
        n = len(batch["answer"])
        proba = np.asarray(self.context.get_screener().noisy_proba(batch), dtype=np.float64)
        if proba.shape != (n,):
            raise OperatorError(f"operator '{self.name}': the screener returned {proba.size} scores for {n} rows")
        # A NaN score is not evidence of a clean row.
        return batch, [bool(x <= p.max_noisy_proba) for x in proba]
