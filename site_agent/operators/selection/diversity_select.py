"""``diversity_select``: keep a ``fraction`` of rows that cover the data's variety, not its bulk.

Rows are embedded by the site's embedder (``field``: the instruction, the answer, or both joined) and
a subset of ``round(fraction * n)`` rows (at least one) is chosen greedily:

- ``k_center`` (farthest-point): start from a seeded random row, then repeatedly add the row farthest
  (cosine distance) from everything chosen so far. Minimises the largest distance from any row to the
  subset, so outlying topics survive; O(n·k) memory-light.
- ``facility_location``: maximise sum_i max_{j in S} max(0, cos(i, j)), the coverage objective of
  Mirzasoleiman et al.; picks representative rows of dense regions as well as covering sparse ones.
  Lazy greedy over a dense similarity matrix, so it is limited to ``FACILITY_LOCATION_MAX_ROWS`` rows.

Both are deterministic for a given seed. Rows are never rewritten.
"""

from __future__ import annotations

import heapq
from typing import Literal, cast

import numpy as np
from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["FACILITY_LOCATION_MAX_ROWS", "DiversitySelect", "DiversitySelectParams", "facility_location",
           "k_center"]

FACILITY_LOCATION_MAX_ROWS = 8000  # a float32 n x n matrix: 256 MB at this size


def k_center(emb: np.ndarray, k: int, seed: int) -> list[int]:
    """Greedy farthest-point selection of ``k`` row indices of L2-normalised ``emb`` (in pick order)."""
    n = emb.shape[0]
    k = min(k, n)
    first = int(np.random.default_rng(seed % 2**32).integers(n))
    chosen = [first]
    dist = 1.0 - emb @ emb[first]
    dist[first] = -np.inf
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - emb @ emb[nxt])
        dist[chosen] = -np.inf  # rounding can leave a chosen row a hair above 0
    return chosen


def facility_location(emb: np.ndarray, k: int) -> list[int]:
    """Lazy-greedy facility location with similarity max(0, cos): ``k`` row indices in pick order."""
    n = emb.shape[0]
    k = min(k, n)
    e = emb.astype(np.float32)
    sim = np.maximum(e @ e.T, np.float32(0.0))
    cover = np.zeros(n, dtype=np.float32)
    # Max-heap of (negated) stale gains; submodularity makes a stale gain an upper bound.
    heap = [(-float(g), j) for j, g in enumerate(sim.sum(axis=0))]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < k:
        _, j = heapq.heappop(heap)
        gain = float(np.maximum(sim[:, j] - cover, 0.0).sum())
        if not heap or gain >= -heap[0][0]:
            chosen.append(j)
            cover = np.maximum(cover, sim[:, j])
        else:
            heapq.heappush(heap, (-gain, j))
    return chosen


class DiversitySelectParams(OperatorParams):
    fraction: float = Field(default=0.5, ge=0.05, le=1.0)
    method: Literal["k_center", "facility_location"] = "k_center"
    field: Literal["pair", "instruction", "answer"] = "pair"


@register_operator
class DiversitySelect(Operator):
    name = "diversity_select"
    team = Team.SELECTION
    version = "1"
    Params = DiversitySelectParams
    requires = frozenset({"embedder"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(DiversitySelectParams, self.params)
        n = len(batch["answer"])
        k = max(1, round(p.fraction * n))
        if n == 0 or k >= n:
            return batch, [True] * n
        if p.method == "facility_location" and n > FACILITY_LOCATION_MAX_ROWS:
            raise OperatorError(f"operator '{self.name}': facility_location handles at most "
                                f"{FACILITY_LOCATION_MAX_ROWS} rows, got {n}; use method k_center")
        texts = {"pair": [q + "\n" + a for q, a in zip(batch["instruction"], batch["answer"], strict=True)],
                 "instruction": batch["instruction"], "answer": batch["answer"]}[p.field]
        emb = np.asarray(self.context.embedder().encode(texts), dtype=np.float64)
        if p.method == "k_center":
            chosen = k_center(emb, k, self.context.seed)
        else:
            chosen = facility_location(emb, k)
        keep = [False] * n
        for i in chosen:
            keep[i] = True
        return batch, keep
