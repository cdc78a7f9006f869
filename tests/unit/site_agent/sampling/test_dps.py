from collections.abc import Callable

import numpy as np
import pytest

from site_agent.errors import DataError
from site_agent.sampling import dps
from site_agent.sampling.dps import dps_sample, facility_location, objective


def _greedy_brute_force(emb: np.ndarray, k: int) -> list[int]:
    """Plain greedy: every step recomputes every marginal gain from scratch; gains equal to 1e-9 are a tie
    (symmetric pairs tie exactly in real arithmetic) and the lowest row wins it."""
    x = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    sims = np.maximum(x @ x.T, 0.0).astype(np.float64)  # float32 products, exact float64 arithmetic after
    cover = np.zeros(len(x), dtype=np.float64)
    chosen: list[int] = []
    for _ in range(k):
        gains = np.round([np.maximum(sims[j] - cover, 0.0).sum() for j in range(len(x))], 9)
        gains[chosen] = -1.0
        j = int(np.argmax(gains))
        chosen.append(j)
        cover = np.maximum(cover, sims[j])
    return chosen


def _mixture(n: int, dim: int, seed: int, clusters: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("sparse_share", [0.03, 1.0])  # 1.0: the sparse (CSR) path from the first checkpoint
def test_lazy_greedy_equals_brute_force_greedy(monkeypatch: pytest.MonkeyPatch, sparse_share: float) -> None:
    monkeypatch.setattr(dps, "_SPARSE_SHARE", sparse_share)
    rng = np.random.default_rng(0)
    for trial in range(40):
        n, dim = int(rng.integers(5, 41)), int(rng.choice([3, 8, 16]))
        emb = rng.standard_normal((n, dim)).astype(np.float32)
        k = int(rng.integers(1, n + 1))
        expected = _greedy_brute_force(emb, k)
        got = facility_location(emb, k, method="lazy")
        assert got.tolist() == expected, trial
        assert objective(emb, got) == objective(emb, np.array(expected))
        # Streamed similarities come from differently shaped products (float32 last-bit differences),
        # so a tie may fall the other way; the value may not move.
        streamed = facility_location(emb, k, method="lazy", dense=False, block=7)
        assert objective(emb, streamed) == pytest.approx(objective(emb, got), rel=1e-6)


def test_stochastic_greedy_is_close_to_lazy() -> None:
    emb = _mixture(2000, 32, seed=1, clusters=40)
    lazy = facility_location(emb, 200, method="lazy")
    stochastic = facility_location(emb, 200, method="stochastic", seed=3)
    assert len(set(stochastic.tolist())) == 200
    assert objective(emb, stochastic) >= 0.98 * objective(emb, lazy)
    # deterministic for a seed
    assert np.array_equal(stochastic, facility_location(emb, 200, method="stochastic", seed=3))


def test_auto_switches_to_partitioned_for_large_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = _mixture(300, 8, seed=2)
    assert np.array_equal(facility_location(emb, 30), facility_location(emb, 30, method="lazy"))
    monkeypatch.setattr(dps, "PARTITION_MIN_ROWS", 100)
    monkeypatch.setattr(dps, "PARTITION_BLOCK_ROWS", 50)
    auto = facility_location(emb, 30, seed=5)
    assert np.array_equal(auto, facility_location(emb, 30, method="partitioned", seed=5, block_rows=50))
    assert not np.array_equal(np.sort(auto), np.sort(facility_location(emb, 30, method="lazy")))


def test_greedy_picks_one_row_per_cluster_first() -> None:
    rng = np.random.default_rng(4)
    centres = np.eye(6, 16, dtype=np.float32) * 10
    emb = np.repeat(centres, 20, axis=0) + 0.1 * rng.standard_normal((120, 16)).astype(np.float32)
    picked = facility_location(emb, 6)
    assert sorted({int(i) // 20 for i in picked}) == list(range(6))


def test_edge_cases() -> None:
    emb = _mixture(10, 4, seed=0)
    assert facility_location(emb, 0).size == 0
    assert sorted(facility_location(emb, 25).tolist()) == list(range(10))
    assert facility_location(np.zeros((0, 4), dtype=np.float32), 3).size == 0
    with_zero = np.vstack([emb, np.zeros((1, 4), dtype=np.float32)])  # an all-zero row: no NaN anywhere
    assert np.isfinite(objective(with_zero, facility_location(with_zero, 4)))
    assert objective(emb, np.array([], dtype=np.int64)) == 0.0
    assert objective(emb, np.arange(10)) == pytest.approx(10.0, rel=1e-5)
    bad_calls: list[Callable[[], object]] = [lambda: facility_location(emb, -1),
                                             lambda: facility_location(emb, 2, method="nope"),  # type: ignore[arg-type]
                                             lambda: facility_location(emb, 2, method="partitioned", block_rows=0),
                                             lambda: facility_location(emb[0], 1),
                                             lambda: objective(emb, np.array([10])),
                                             lambda: dps_sample(emb, np.zeros(3, dtype=bool)),
                                             lambda: dps_sample(emb, np.zeros(10, dtype=bool), 0.0)]
    for bad in bad_calls:
        with pytest.raises(DataError):
            bad()


def test_dps_sample_keeps_the_clean_noisy_proportions_and_is_deterministic() -> None:
    emb = _mixture(500, 16, seed=7)
    noisy = np.zeros(500, dtype=bool)
    noisy[np.random.default_rng(7).choice(500, 150, replace=False)] = True
    picked = dps_sample(emb, noisy, rate=0.2, seed=0)
    assert np.array_equal(picked, np.unique(picked))  # sorted, no repeats
    assert len(picked) == round(0.2 * 350) + round(0.2 * 150)
    assert int(noisy[picked].sum()) == 30
    assert np.array_equal(picked, dps_sample(emb, noisy, rate=0.2, seed=0))
    # each part is the facility-location choice within that part
    clean_idx = np.flatnonzero(~noisy)
    assert sorted(clean_idx[facility_location(emb[clean_idx], 70)].tolist()) == picked[~noisy[picked]].tolist()


def test_dps_sample_takes_at_least_one_row_from_a_small_part() -> None:
    emb = _mixture(50, 8, seed=3)
    noisy = np.zeros(50, dtype=bool)
    noisy[[4, 9]] = True  # round(0.2 * 2) == 0, but a non-empty part is never dropped
    picked = dps_sample(emb, noisy, rate=0.2)
    assert int(noisy[picked].sum()) == 1 and len(picked) == 1 + round(0.2 * 48)
    assert len(dps_sample(emb, np.ones(50, dtype=bool), rate=1.0)) == 50
