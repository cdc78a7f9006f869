"""bench/bench_search.py's core on a tiny toy set: no embedder, no screener, plain operators only."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from coordinator.proposers import RandomProposer
from protos.views import EvaluatorKind, OperatorCall, Team
from site_agent.cache.store import PrefixCache
from site_agent.data import make_toy_dataset
from site_agent.evaluation.base import create_evaluator
from site_agent.resources import SiteResources
from tests.unit.bench_modules import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("bench_search")


def _site(tmp: Path, rows: int = 120) -> SiteResources:
    data, _ = make_toy_dataset(rows, seed=0)
    # no fsync: seconds matter here, not crash safety; every prefix stored: the exhaustive run counts on it
    cache = PrefixCache(tmp, 64 << 20, durable=False, min_store_seconds=0)
    return SiteResources(data=data, eval_data=None, embedder=None, embedding_cache=None, screener=None,
                         screening_report=None, prefix_cache=cache, llm_factory=None)


def test_ablation_runs_the_same_strategies_in_every_setting(bench: ModuleType, tmp_path: Path) -> None:
    settings = bench.ablation_settings(seed=0)
    assert list(settings) == list(bench.SETTING_NAMES)
    sites = {name: _site(tmp_path / name) for name in settings}
    catalog = bench.local_catalog(sites["none"])
    assert catalog and all(spec.name != "fill_answer" for spec in catalog)  # nothing that needs an LLM
    result = bench.ablation(sites, settings, RandomProposer(seed=1, max_length=3), catalog, 2, 3,
                            create_evaluator(EvaluatorKind.QUALITY_PROXY))
    keys = [s.key for s in result.strategies]
    assert len(keys) == 6 and len(set(keys)) == 6
    for name in settings:
        assert [r.key for r in result.records[name]] == keys
        assert all(r.score is not None for r in result.records[name])
    none, dps = result.records["none"], result.records["dps"]
    assert all(r.n_sampled == 120 for r in none) and all(r.n_sampled < 120 for r in dps)
    fid = bench.fidelity(result.scores("none"), result.scores("dps"))
    assert fid["kendall_tau"] is not None and -1.0 <= fid["kendall_tau"] <= 1.0
    assert fid["n"] == 6 and fid["regret"] >= 0.0
    summary = bench.summarise(result.records["dps+pts+crm"])
    assert summary["tasks"] == 6 and summary["operators_run"] + summary["steps_reused"] == sum(
        len(s.calls) for s in result.strategies)
    assert bench.summarise(none)["operator_rows"] > summary["operator_rows"] > 0  # sampled rows only
    for site in sites.values():
        site.close()


def test_fidelity_of_known_rankings(bench: ModuleType) -> None:
    same = bench.fidelity([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    assert same["kendall_tau"] == pytest.approx(1.0) and same["same_top1"] and same["regret"] == 0.0
    rev = bench.fidelity([0.1, 0.2, 0.3], [3.0, 2.0, 1.0])
    assert rev["kendall_tau"] == pytest.approx(-1.0) and not rev["same_top1"]
    assert rev["regret"] == pytest.approx(0.2)
    flat = bench.fidelity([0.1, 0.2, None], [1.0, 1.0, 2.0])  # a constant side: tau undefined
    assert flat["kendall_tau"] is None and flat["n"] == 2


def test_team_space_has_every_ordered_team_sequence(bench: ModuleType) -> None:
    space = bench.team_space()
    assert len(space) == 65
    assert Counter(len(seq) for seq, _ in space) == {0: 1, 1: 4, 2: 12, 3: 24, 4: 24}
    assert len({s.key for _, s in space}) == 65
    assert all(len(set(seq)) == len(seq) for seq, _ in space)


def test_exhaustive_ground_truth_and_cache_losslessness(bench: ModuleType, tmp_path: Path) -> None:
    ops = {Team.CLEANING: OperatorCall.of("exact_dedup"), Team.GENERATION: OperatorCall.of("redact_identifiers"),
           Team.OPTIMIZATION: OperatorCall.of("remove_markup"), Team.SELECTION: OperatorCall.of("length_filter")}
    sites = {name: _site(tmp_path / name, rows=30) for name in bench.EXHAUSTIVE_RUNS}
    out = bench.exhaustive(sites, bench.ablation_settings(), create_evaluator(EvaluatorKind.QUALITY_PROXY), ops)
    assert out["rows"] == 30 and len(out["strategies"]) == 65 and out["cache_lossless"] is True
    assert out["timing"]["truth"]["operators_run"] == 64
    assert out["timing"]["truth-no-cache"]["operators_run"] == 196
    scores = [r["score"] for r in out["strategies"]]
    assert out["best"]["score"] == max(scores) and out["strategies"][0]["score"] == 0.0
    assert out["best"]["strategies"]
    for site in sites.values():
        site.close()


@pytest.mark.slow
def test_model_bound_ablation_runs_llm_strategies_and_the_cache_reuses_their_prefixes(
        bench: ModuleType, tmp_path: Path) -> None:
    from dataclasses import replace

    from site_agent.operators.registry import registered_operators

    strategies = bench.llm_strategies(max_new_tokens=32)
    llm_ops = [[c.op for c in s.calls if "llm" in registered_operators()[c.op].requires] for s in strategies]
    assert all(len(ops) >= 1 for ops in llm_ops)
    prefixes = Counter(s.calls[:2] for s in strategies if len(s.calls) >= 2)
    assert max(prefixes.values()) >= 2  # what the prefix cache can reuse
    site = _site(tmp_path / "base", rows=40)
    factory = bench._tiny_llm(tmp_path, site)
    settings = {n: s for n, s in bench.ablation_settings(seed=0).items() if n in ("none", "dps+pts+crm")}
    sites = {n: replace(_site(tmp_path / n, rows=3), llm_factory=factory) for n in settings}
    some = strategies[1:3]  # normalize_text -> rewrite_answer, then the same and exact_dedup
    records = bench.llm_ablation(sites, settings, some, create_evaluator(EvaluatorKind.QUALITY_PROXY))
    assert [len(r) for r in records.values()] == [2, 2]
    assert all(r.score is not None for recs in records.values() for r in recs)
    assert all(r.operators_run >= 1 for r in records["none"])
    assert sum(r.steps_reused for r in records["dps+pts+crm"]) >= 1


@contextmanager
def _length_warnings() -> Iterator[list[str]]:
    """The messages transformers' generation length check logs while the block runs. Its warning is logged
    once per process (``warning_once``): the cache is cleared first so an earlier test cannot hide it."""
    logger = logging.getLogger("transformers.generation.stopping_criteria")
    seen: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, level = _Keep(logging.WARNING), logger.level
    vars(logging.Logger)["warning_once"].cache_clear()  # transformers adds it
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_stand_in_llm_has_positions_for_a_clipped_prompt_and_its_reply(bench: ModuleType, tmp_path: Path) -> None:
    import torch

    from site_agent.llm.local_hf import LocalHF
    from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    site = _site(tmp_path / "site", rows=40)
    stand_in = bench._tiny_llm(tmp_path, site)()
    long_prompt = " ".join(f"term{i}" for i in range(800))  # past 512 tokens; the backend clips it at 1024
    tok, model = stand_in._load()
    assert model.config.max_position_embeddings == bench.TINY_LLM_POSITIONS
    assert len(stand_in._prompt_ids(tok, long_prompt, None)) > 512
    with _length_warnings() as seen:
        [reply] = stand_in.chat([long_prompt], max_new_tokens=4)
    assert isinstance(reply, str) and seen == []
    # the check is live: the builder's default of 512 positions warns on the same call
    texts = site.data["instruction"][:300] + site.data["answer"][:300]
    default = LocalHF(build_tiny_model(tmp_path / "default", texts), max_batch=16)
    with _length_warnings() as seen:
        default.chat([long_prompt], max_new_tokens=4)
    assert any("maximum length (512)" in m for m in seen)
    site.close()
