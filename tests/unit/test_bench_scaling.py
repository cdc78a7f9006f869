"""bench/bench_scaling.py's core on toy data: row scaling, the hashing embedder, one small size timed."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.unit.bench_modules import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("bench_scaling")


def test_scaled_rows_go_past_the_toy_set_with_numbered_copies(bench: ModuleType) -> None:
    from site_agent.data.toy import TOY_MAX_ROWS

    n = TOY_MAX_ROWS + 50
    batch, flags = bench.scaled_rows(n)
    assert len(batch["instruction"]) == len(batch["answer"]) == len(flags) == n
    assert batch["instruction"][TOY_MAX_ROWS] == batch["instruction"][0] + " (#1)"
    assert 0.2 < flags.mean() < 0.4
    again, again_flags = bench.scaled_rows(n)
    assert again == batch and (again_flags == flags).all()


def test_hash_embedder_is_deterministic_and_normalised(bench: ModuleType) -> None:
    emb = bench.HashEmbedder(dim=64)
    a = emb.encode(["alpha beta", "alpha beta", "something else", ""])
    assert a.shape == (4, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a[:3], axis=1), 1.0)
    assert (a[0] == a[1]).all() and float(a[0] @ a[2]) < 0.99
    assert not a[3].any()


def test_median_time_runs_the_warm_up_and_every_repeat(bench: ModuleType) -> None:
    calls: list[int] = []
    t = bench.median_time(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4 and t >= 0.0


def test_time_sizes_measures_every_stage(bench: ModuleType, tmp_path: Path) -> None:
    rows = bench.time_sizes([150], repeats=1, workdir=tmp_path, train_rows=100)
    assert len(rows) == 1 and rows[0]["rows"] == 150
    for key in ("dps_s", "screening_s", "cache_put_s", "cache_lookup_s", "eval_s"):
        assert rows[0][key] > 0.0


def test_growth_exponent_reads_linear_and_quadratic(bench: ModuleType) -> None:
    assert bench.growth_exponent(1000, 1.0, 10_000, 10.0) == pytest.approx(1.0)
    assert bench.growth_exponent(1000, 1.0, 10_000, 100.0) == pytest.approx(2.0)
    assert bench.growth_exponent(1000, 0.0, 10_000, 1.0) is None


def test_dps_method_names_the_path_of_each_stratum(bench: ModuleType) -> None:
    from site_agent.sampling.dps import PARTITION_MIN_ROWS

    small = np.zeros(1000, dtype=bool)
    small[:300] = True
    assert bench.dps_method(small) == "exact + exact"
    big = np.zeros(PARTITION_MIN_ROWS + 500, dtype=bool)
    big[:400] = True
    assert bench.dps_method(big) == "partitioned + exact"
    assert bench.dps_method(np.zeros(10, dtype=bool)) == "exact"  # no noisy stratum


def test_full_mode_runs_100k_rows_and_8_sites(bench: ModuleType) -> None:
    assert 100_000 in bench.MODES["full"].sizes and 8 in bench.MODES["full"].site_counts
    assert max(bench.MODES["quick"].sizes) <= 10_000
    assert not hasattr(bench, "DPS_100K_NOTE")


def test_markdown_reports_every_size_and_site_count(bench: ModuleType, tmp_path: Path) -> None:
    sizes = [{"rows": n, "dps_method": "exact + exact", "dps_s": n / 1e4, "screening_s": n / 1e3,
              "cache_put_s": 0.01, "cache_lookup_s": 0.005, "eval_s": n / 2e3} for n in (1000, 10_000, 100_000)]
    sites = [{"sites": n, "rows_per_site": 100, "rounds": 3, "k": 4, "first_round_s": 10.0 * n,
              "round_s": [1.0 * n, 1.5 * n], "round_median_s": 1.25 * n, "total_s": 20.0 * n} for n in (1, 3, 8)]
    report = {"mode": "full", "command": "x", "date": "d", "run_s": 1200.0, "sizes_s": 600.0, "sites_s": 600.0,
              "repeats": 3, "use_m3_s_per_row": 0.024, "sizes": sizes, "sites": sites, "plot": "p.png",
              "machine": {"platform": "p", "processor": "c", "cpu_count": 2, "python": "3.11",
                          "load_average_at_start": [1.0, 1.0, 1.0]}}
    out = tmp_path / "r.md"
    bench.write_markdown(out, report)
    text = out.read_text(encoding="utf-8")
    assert "| 100000 | exact + exact |" in text and "| 8 | 100 |" in text
    assert "growth from 10000 to 100000 rows" in text and "not run in this mode" not in text
