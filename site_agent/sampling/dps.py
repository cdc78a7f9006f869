"""Distribution-Preserving Sampling (DPS): a small subset that covers the data the way the whole set does.

The subset is chosen by greedy maximisation of the facility-location function on cosine similarity::

    f(S) = sum_i max_{j in S} max(0, cos(x_i, x_j))

Each greedy step adds the row with the largest marginal gain ``f(S + j) - f(S)``. ``f`` is monotone and
submodular, so greedy is within (1 - 1/e) of the best subset, and a gain computed earlier is an upper
bound of the gain now: lazy greedy keeps those stale bounds in a priority queue and re-evaluates only
rows whose bound is still on top. It returns exactly the plain greedy choices; gains equal to 1e-9 count
as ties (symmetric pairs tie exactly), which go to the lowest row.

Strategy by size (``method="auto"``), n rows of dimension d:

- n <= ``PARTITION_MIN_ROWS`` (16,384, also ``DENSE_MAX_ROWS``: the n x n float32 matrix stays within
  1 GiB): exact lazy greedy on the dense similarity matrix, built with blocked float32 matrix products
  (one O(n^2 d) product).
- beyond: **partitioned greedy**. The rows are split into blocks of similar rows by spherical k-means
  (numpy; ``c = n / PARTITION_BLOCK_ROWS`` centres, at most 64 per level, fitted on a seeded sample of 256
  rows per centre; a cluster over twice the block size is split again the same way, and rows k-means
  cannot separate are cut in order). Each block gets a quota proportional to its size (largest
  remainders: the quotas sum to k, each within one row of its exact share) and runs the exact lazy greedy
  above inside the block. Cost O(n * block * d) instead of O(n^2 d): linear in n. Same seed, same blocks,
  same result.

Measured on the shared 2-core development box (load average 2-5 from other jobs; k = 0.2 n; hashed
character-trigram embeddings of the toy QA set, 256-d, as in ``bench/bench_scaling.py``):

=========  ==============  =======================  ==========================================
rows       exact greedy    partitioned (4096)        objective, partitioned / exact
=========  ==============  =======================  ==========================================
5,000      1.5 s           1.3 s (one block)        1.0000 (toy), 1.0000 (mixture)
10,000     6.2 s           3.2 s                    0.9999 (toy), 1.0000 (mixture)
16,384     13.2 s          3.5 s                    0.9998 (toy), 0.9999 (mixture)
24,576     57 s (streamed) 4.6 s                    0.9997 (toy)
100,000    > 265 s         16-26 s (``dps_sample``, not measurable (exact did not finish
                           70k + 30k rows)          in 265 s)
=========  ==============  =======================  ==========================================

("mixture": 50 Gaussian clusters in 512-d, noise 0.8; 100k: 16.2 s is the median of three runs in
``bench/results/scaling_full.md``, 26 s a single run beside another DPS job.) Past 16,384 rows exact
greedy must stream its similarities and is 12x slower than partitioned at 24,576 rows, so that is the
switch. Blocks of 2,048 rows cost about the same at 100k rows (k-means and per-block overheads grow) for
a lower objective (0.9993 at 16,384); 1,024-row blocks lose more (0.9983).

The approximation, honestly: no worst-case bound carries over. Greedy inside a block is within
(1 - 1/e) of the best selection with that block's quota *for that block's own coverage*, but a row near a
block boundary is covered only from its own block, and the quotas are fixed by size, not by need. On
clustered data (the case DPS is for) the loss is under 0.03% above; on structureless data, the
adversarial case for any partition, it is larger: isotropic Gaussian rows reach 0.995 (3,000 x 8-d,
300-row blocks), 0.998 (16,384 x 8-d) and 0.986 (16,384 x 64-d, 4,096-row blocks). So: within 1.5% of
exact greedy on every case measured; the unit test asserts 0.99 on a clustered case of about ten blocks.

Stochastic greedy (Mirzasoleiman et al. 2015, ``method="stochastic"``: each step evaluates
``(n / k) ln(1 / epsilon)`` random unselected rows) stays available but ``auto`` no longer uses it: its
k steps still evaluate n ln(1 / epsilon) similarity rows, O(n^2 d) in all. At 16,384 rows it took 5.8 s
for 0.9994 of exact greedy, worse on both counts than partitioned; at 100k rows it would cost ~37x that.
"lazy" can still be forced at any size (streamed tiles of at most 64 MiB past ``DENSE_MAX_ROWS``).

Why it is fast. A gain is ``sum_i max(0, sim(i, j) - cover_i)`` with ``cover_i`` the best similarity of
row i to the selection so far; cover only grows, so once ``sim(i, j) <= cover_i`` the pair never counts
again. A few steps in, only a few percent of the pairs are still *active*: at checkpoints (steps 1, 2,
4, 8, ...) the active pairs are gathered into a sparse (CSR) matrix once they are under 3% of n^2 (and
``SPARSE_MAX_PAIRS``), and from then on gains and cover updates touch only those pairs. The priority
queue is the array of bounds itself (``argmax`` for the top, ``argpartition`` for the next stale rows),
so re-evaluations go in vectorised batches; a step that must re-evaluate most rows does one pass over
the matrix instead. None of this changes a result.

Deterministic for a given input and ``seed`` (only the partitioned and stochastic methods draw random
numbers; on one machine and BLAS build).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from site_agent.errors import DataError

__all__ = ["DENSE_MAX_ROWS", "PARTITION_BLOCK_ROWS", "PARTITION_MIN_ROWS", "SPARSE_MAX_PAIRS", "dps_sample",
           "facility_location", "objective"]

DENSE_MAX_ROWS = 16_384
PARTITION_MIN_ROWS = 16_384
PARTITION_BLOCK_ROWS = 4096
_KMEANS_ITERS = 10
_KMEANS_MAX_CLUSTERS = 64
_KMEANS_MAX_DEPTH = 8
_KMEANS_TILE = 65_536
_KMEANS_SAMPLE_PER_CLUSTER = 256
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

Method = Literal["auto", "lazy", "partitioned", "stochastic"]


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


def _assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    labels = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), _KMEANS_TILE):
        labels[s:s + _KMEANS_TILE] = np.argmax(x[s:s + _KMEANS_TILE] @ centres.T, axis=1)
    return labels


def _spherical_kmeans(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels of unit rows (not necessarily contiguous): Lloyd's iterations on cosine similarity,
    fitted on a seeded sample of ``_KMEANS_SAMPLE_PER_CLUSTER * c`` rows from ``c`` of them, then every row
    assigned to its nearest centre. A cluster that empties during the fit is dropped."""
    fit = x[np.sort(rng.choice(len(x), size=min(len(x), _KMEANS_SAMPLE_PER_CLUSTER * c), replace=False))]
    centres = fit[np.sort(rng.choice(len(fit), size=c, replace=False))]
    labels = np.full(len(fit), -1, dtype=np.int64)
    for _ in range(_KMEANS_ITERS):
        new = _assign(fit, centres)
        if np.array_equal(new, labels):
            break
        labels = new
        # a one-hot product, (d x rows) @ (rows x c): np.add.at is ~30x slower, and OpenBLAS runs the
        # transposed product (c x rows) @ (rows x d) ~25x slower than this shape (measured at 100k rows)
        one_hot = (labels[:, None] == np.arange(len(centres))).astype(np.float32)
        sums = np.ascontiguousarray((fit.T @ one_hot).T)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        live = norms[:, 0] > 0
        centres = sums[live] / norms[live]
        if not live.all():  # renumber after dropping an empty cluster (or one whose rows sum to zero)
            labels = (np.cumsum(live) - 1)[labels]
    return _assign(x, centres)


def _blocks(x: np.ndarray, ids: np.ndarray, target: int, rng: np.random.Generator, depth: int = 0,
            ) -> list[np.ndarray]:
    """Row ids (sorted) split into blocks of similar rows, none over ``2 * target`` rows: spherical k-means
    into about ``len(ids) / target`` clusters (at most ``_KMEANS_MAX_CLUSTERS`` per level), oversized
    clusters split again the same way. Rows k-means cannot separate (identical rows), or still too many
    after ``_KMEANS_MAX_DEPTH`` levels (k-means peeling off a few rows at a time), are cut in order."""
    if len(ids) <= 2 * target:
        return [ids]
    groups: list[np.ndarray] = []
    if depth < _KMEANS_MAX_DEPTH:
        labels = _spherical_kmeans(x[ids], min(math.ceil(len(ids) / target), _KMEANS_MAX_CLUSTERS), rng)
        groups = [ids[labels == g] for g in np.unique(labels)]
    if len(groups) <= 1:
        return [ids[s:s + target] for s in range(0, len(ids), target)]
    out: list[np.ndarray] = []
    for g in groups:
        out += _blocks(x, g, target, rng, depth + 1)
    return out


def _quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """``k`` split in proportion to ``sizes`` by largest remainders (ties to the earlier block): the
    quotas sum to ``k`` and none exceeds its size when ``k <= sizes.sum()``."""
    scaled = np.asarray(sizes, dtype=np.int64) * k  # integer arithmetic: no float rounding decides a quota
    total = int(np.sum(sizes))
    quota: np.ndarray = scaled // total
    extra = k - int(quota.sum())
    if extra > 0:
        quota[np.argsort(-(scaled - quota * total), kind="stable")[:extra]] += 1
    return quota


def _partitioned(x: np.ndarray, k: int, seed: int, block: int, target: int) -> list[int]:
    rng = np.random.default_rng(seed)
    parts = _blocks(x, np.arange(len(x)), target, rng)
    parts.sort(key=lambda ids: int(ids[0]))  # k-means labels carry no order; first rows do
    chosen: list[int] = []
    for ids, q in zip(parts, _quotas(np.array([len(p) for p in parts]), k), strict=True):
        if q > 0:
            chosen += ids[_lazy(_Coverage(x[ids], len(ids) <= DENSE_MAX_ROWS, block), int(q))].tolist()
    return chosen


def facility_location(emb: np.ndarray, k: int, *, method: Method = "auto", seed: int = 0, block: int = 4096,
                      dense: bool | None = None, epsilon: float = 0.01,
                      block_rows: int | None = None) -> np.ndarray:
    """Greedy facility-location selection of ``k`` rows: row ids (int64) in the order they were chosen
    (for "partitioned": block by block, blocks in the order of their first row).

    ``method``: "lazy" (exact greedy), "partitioned" (exact greedy within blocks of similar rows of about
    ``block_rows`` rows, quotas proportional to block size), "stochastic", or "auto" (lazy up to
    ``PARTITION_MIN_ROWS`` rows, partitioned beyond; the module doc has the measurements).
    ``dense``: hold the n x n similarity matrix for "lazy"/"stochastic" (default: when
    n <= ``DENSE_MAX_ROWS``); both layouts make the same choices. ``block``: rows per matrix-product
    tile; ``block_rows``: default ``PARTITION_BLOCK_ROWS``. Rows need not be normalised.
    """
    x = _unit_rows(emb)
    block_rows = PARTITION_BLOCK_ROWS if block_rows is None else block_rows
    if k < 0:
        raise DataError(f"cannot select a negative number of rows ({k})")
    if block < 1 or block_rows < 1 or not 0.0 < epsilon < 1.0:
        raise DataError("block and block_rows must be positive and epsilon within (0, 1)")
    if method not in ("auto", "lazy", "partitioned", "stochastic"):
        raise DataError(f"unknown facility-location method '{method}'")
    n = len(x)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "auto":
        method = "partitioned" if n > PARTITION_MIN_ROWS else "lazy"
    if method == "partitioned":
        return np.asarray(_partitioned(x, k, seed, block, block_rows), dtype=np.int64)
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
