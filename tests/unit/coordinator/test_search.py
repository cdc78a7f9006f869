"""The search loop against the real SQLite store, with simulated sites answering through the same
service functions the gRPC servicer calls (no network here; tests/e2e covers the wire)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

from coordinator.config import SearchConfig
from coordinator.report import SearchOutcome
from coordinator.search import baseline_configs, common_catalog, run_search
from coordinator.service import CoordinatorService
from coordinator.sqlite_store import SQLiteStore
from protos.views import (
    Hello,
    OperatorSpec,
    ParamSpec,
    ParamType,
    Poll,
    ResultReport,
    SizeBucket,
    Strategy,
    TaskStatus,
    Team,
)

CATALOG = tuple(
    OperatorSpec(name=n, team=Team.CLEANING, version="1", params=(
        ParamSpec(name="level", type=ParamType.INT, int_min=0, int_max=5, int_default=1),))
    for n in ("alpha", "beta", "gamma", "delta"))


def score_of(strategy: Strategy) -> float:
    """A deterministic stand-in for a site's evaluation: rewards 'beta' and a high level."""
    return sum((0.5 if c.op == "beta" else 0.1) * (1 + int(c.kwargs["level"])) for c in strategy.calls)


class SimSite(threading.Thread):
    def __init__(self, service: CoordinatorService, site_id: str, stop: threading.Event,
                 executed: Counter[str], answer: bool = True) -> None:
        super().__init__(daemon=True)
        self.service, self.site_id, self.stop, self.executed, self.answer = service, site_id, stop, executed, answer

    def run(self) -> None:
        self.service.hello(self.site_id, Hello(site_id=self.site_id, software_version="0.1.0", catalog=CATALOG,
                                               size_bucket=SizeBucket.FROM_1K_TO_10K))
        for _ in range(10_000):
            if self.stop.is_set():
                return
            reply = self.service.poll(self.site_id, Poll(site_id=self.site_id, wait_ms=100), lambda: None)
            if reply.task is None or not self.answer:
                continue
            self.executed[reply.task.task_id] += 1
            self.service.report(self.site_id, ResultReport(
                task_id=reply.task.task_id, site_id=self.site_id, status=TaskStatus.OK,
                score=score_of(reply.task.strategy)))


def make_service(path: Path) -> CoordinatorService:
    return CoordinatorService(SQLiteStore(path), lease_s=30, poll_wait_ms=100, heartbeat_interval_ms=1000)


def cfg(**kw: object) -> SearchConfig:
    base: dict[str, object] = dict(search_id="s1", rounds=3, strategies_per_round=3, min_sites=2,
                                   wait_for_sites_s=10, round_deadline_s=20, patience=0)
    base.update(kw)
    return SearchConfig.model_validate(base)


def test_search_runs_every_round_on_every_site(tmp_path: Path) -> None:
    service, stop, executed = make_service(tmp_path / "s.db"), threading.Event(), Counter[str]()
    sites = [SimSite(service, s, stop, executed) for s in ("a", "b")]
    for s in sites:
        s.start()
    outcome = run_search(service, cfg(), threading.Event())
    stop.set()
    assert outcome.reason == "completed all 3 rounds"
    assert len(outcome.strategies) == 9
    assert len({o.strategy.key for o in outcome.strategies}) == 9  # nothing evaluated twice
    for o in outcome.strategies:
        assert {r.site_id for r in o.sites} == {"a", "b"}
        assert o.aggregate is not None and abs(o.aggregate - score_of(o.strategy)) < 1e-9
    best = outcome.best
    assert best is not None and best.aggregate == max(o.aggregate or 0 for o in outcome.strategies)
    assert set(executed.values()) == {1}
    assert outcome.to_json()["best_per_site"]["a"]["key"] == best.strategy.key


def test_a_silent_site_does_not_stop_the_round(tmp_path: Path) -> None:
    service, stop, executed = make_service(tmp_path / "s.db"), threading.Event(), Counter[str]()
    threads = [SimSite(service, "a", stop, executed), SimSite(service, "b", stop, executed, answer=False)]
    for t in threads:
        t.start()
    outcome = run_search(service, cfg(rounds=1, round_deadline_s=1.5), threading.Event())
    stop.set()
    assert all(o.aggregate is not None for o in outcome.strategies)  # site a's scores carry the round
    assert any("site b did not answer" in n for n in outcome.notes)


def test_killed_search_resumes_without_repeating(tmp_path: Path) -> None:
    executed: Counter[str] = Counter()
    first, site_stop, search_stop = make_service(tmp_path / "s.db"), threading.Event(), threading.Event()
    sites = [SimSite(first, s, site_stop, executed) for s in ("a", "b")]
    for s in sites:
        s.start()

    def progress(round_no: int, done: int, total: int) -> None:
        if round_no == 2 and done >= 1:
            search_stop.set()  # "kill" mid-round 2

    partial = run_search(first, cfg(), search_stop, progress)
    site_stop.set()
    for s in sites:
        s.join(5)
    assert partial.reason == "stopped"
    round1 = [o.strategy.key for o in partial.strategies if o.round_no == 1]
    first.store.close()

    second, site_stop2 = make_service(tmp_path / "s.db"), threading.Event()
    for s in ("a", "b"):
        SimSite(second, s, site_stop2, executed).start()
    outcome = run_search(second, cfg(), threading.Event())
    site_stop2.set()
    assert outcome.reason == "completed all 3 rounds"
    assert [o.strategy.key for o in outcome.strategies if o.round_no == 1] == round1
    assert len(outcome.strategies) == 9
    assert set(executed.values()) == {1}, "an evaluation ran twice"


def test_common_catalog_intersects_by_name_and_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.upsert_site("a", "0.1.0", CATALOG, SizeBucket.UNDER_1K, 0.0)
    store.upsert_site("b", "0.1.0", CATALOG[:2] + (CATALOG[2].model_copy(update={"version": "2"}),),
                      SizeBucket.UNDER_1K, 0.0)
    assert [s.name for s in common_catalog(store.list_sites())] == ["alpha", "beta"]


class FlatSite(SimSite):
    """Every strategy scores the same: the search has nothing to improve on after round 1."""

    def run(self) -> None:
        self.service.hello(self.site_id, Hello(site_id=self.site_id, software_version="0.1.0", catalog=CATALOG))
        for _ in range(10_000):
            if self.stop.is_set():
                return
            reply = self.service.poll(self.site_id, Poll(site_id=self.site_id, wait_ms=100), lambda: None)
            if reply.task is not None:
                self.service.report(self.site_id, ResultReport(
                    task_id=reply.task.task_id, site_id=self.site_id, status=TaskStatus.OK, score=0.25,
                    eval_ms=1200, processing_ms=300, cache_hits=1, operators_run=1, cache_saved_ms=100,
                    sampled_permille=200, targets_permille=500, epsilon_spent=0.5, epsilon_remaining=7.5))


def test_search_stops_early_when_the_best_score_stops_improving(tmp_path: Path) -> None:
    service, stop = make_service(tmp_path / "s.db"), threading.Event()
    FlatSite(service, "a", stop, Counter()).start()
    seen: list[int] = []
    outcome = run_search(service, cfg(rounds=5, min_sites=1, patience=1), threading.Event(),
                         on_round=lambda r, o: seen.append(len(o.strategies)))
    stop.set()
    assert outcome.reason.startswith("converged") and "after round 2 of 5" in outcome.reason
    assert seen == [3, 6] and len(outcome.strategies) == 6
    data = outcome.to_json()
    assert [r["best_so_far"] for r in data["rounds"]] == [0.25, 0.25]
    assert data["best_so_far"] == [0.25] * 6 and data["evaluations"] == 6
    totals = data["per_site"]["a"]
    assert totals["ok"] == 6 and totals["eval_ms"] == 7200 and totals["cache_saved_ms"] == 600
    assert totals["cache_hit_rate"] == 0.5 and totals["epsilon_spent"] == 3.0 and totals["epsilon_remaining"] == 7.5
    # per task: evaluation on 20% of the rows -> x5; processing on 50% of that sample -> x10 (an estimate)
    assert totals["est_saved_by_sampling_ms"] == 6 * (1200 * 4 + 300 * 9)


def test_baselines_run_on_the_budget_the_search_used() -> None:
    base = cfg(rounds=5, baselines=["random", "tpe"], patience=1, proposer="evolutionary")
    outcome = SearchOutcome("s1", (), ())
    assert baseline_configs(base, outcome) == []  # nothing ran: nothing to compare at equal budget
    from coordinator.report import StrategyOutcome

    ran = SearchOutcome("s1", tuple(StrategyOutcome(r, 0, Strategy(), (), None) for r in (1, 2)), ())
    configs = baseline_configs(base, ran)
    assert [(c.search_id, c.proposer, c.rounds, c.patience) for c in configs] == [
        ("s1-random", "random", 2, 0), ("s1-tpe", "tpe", 2, 0)]
    assert all(c.strategies_per_round == base.strategies_per_round and c.seed == base.seed for c in configs)
