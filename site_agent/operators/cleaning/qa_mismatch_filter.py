"""``qa_mismatch_filter``: drop rows whose answer does not belong to their instruction.

Exports that were joined on a shifted key pair a question with another question's answer; each half
looks fine alone, so length or character filters miss it. The site's embedder places the instruction
and the answer in one vector space (rows L2-normalised, so a dot product is the cosine similarity); a
row is dropped when that similarity is below ``min_similarity``.

A good threshold depends on the embedder: with the multilingual Universal Sentence Encoder a question
and its own answer typically score 0.4-0.7 and a question and another topic's answer 0.1-0.4. The
coordinator searches the threshold like any other parameter; the default only drops clear mismatches.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["QAMismatchFilter", "QAMismatchFilterParams"]


class QAMismatchFilterParams(OperatorParams):
    min_similarity: float = Field(default=0.3, ge=-1.0, le=1.0)


@register_operator
class QAMismatchFilter(Operator):
    name = "qa_mismatch_filter"
    team = Team.CLEANING
    version = "1"
    Params = QAMismatchFilterParams
    requires = frozenset({"embedder"})

    def similarities(self, batch: Batch) -> np.ndarray:
        """Cosine similarity of each row's instruction and answer, float64 of len(batch)."""
        embedder = self.context.embedder()
        q = np.asarray(embedder.encode(batch["instruction"]), dtype=np.float64)
        a = np.asarray(embedder.encode(batch["answer"]), dtype=np.float64)
        return np.asarray(np.einsum("ij,ij->i", q, a), dtype=np.float64)

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(QAMismatchFilterParams, self.params)
        if not batch["answer"]:
            return batch, []
        sims = self.similarities(batch)
        return batch, [bool(s >= p.min_similarity) for s in sims]
