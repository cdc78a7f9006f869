"""Distribution-Preserving Sampling (DPS): a small subset that covers the data the way the whole set does.

The subset is chosen by greedy maximisation of the facility-location function on cosine similarity::

    f(S) = sum_i max_{j in S} max(0, cos(x_i, x_j))

Each greedy step adds the row with the largest marginal gain ``f(S + j) - f(S)``. ``f`` is monotone and
submodular, so greedy is within (1 - 1/e) of the best subset, and a gain computed earlier is an upper
bound of the gain now: lazy greedy keeps those stale bounds in a priority queue and re-evaluates only
rows whose bound is still on top. It returns exactly the plain greedy choices; gains equal to 1e-9 count
as ties (symmetric pairs tie exactly), which go to the lowest row.

Strategy by size (``method="auto"``), n rows of dimension d:

- n <= ``DENSE_MAX_ROWS`` (16,384: the n x n float32 matrix stays within 1 GiB): exact lazy greedy on
  the dense similarity matrix, built with blocked float32 matrix products (one O(n^2 d) product).
- n <= ``STOCHASTIC_MIN_ROWS`` (100,000): the same exact lazy greedy, streamed: similarities are
  recomputed from the embeddings in tiles of at most 64 MiB when needed (an O(n^2 d) pass for the
  first gains, O(n d) per re-evaluation), so memory stays O(n d + tile).
- beyond: stochastic greedy (Mirzasoleiman et al. 2015): each step evaluates only
  ``(n / k) ln(1 / epsilon)`` random unselected rows instead of re-ranking all of them; expected value
  within (1 - 1/e - epsilon) of the optimum.

Why it is fast. A gain is ``sum_i max(0, sim(i, j) - cover_i)`` with ``cover_i`` the best similarity of
row i to the selection so far; cover only grows, so once ``sim(i, j) <= cover_i`` the pair never counts
again. A few steps in, only a few percent of the pairs are still *active*: at checkpoints (steps 1, 2,
4, 8, ...) the active pairs are gathered into a sparse (CSR) matrix once they are under 3% of n^2 (and
``SPARSE_MAX_PAIRS``), and from then on gains and cover updates touch only those pairs. The priority
queue is the array of bounds itself (``argmax`` for the top, ``argpartition`` for the next stale rows),
so re-evaluations go in vectorised batches; a step that must re-evaluate most rows does one pass over
the matrix instead. None of this changes a result.

Deterministic for a given input and ``seed`` (only stochastic greedy draws random numbers).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from site_agent.errors import DataError

__all__ = ["DENSE_MAX_ROWS", "SPARSE_MAX_PAIRS", "STOCHASTIC_MIN_ROWS", "dps_sample", "facility_location",
           "objective"]

DENSE_MAX_ROWS = 16_384
STOCHASTIC_MIN_ROWS = 100_000
SPARSE_MAX_PAIRS = 1 << 26  # 512 MiB of (int32 column, float32 value) pairs
_TILE_FLOATS = 1 << 24  # a streamed similarity tile holds at most this many float32 values (64 MiB)
_FIRST_CHECKPOINT = 1
# Active pairs below this share of n^2 go sparse. Measured on n=5000 (toy and Gaussian mixture): 3%
# is the fastest of 0.8-25%; a denser CSR costs more to build than the dense evaluations it saves.
_SPARSE_SHARE = 0.03
# Stale rows re-evaluated in the first round of a step (doubled each further round): one vectorised call
# amortises the per-call overhead; a few needless evaluations cost less than the round trips they save.
_LAZY_BATCH = 16
# Gains are rounded to this many decimals before they are compared: facility location has exact ties
# by symmetry (two rows covered only by each other gain the same), which float sums in a different order
# would break at random; rounded, they are ties, and the lowest row wins as in a plain greedy argmax.
# Rounding is monotone, so a stale bound stays a bound. All gain arithmetic is float64 (similarities
# and cover are float32 values, compared and subtracted exactly in float64).
_DECIMALS = 9

Method = Literal["auto", "lazy", "stochastic"]


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array, got {x.ndim} dimensions")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # an all-zero row stays zero: similarity 0 to everything
    unit: np.ndarray = x / norms
    return unit


class _Coverage:
    """The greedy state (cover) and the three ways to reach the similarities it needs: a dense matrix,
    tiles recomputed from the embeddings (streamed), or the sparse matrix of the pairs still active."""

    def __init__(self, x: np.ndarray, dense: bool, block: int) -> None:
        self.x, self.n = x, len(x)
        self.tile = max(1, min(block, _TILE_FLOATS // max(self.n, 1)))
        self.cover = np.zeros(self.n, dtype=np.float32)
        self.sims: np.ndarray | None = None
        if dense:
            self.sims = np.empty((self.n, self.n), dtype=np.float32)
            for s in range(0, self.n, block):
                np.matmul(x[s:s + block], x.T, out=self.sims[s:s + block])
            # Not clipped at 0: every use takes max(sim, cover) or tests sim > cover with cover >= 0,
            # which clips implicitly (and saves a pass over n^2 values).
        self.csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # indptr, columns, values

    def rows(self, ids: np.ndarray) -> np.ndarray:
        if self.sims is not None:
            return np.take(self.sims, ids, axis=0)
        out: np.ndarray = np.matmul(self.x[ids], self.x.T)
        np.maximum(out, 0.0, out=out)
        return out

    def _block(self, start: int, stop: int) -> np.ndarray:
        if self.sims is not None:
            return self.sims[start:stop]  # a view: no copy of the big matrix
        return self.rows(np.arange(start, stop))

    def all_gains(self) -> np.ndarray:
        """The gain of every row (selected rows too; callers mask them), by contiguous tiles: no gather."""
        if self.csr is not None:
            return self.gains(np.arange(self.n))
        out = np.empty(self.n, dtype=np.float64)
        step = self.tile if self.sims is None else max(1, (1 << 20) // max(self.n, 1))  # 4 MiB scratch
        for s in range(0, self.n, step):
            t = np.maximum(self._block(s, min(s + step, self.n)), self.cover)
            out[s:s + step] = t.sum(axis=1, dtype=np.float64)
        gains: np.ndarray = np.round(out - self.cover.sum(dtype=np.float64), _DECIMALS)
        return gains

    def gains(self, ids: np.ndarray) -> np.ndarray:
        return np.round(self._gains(ids), _DECIMALS)

    def _gains(self, ids: np.ndarray) -> np.ndarray:
        if self.csr is None:
            # sum_i max(s_ji - c_i, 0) = sum_i max(s_ji, c_i) - sum_i c_i: one pass fewer over the rows,
            # both sums accumulated in float64 (so the difference keeps ~1e-12 absolute precision)
            r = self.rows(ids)
            np.maximum(r, self.cover, out=r)
            return np.asarray(r.sum(axis=1, dtype=np.float64) - self.cover.sum(dtype=np.float64))
        indptr, cols, vals = self.csr
        starts, lens = indptr[ids], indptr[ids + 1] - indptr[ids]
        total = int(lens.sum())
        if total == 0:
            return np.zeros(len(ids), dtype=np.float64)
        at = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        v = vals[at].astype(np.float64) - self.cover[cols[at]]  # float64: a float32 difference would round
        np.maximum(v, 0.0, out=v)
        return np.bincount(np.repeat(np.arange(len(ids)), lens), weights=v, minlength=len(ids))

    def add(self, j: int) -> None:
        if self.csr is None:
            np.maximum(self.cover, self.rows(np.array([j]))[0], out=self.cover)
            return
        # Pairs left out of the CSR had sim <= cover, so they cannot raise the cover.
        indptr, cols, vals = self.csr
        c, v = cols[indptr[j]:indptr[j + 1]], vals[indptr[j]:indptr[j + 1]]
        self.cover[c] = np.maximum(self.cover[c], v)

    def checkpoint(self) -> None:
        """Gather the active pairs into a CSR when they fit (estimated on a few rows first), or compact it."""
        if self.csr is not None:
            indptr, cols, vals = self.csr
            keep = vals > self.cover[cols]
            row_of = np.repeat(np.arange(self.n), np.diff(indptr))
            per_row = np.bincount(row_of[keep], minlength=self.n)
            self.csr = (np.concatenate([[0], np.cumsum(per_row)]), cols[keep], vals[keep])
            return
        probe = np.linspace(0, self.n - 1, num=min(self.n, 256)).astype(np.int64)
        estimate = np.count_nonzero(self.rows(probe) > self.cover) * self.n / len(probe)
        if estimate > min(SPARSE_MAX_PAIRS, self.n * self.n * _SPARSE_SHARE):
            return
        counts: list[np.ndarray] = []
        columns: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for s in range(0, self.n, self.tile):
            t = self._block(s, min(s + self.tile, self.n))
            at = np.flatnonzero(t > self.cover)
            row, col = np.divmod(at, self.n)
            counts.append(np.bincount(row, minlength=len(t)))
            columns.append(col.astype(np.int32))
            values.append(t.ravel()[at])
        self.csr = (np.concatenate([[0], np.cumsum(np.concatenate(counts))]), np.concatenate(columns),
                    np.concatenate(values))
        self.sims = None  # the dense matrix is no longer needed: free it


def _lazy(cov: _Coverage, k: int) -> list[int]:
    """Exact lazy greedy. The priority queue is the array of bounds itself: ``argmax`` finds the top
    (the lowest row among equal bounds, as a plain greedy argmax would) and ``argpartition`` the next
    stale rows to re-evaluate, in one vectorised call per round; a step whose top stays stale doubles
    its batch, so a step that must re-evaluate thousands of rows takes a handful of calls."""
    bound = cov.all_gains()
    fresh = np.ones(cov.n, dtype=bool)  # bounds computed at the current step (exact gains)
    taken = np.zeros(cov.n, dtype=bool)  # selected rows count as fresh: their bound is -inf, never on top
    biggest = max(_LAZY_BATCH, _TILE_FLOATS // max(cov.n, 1))
    chosen: list[int] = []
    checkpoint = _FIRST_CHECKPOINT
    for step in range(k):
        if step == checkpoint:
            cov.checkpoint()
            checkpoint *= 2
        batch = _LAZY_BATCH
        while not fresh[j := int(np.argmax(bound))]:
            n_stale = cov.n - int(np.count_nonzero(fresh))
            if 2 * min(batch, n_stale) >= n_stale:  # most rows are due: one pass beats gathering them
                bound = np.where(taken, -np.inf, cov.all_gains())
                fresh[:] = True
                continue
            stale = np.where(fresh, -np.inf, bound)
            ids = np.argpartition(stale, cov.n - batch)[cov.n - batch:]
            bound[ids] = cov.gains(ids)
            fresh[ids] = True
            batch = min(2 * batch, biggest)
        chosen.append(j)
        cov.add(j)
        bound[j] = -np.inf
        taken[j] = True
        np.copyto(fresh, taken)
    return chosen


def _stochastic(cov: _Coverage, k: int, seed: int, epsilon: float) -> list[int]:
    rng = np.random.default_rng(seed)
    size = max(1, math.ceil(cov.n / k * math.log(1.0 / epsilon)))
    taken = np.zeros(cov.n, dtype=bool)
    chosen: list[int] = []
    checkpoint = _FIRST_CHECKPOINT
    for step in range(k):
        if step == checkpoint:
            cov.checkpoint()
            checkpoint *= 2
        pool = np.flatnonzero(~taken)
        cands = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
        j = int(cands[int(np.argmax(cov.gains(cands)))])
        taken[j] = True
        chosen.append(j)
        cov.add(j)
    return chosen


def facility_location(emb: np.ndarray, k: int, *, method: Method = "auto", seed: int = 0, block: int = 4096,
                      dense: bool | None = None, epsilon: float = 0.01) -> np.ndarray:
    """Greedy facility-location selection of ``k`` rows: row ids (int64) in the order they were chosen.

    ``method``: "lazy" (exact greedy), "stochastic", or "auto" (lazy up to ``STOCHASTIC_MIN_ROWS`` rows).
    ``dense``: hold the n x n similarity matrix (default: when n <= ``DENSE_MAX_ROWS``); both layouts
    make the same choices. ``block``: rows per matrix-product tile. Rows need not be normalised.
    """
    x = _unit_rows(emb)
    if k < 0:
        raise DataError(f"cannot select a negative number of rows ({k})")
    if block < 1 or not 0.0 < epsilon < 1.0:
        raise DataError("block must be positive and epsilon within (0, 1)")
    if method not in ("auto", "lazy", "stochastic"):
        raise DataError(f"unknown facility-location method '{method}'")
    n = len(x)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "auto":
        method = "stochastic" if n > STOCHASTIC_MIN_ROWS else "lazy"
    cov = _Coverage(x, n <= DENSE_MAX_ROWS if dense is None else dense, block)
    chosen = _stochastic(cov, k, seed, epsilon) if method == "stochastic" else _lazy(cov, k)
    return np.asarray(chosen, dtype=np.int64)


def objective(emb: np.ndarray, selected: np.ndarray, *, block: int = 4096) -> float:
    """f(S) = sum_i max_{j in S} max(0, cos(x_i, x_j)); 0 for an empty selection."""
    x = _unit_rows(emb)
    sel = np.asarray(selected, dtype=np.int64)
    if sel.size == 0 or len(x) == 0:
        return 0.0
    if sel.min() < 0 or sel.max() >= len(x):
        raise DataError(f"selected row ids must be within [0, {len(x)})")
    chosen = x[np.unique(sel)]
    total = 0.0
    for s in range(0, len(x), block):
        best = (x[s:s + block] @ chosen.T).max(axis=1)
        total += float(np.maximum(best, 0.0).sum(dtype=np.float64))
    return total


def dps_sample(emb: np.ndarray, noisy: np.ndarray, rate: float = 0.2, seed: int = 0) -> np.ndarray:
    """Sorted row ids of a DPS sample: facility location run separately on the clean and the noisy rows.

    Each part keeps its share: ``round(rate * n_part)`` rows (Python's round), at least one from a
    non-empty part, so the sample has the data's clean/noisy proportions and covers each part.
    """
    mask = np.asarray(noisy, dtype=bool)
    if mask.ndim != 1 or len(mask) != len(emb):
        raise DataError(f"noisy mask has {mask.size} entries for {len(emb)} embedding rows")
    if not 0.0 < rate <= 1.0:
        raise DataError(f"sampling rate must be within (0, 1], got {rate}")
    picked: list[np.ndarray] = []
    for part in (np.flatnonzero(~mask), np.flatnonzero(mask)):
        if part.size == 0:
            continue
        k = min(part.size, max(1, round(rate * part.size)))
        picked.append(part[facility_location(emb[part], k, seed=seed)])
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)
