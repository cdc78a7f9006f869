"""The partitioned path of DPS (large inputs): blocks of similar rows, proportional quotas, exact greedy
inside each block."""

import numpy as np
import pytest

from site_agent.sampling import dps
from site_agent.sampling.dps import dps_sample, facility_location, objective


def _mixture(n: int, dim: int, seed: int, clusters: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim))).astype(np.float32)


def test_blocks_cover_every_row_once_and_stay_bounded() -> None:
    x = dps._unit_rows(_mixture(3000, 16, seed=0, clusters=12))
    parts = dps._blocks(x, np.arange(3000), 200, np.random.default_rng(0))
    assert max(len(p) for p in parts) <= 400
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(3000))
    # k-means blocks follow the clusters: rows of one block are closer to each other than to the rest
    inside = np.mean([float((x[p] @ x[p].T).mean()) for p in parts if len(p) > 1])
    assert inside > float((x @ x.T).mean()) + 0.2


def test_identical_rows_are_cut_in_order() -> None:
    x = dps._unit_rows(np.ones((1000, 4), dtype=np.float32))
    parts = dps._blocks(x, np.arange(1000), 100, np.random.default_rng(0))
    assert [len(p) for p in parts] == [100] * 10
    assert len(facility_location(np.ones((1000, 4)), 37, method="partitioned", block_rows=100)) == 37


@pytest.mark.parametrize(("sizes", "k"), [([5, 5, 5], 4), ([1, 2, 997], 100), ([10, 30, 60], 100), ([3, 3], 1)])
def test_quotas_are_proportional_and_sum_to_k(sizes: list[int], k: int) -> None:
    s = np.array(sizes)
    q = dps._quotas(s, k)
    assert int(q.sum()) == k and (q <= s).all() and (q >= 0).all()
    assert np.all(np.abs(q - s * k / s.sum()) < 1.0)
    assert np.array_equal(q, dps._quotas(s, k))


def test_each_block_gets_its_share() -> None:
    # three far-apart clusters of 600, 300 and 100 rows: each is its own set of blocks
    rng = np.random.default_rng(1)
    centres = np.eye(3, 32, dtype=np.float32) * 20
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    emb = centres[labels] + rng.standard_normal((1000, 32)).astype(np.float32)
    picked = facility_location(emb, 200, method="partitioned", block_rows=100, seed=3)
    assert len(np.unique(picked)) == 200
    # every block gets exactly its largest-remainder quota (the same seed draws the same blocks) ...
    parts = dps._blocks(dps._unit_rows(emb), np.arange(1000), 100, np.random.default_rng(3))
    parts.sort(key=lambda ids: int(ids[0]))
    quotas = dps._quotas(np.array([len(p) for p in parts]), 200)
    assert [int(np.isin(p, picked).sum()) for p in parts] == quotas.tolist()
    # ... so each cluster gets its share, give or take the rounding of its blocks
    assert np.abs(np.bincount(labels[picked], minlength=3) - [120, 60, 20]).max() <= 2
    assert all(len(np.unique(labels[p])) == 1 for p in parts)  # no block straddles two clusters


def test_partitioned_is_deterministic_for_a_seed() -> None:
    emb = _mixture(2000, 16, seed=2, clusters=10)
    a = facility_location(emb, 400, method="partitioned", block_rows=250, seed=7)
    assert np.array_equal(a, facility_location(emb, 400, method="partitioned", block_rows=250, seed=7))
    assert a.dtype == np.int64 and len(np.unique(a)) == 400 and a.min() >= 0 and a.max() < 2000
    other = facility_location(emb, 400, method="partitioned", block_rows=250, seed=8)
    assert len(np.unique(other)) == 400  # another seed, another partition: still a valid selection


def test_partitioned_objective_is_close_to_exact_greedy() -> None:
    # the bound stated in the module doc, on a small case with many blocks (so many block boundaries)
    emb = _mixture(3000, 32, seed=4, clusters=30)
    exact = objective(emb, facility_location(emb, 600, method="lazy"))
    part = objective(emb, facility_location(emb, 600, method="partitioned", block_rows=300))
    assert part >= 0.99 * exact


def test_dps_sample_on_the_partitioned_path_keeps_the_strata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dps, "PARTITION_MIN_ROWS", 200)
    monkeypatch.setattr(dps, "PARTITION_BLOCK_ROWS", 100)
    emb = _mixture(1500, 16, seed=5, clusters=8)
    noisy = np.zeros(1500, dtype=bool)
    noisy[np.random.default_rng(5).choice(1500, 450, replace=False)] = True
    picked = dps_sample(emb, noisy, rate=0.2, seed=1)
    assert np.array_equal(picked, np.unique(picked))
    assert int(noisy[picked].sum()) == 90 and int((~noisy[picked]).sum()) == 210
    assert np.array_equal(picked, dps_sample(emb, noisy, rate=0.2, seed=1))
    clean = np.flatnonzero(~noisy)  # each stratum is partitioned on its own
    expected = clean[facility_location(emb[clean], 210, method="partitioned", seed=1, block_rows=100)]
    assert sorted(expected.tolist()) == picked[~noisy[picked]].tolist()


def test_zero_rows_and_k_equal_n() -> None:
    emb = np.vstack([_mixture(500, 8, seed=6, clusters=4), np.zeros((5, 8), dtype=np.float32)])
    picked = facility_location(emb, 505, method="partitioned", block_rows=60)
    assert sorted(picked.tolist()) == list(range(505))
    assert np.isfinite(objective(emb, facility_location(emb, 50, method="partitioned", block_rows=60)))
