"""``perplexity_filter``: drop rows whose answer the site's LLM finds implausible given the question.

Perplexity is ``exp`` of the mean per-token loss of the answer given the instruction
(``LLMBackend.completion_loss``). Very high perplexity marks garbled, mistranslated or off-topic
answers; very low perplexity marks trivial or looping text. Two ways to set the bound:

- ``mode="quantile"``: drop the rows above the ``upper_quantile`` of this batch's perplexities (and,
  with ``lower_quantile`` > 0, those below that quantile) — adapts to the model and the language.
- ``mode="absolute"``: drop the rows above ``max_perplexity``.

Rows whose loss is not a finite number are dropped in both modes. Rows are never rewritten.
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["PerplexityFilter", "PerplexityFilterParams"]

# exp() of a loss above this overflows float64; such an answer is implausible whatever the bound.
_MAX_LOSS = 700.0


class PerplexityFilterParams(OperatorParams):
    mode: Literal["quantile", "absolute"] = "quantile"
    upper_quantile: float = Field(default=0.9, ge=0.5, le=1.0)
    lower_quantile: float = Field(default=0.0, ge=0.0, le=0.5)
    max_perplexity: float = Field(default=1000.0, ge=1.0, le=1_000_000.0)


@register_operator
class PerplexityFilter(Operator):
    name = "perplexity_filter"
    team = Team.SELECTION
    version = "1"
    Params = PerplexityFilterParams
    requires = frozenset({"llm"})

    def perplexities(self, batch: Batch) -> np.ndarray:
        """Answer perplexity given the instruction per row (NaN where the loss is not finite)."""
        n = len(batch["answer"])
        loss = np.asarray(self.context.llm().completion_loss(batch["instruction"], batch["answer"]),
                          dtype=np.float64)
        if loss.shape != (n,):
            raise OperatorError(f"operator '{self.name}': the LLM returned {loss.size} losses for {n} rows")
        loss[~np.isfinite(loss)] = np.nan
        return np.exp(np.minimum(loss, _MAX_LOSS))

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(PerplexityFilterParams, self.params)
        if not batch["answer"]:
            return batch, []
        ppl = self.perplexities(batch)
        finite = ppl[np.isfinite(ppl)]
        if finite.size == 0:
            return batch, [False] * len(ppl)
        if p.mode == "absolute":
            lo, hi = -np.inf, p.max_perplexity
        else:
            hi = float(np.quantile(finite, p.upper_quantile))
            lo = float(np.quantile(finite, p.lower_quantile)) if p.lower_quantile > 0 else -np.inf
        # NaN compares False, so rows without a finite loss are dropped here.
        return batch, [bool(lo <= x <= hi) for x in ppl]
