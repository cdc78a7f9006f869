"""A task is checked before anything runs; a bad one gets a typed status; a repeated one is answered from
the site's own record without running again."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import federation_pb2 as pb
from protos.serde import to_pb
from protos.views import EvalSettings, EvaluatorKind, OperatorCall, Strategy, Task, TaskStatus
from site_agent.agent import TaskRunner
from site_agent.cache.store import PrefixCache
from site_agent.data.toy import make_toy_dataset
from site_agent.policy import Policy
from site_agent.privacy import PrivacyLedger, PrivacySettings
from site_agent.resources import SiteResources
from site_agent.results import ResultStore


@pytest.fixture
def runner(tmp_path: Path) -> TaskRunner:
    data, _ = make_toy_dataset(120, seed=1, noise_rate=0.4)
    policy = Policy(allowed_operators=["remove_markup", "normalize_text", "exact_dedup"])
    resources = SiteResources(data, None, None, None, None, None, PrefixCache(tmp_path / "cache", 1 << 26), None)
    privacy = PrivacySettings(min_cohort=5, grid=1e-3)
    return TaskRunner("hospital-a", policy, resources, ResultStore(tmp_path / "results.db"),
                      PrivacyLedger(tmp_path / "privacy.db", privacy), privacy)


def task(*calls: OperatorCall, task_id: str = "t-1", **settings: object) -> pb.Task:
    return to_pb(Task(task_id=task_id, search_id="s", strategy=Strategy(calls=calls),  # type: ignore[return-value]
                      settings=EvalSettings.model_validate({"sample_rate_permille": 1000, **settings})))


def test_valid_task_runs_and_releases_a_rounded_score(runner: TaskRunner) -> None:
    report = runner.handle(task(OperatorCall.of("remove_markup"), OperatorCall.of("exact_dedup")))
    assert report is not None and report.status is TaskStatus.OK
    assert report.operators_run == 2 and runner.executed == 1
    assert report.score > 0  # cleaning noisy toy data improves the quality proxy
    assert abs(report.score * 1000 - round(report.score * 1000)) < 1e-9


def test_later_tasks_score_with_the_same_quality_proxy_and_its_memo_of_checked_rows(runner: TaskRunner) -> None:
    first = runner.handle(task(OperatorCall.of("remove_markup"), task_id="t-1"))
    proxy = runner._evaluator(EvaluatorKind.QUALITY_PROXY)
    memo = proxy._checks.cache_info  # type: ignore[attr-defined]
    checked = memo().misses
    again = runner.handle(task(OperatorCall.of("remove_markup"), task_id="t-2"))
    assert first is not None and again is not None and again.score == first.score
    assert runner._evaluator(EvaluatorKind.QUALITY_PROXY) is proxy and memo().misses == checked


@pytest.mark.parametrize(("raw", "status"), [
    (lambda: task(OperatorCall.of("no_such_op")), TaskStatus.REJECTED_UNKNOWN_OPERATOR),
    (lambda: task(OperatorCall.of("length_filter")), TaskStatus.REJECTED_OPERATOR_NOT_ALLOWED),
    (lambda: task(OperatorCall.of("exact_dedup", key="nonsense")), TaskStatus.REJECTED_BAD_PARAMETER),
    (lambda: task(OperatorCall.of("remove_markup", keep_line_breaks=7)), TaskStatus.REJECTED_BAD_PARAMETER),
    (lambda: task(OperatorCall.of("remove_markup", surprise=True)), TaskStatus.REJECTED_UNEXPECTED_FIELD),
    (lambda: task(OperatorCall.of("remove_markup"), evaluator=EvaluatorKind.LORA, train_steps=10**5),
     TaskStatus.REJECTED_SETTINGS),
])
def test_bad_tasks_are_rejected_with_a_typed_status_and_nothing_runs(runner: TaskRunner, raw, status) -> None:  # type: ignore[no-untyped-def]
    report = runner.handle(raw())
    assert report is not None and report.status is status
    assert report.score == 0.0 and report.operators_run == 0
    assert runner.executed == 0


def test_unknown_protobuf_field_is_an_unexpected_field(runner: TaskRunner) -> None:
    raw = task(OperatorCall.of("remove_markup"))
    raw.MergeFromString(bytes([0xA0, 0x06, 0x01]))  # field 100, not in the contract
    report = runner.handle(raw)
    assert report is not None and report.status is TaskStatus.REJECTED_UNEXPECTED_FIELD
    assert runner.executed == 0


def test_malformed_task_is_rejected(runner: TaskRunner) -> None:
    raw = task(OperatorCall.of("remove_markup"))
    raw.search_id = "not an id"
    report = runner.handle(raw)
    assert report is not None and report.status is TaskStatus.REJECTED_MALFORMED
    assert runner.executed == 0


def test_task_with_unanswerable_id_is_ignored(runner: TaskRunner) -> None:
    raw = task(OperatorCall.of("remove_markup"))
    raw.task_id = "bad id"
    assert runner.handle(raw) is None and runner.executed == 0


def test_replayed_task_is_answered_the_same_and_runs_once(runner: TaskRunner) -> None:
    raw = task(OperatorCall.of("normalize_text"), task_id="t-replay")
    first = runner.handle(raw)
    second = runner.handle(raw)
    assert first == second and runner.executed == 1


def test_too_small_a_processed_set_is_refused_and_costs_nothing(tmp_path: Path) -> None:
    data, _ = make_toy_dataset(120, seed=1, noise_rate=0.4)
    policy = Policy(allowed_operators=["length_filter"])
    privacy = PrivacySettings(min_cohort=100, mechanism="laplace", release_epsilon=0.5)
    ledger = PrivacyLedger(tmp_path / "privacy.db", privacy)
    resources = SiteResources(data, None, None, None, None, None, None, None)
    r = TaskRunner("hospital-a", policy, resources, ResultStore(tmp_path / "r.db"), ledger, privacy)
    # keeps only rows with very long answers: far fewer than 100
    report = r.handle(task(OperatorCall.of("length_filter", min_answer_chars=200)))
    assert report is not None and report.status is TaskStatus.REJECTED_COHORT and report.score == 0.0
    assert ledger.spent("s") == 0.0 and report.epsilon_remaining == privacy.total_epsilon


def test_over_budget_task_is_refused_before_any_work(tmp_path: Path) -> None:
    data, _ = make_toy_dataset(120, seed=1, noise_rate=0.4)
    privacy = PrivacySettings(min_cohort=5, mechanism="laplace", release_epsilon=0.4, total_epsilon=1.0)
    ledger = PrivacyLedger(tmp_path / "privacy.db", privacy)
    resources = SiteResources(data, None, None, None, None, None, None, None)
    r = TaskRunner("hospital-a", Policy(allowed_operators=["remove_markup"]), resources,
                   ResultStore(tmp_path / "r.db"), ledger, privacy)
    statuses = [r.handle(task(OperatorCall.of("remove_markup"), task_id=f"t-{i}")) for i in range(3)]
    assert [s.status for s in statuses if s] == [TaskStatus.OK, TaskStatus.OK, TaskStatus.REJECTED_BUDGET]
    assert r.executed == 2  # the third never ran
    assert abs(ledger.spent("s") - 0.8) < 1e-9 and statuses[1] is not None
    assert abs(statuses[1].epsilon_remaining - 0.2) < 1e-9 and statuses[1].epsilon_spent == 0.4
    # a replay of an answered task is not debited again
    assert r.handle(task(OperatorCall.of("remove_markup"), task_id="t-0")) == statuses[0]
    assert abs(ledger.spent("s") - 0.8) < 1e-9
