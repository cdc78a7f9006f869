"""The agent runs a LoRA-evaluated task end to end: the site's evaluator options (model, cache dir, held-out
set), an isolated worker, a released score, and the ledger charged for the DP-SGD runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.serde import to_pb
from protos.views import EvalSettings, EvaluatorKind, Metric, OperatorCall, Strategy, Task, TaskStatus
from site_agent.agent import TaskRunner
from site_agent.data.toy import make_toy_dataset
from site_agent.operators.base import Batch
from site_agent.policy import Policy
from site_agent.privacy import PrivacyLedger, PrivacySettings
from site_agent.resources import SiteResources
from site_agent.results import ResultStore


@pytest.mark.slow
def test_lora_task_through_the_agent(tmp_path: Path, tiny_model: Path, held_out: Batch) -> None:
    data, _ = make_toy_dataset(160, seed=3, noise_rate=0.6)
    from site_agent.privacy.settings import DPSGDSettings

    # a fine grid: 8 DP-SGD steps of a tiny model move the loss by ~1e-3, and the default 1e-3 grid then
    # released 0.0 in about one run in three (the DP noise secret is new in every tmp_path)
    privacy = PrivacySettings(min_cohort=10, total_epsilon=50.0, grid=1e-6,
                              dp_sgd=DPSGDSettings(target_epsilon=8.0, delta=1e-5))
    ledger = PrivacyLedger(tmp_path / "privacy.db", privacy)
    resources = SiteResources(data, held_out, None, None, None, None, None, None)
    options = {"lora": {"model_path": tiny_model, "cache_dir": tmp_path / "lora", "steps": 8, "seq_len": 64,
                        "batch_size": 4, "threads": 1, "dp": privacy.dp_sgd.model_dump(exclude_none=True)}}
    runner = TaskRunner("hospital-a", Policy(allowed_operators=["remove_markup", "length_filter"]), resources,
                        ResultStore(tmp_path / "r.db"), ledger, privacy, options)
    settings = EvalSettings(evaluator=EvaluatorKind.LORA, metric=Metric.NEG_TOKEN_LOSS, train_steps=8,
                            sample_rate_permille=1000, seed=1)
    raw = to_pb(Task(task_id="t-lora", search_id="s", settings=settings,
                     strategy=Strategy(calls=(OperatorCall.of("remove_markup"), OperatorCall.of("length_filter")))))
    privacy_planned = 8.0  # target epsilon of the processed run (release mechanism: none)
    report = runner.handle(raw)  # type: ignore[arg-type]
    assert report is not None and report.status is TaskStatus.OK, report
    assert report.operators_run == 2 and report.score != 0.0
    # the processed run and, trained in this same call, the baseline: both under DP-SGD, both charged
    assert report.epsilon_spent > privacy_planned * 1.5
    assert abs(ledger.spent("s") - report.epsilon_spent) < 1e-9
    assert abs(report.epsilon_remaining - (50.0 - report.epsilon_spent)) < 1e-9
    # with 20 left, a second task needs 16 reserved (its run, and a baseline in case it must train): refused
    small = PrivacySettings(min_cohort=10, total_epsilon=report.epsilon_spent + 15.0, grid=1e-6,
                            dp_sgd=privacy.dp_sgd)
    runner.privacy = small
    runner.ledger = PrivacyLedger(tmp_path / "privacy.db", small)
    again = runner.handle(to_pb(Task(task_id="t-lora-2", search_id="s", settings=settings,  # type: ignore[arg-type]
                                     strategy=Strategy(calls=(OperatorCall.of("length_filter"),)))))
    assert again is not None and again.status is TaskStatus.REJECTED_BUDGET
