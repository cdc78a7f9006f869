"""``ifd_filter``: select rows by instruction-following difficulty (IFD, Li et al. 2023).

From "From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection for
Instruction Tuning" (Cherry LLM): IFD = loss(answer | instruction) / loss(answer alone), both mean
per-token losses from the site's LLM (``completion_loss``, the second with an empty prompt).

- IFD >= 1 means the instruction does not make the answer any easier to predict: the pair is
  misaligned (a mismatched or generic answer). Rows with IFD >= ``max_ifd`` are dropped.
- Low IFD means the answer follows almost mechanically from the instruction and teaches little; rows
  with IFD < ``min_ifd`` are dropped (0 keeps them).
- High IFD within the band marks the hard, informative examples the paper selects: with
  ``top_fraction`` < 1, at most ``round(top_fraction * n)`` in-band rows with the highest IFD are kept.

Rows whose losses are not finite, or whose unconditioned loss is not positive, are dropped. Rows are
never rewritten.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["IFDFilter", "IFDFilterParams"]


class IFDFilterParams(OperatorParams):
    max_ifd: float = Field(default=1.0, ge=0.1, le=10.0)
    min_ifd: float = Field(default=0.0, ge=0.0, le=1.0)
    top_fraction: float = Field(default=1.0, ge=0.05, le=1.0)


@register_operator
class IFDFilter(Operator):
    name = "ifd_filter"
    team = Team.SELECTION
    version = "1"
    Params = IFDFilterParams
    requires = frozenset({"llm"})

    def scores(self, batch: Batch) -> np.ndarray:
        """IFD per row, NaN where it is undefined."""
        llm = self.context.llm()
        n = len(batch["answer"])
        cond = np.asarray(llm.completion_loss(batch["instruction"], batch["answer"]), dtype=np.float64)
        alone = np.asarray(llm.completion_loss([""] * n, batch["answer"]), dtype=np.float64)
        if cond.shape != (n,) or alone.shape != (n,):
            raise OperatorError(f"operator '{self.name}': the LLM returned the wrong number of losses for {n} rows")
        ok = np.isfinite(cond) & np.isfinite(alone) & (alone > 0)
        ifd = np.full(n, np.nan)
        ifd[ok] = cond[ok] / alone[ok]
        return ifd

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(IFDFilterParams, self.params)
        n = len(batch["answer"])
        if n == 0:
            return batch, []
        ifd = self.scores(batch)
        # NaN compares False: undefined IFD is out of band.
        in_band = (ifd >= p.min_ifd) & (ifd < p.max_ifd)
        if p.top_fraction < 1.0:
            k = max(1, round(p.top_fraction * n))
            band_idx = np.flatnonzero(in_band)
            # Stable sort on -IFD: among equal scores the earlier row wins.
            top = band_idx[np.argsort(-ifd[band_idx], kind="stable")[:k]]
            in_band = np.zeros(n, dtype=bool)
            in_band[top] = True
        return batch, [bool(x) for x in in_band]
