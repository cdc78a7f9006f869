"""bench/bench_quality.py's core on toy data: curves, regret, pooled win rates, a tiny two-site search."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from coordinator.proposers import RandomProposer
from protos.views import EvalSettings, EvaluatorKind, OperatorCall, Strategy
from site_agent.cache.store import PrefixCache
from site_agent.data import make_toy_dataset
from site_agent.evaluation.base import create_evaluator
from site_agent.operators.registry import operator_spec, registered_operators
from site_agent.resources import SiteResources

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _site(tmp: Path, seed: int, rows: int = 80) -> SiteResources:
    data, _ = make_toy_dataset(rows, seed=seed)
    return SiteResources(data=data, eval_data=None, embedder=None, embedding_cache=None, screener=None,
                         screening_report=None, prefix_cache=PrefixCache(tmp, 16 << 20, durable=False),
                         llm_factory=None)


def test_best_so_far_skips_failures_and_regret_is_against_the_reference(bench: ModuleType) -> None:
    curve = bench.best_so_far([None, 0.1, float("nan"), 0.05, 0.3, None])
    assert curve == [None, 0.1, 0.1, 0.1, 0.3, 0.3]
    assert bench.regret(curve, 0.5) == [None, 0.4, 0.4, 0.4, pytest.approx(0.2), pytest.approx(0.2)]


def test_pooled_win_rate_pools_the_sites_both_sides_have(bench: ModuleType) -> None:
    a = {"s1": [1.0, 2.0], "s2": [0.5, 0.5], "only-a": [0.0]}
    b = {"s1": [2.0, 2.0], "s2": [1.0, 0.1]}
    assert bench.pooled_win_rate(a, b) == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert bench.pooled_win_rate(a, {"other": [1.0]}) is None


def test_search_scores_every_strategy_on_every_site_at_the_budget(bench: ModuleType, tmp_path: Path) -> None:
    sites = {"a": _site(tmp_path / "a", 0), "b": _site(tmp_path / "b", 1)}
    plain = {"normalize_text", "exact_dedup", "remove_markup", "length_filter"}
    catalog = [operator_spec(c) for n, c in sorted(registered_operators().items()) if n in plain]
    settings = EvalSettings(evaluator=EvaluatorKind.QUALITY_PROXY, sample_rate_permille=1000, use_screening=False)
    run = bench.search(sites, RandomProposer(seed=3), "random", 3, catalog, rounds=2, k=3, settings=settings,
                       evaluator=create_evaluator(EvaluatorKind.QUALITY_PROXY))
    assert len(run.strategies) == len(run.scores) == 6
    assert all(s is not None for s in run.scores)
    i = run.best_index()
    assert i is not None and run.scores[i] == max(s for s in run.scores if s is not None)
    for r in sites.values():
        r.close()


def test_processed_rows_applies_the_strategy_to_every_row(bench: ModuleType, tmp_path: Path) -> None:
    site = _site(tmp_path, 0, rows=120)
    out = bench.processed_rows(site, Strategy(calls=(OperatorCall.of("exact_dedup"),)))
    n_unique = len(set(zip(site.data["instruction"], site.data["answer"], strict=True)))
    assert len(out["instruction"]) == n_unique < 120
    assert bench.processed_rows(site, Strategy())["answer"] == site.data["answer"]
    site.close()
