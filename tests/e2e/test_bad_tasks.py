"""A coordinator that sends a bad task gets a typed rejection back over the wire, and the site runs
nothing. The tasks are put straight into the coordinator's store, skipping the search's own validation, as
a compromised or buggy coordinator would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from protos.views import EvalSettings, OperatorCall, Strategy, Task, TaskStatus
from site_agent.agent import SiteAgent
from site_agent.config import load_config
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from tests.e2e.conftest import Federation

BAD = {
    "t-unknown-op": (Strategy(calls=(OperatorCall.of("exfiltrate"),)), TaskStatus.REJECTED_UNKNOWN_OPERATOR),
    "t-out-of-range": (Strategy(calls=(OperatorCall.of("length_filter", min_answer_chars=10**9),)),
                       TaskStatus.REJECTED_BAD_PARAMETER),
    "t-extra-field": (Strategy(calls=(OperatorCall.of("remove_markup", dump_rows=True),)),
                      TaskStatus.REJECTED_UNEXPECTED_FIELD),
    "t-not-allowed": (Strategy(calls=(OperatorCall.of("exact_dedup"),)), TaskStatus.REJECTED_OPERATOR_NOT_ALLOWED),
}


def site_config(fed: Federation, tmp: Path) -> Path:
    data, _ = make_toy_dataset(60, seed=3)
    save_pairs(data, tmp / "train.jsonl")
    (tmp / "policy.yaml").write_text(yaml.safe_dump(
        {"allowed_operators": ["remove_markup", "normalize_text", "length_filter"]}))
    c = fed.certs
    cfg = {"site_id": "hospital-a", "coordinator": fed.address, "tls_server_name": "localhost",
           "tls": {"cert": str(c / "site-hospital-a.crt"), "key": str(c / "site-hospital-a.key"),
                   "ca": str(c / "ca.crt")},
           "audit_key": str(c / "site-hospital-a.audit.key"), "state_dir": str(tmp / "state"),
           "policy": "policy.yaml", "data": {"path": "train.jsonl"}, "poll_wait_ms": 200,
           "privacy": {"min_cohort": 5}, "cache": {"dir": str(tmp / "cache")}}
    (tmp / "site.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "site.yaml"


def test_bad_tasks_are_rejected_over_the_wire(federation: Federation, tmp_path: Path) -> None:
    store = federation.server.store
    now = time.time()
    for task_id, (strategy, _) in BAD.items():
        store.enqueue(Task(task_id=task_id, search_id="s", strategy=strategy, settings=EvalSettings()),
                      "hospital-a", 1, now)
    good = Task(task_id="t-good", search_id="s", settings=EvalSettings(sample_rate_permille=500),
                strategy=Strategy(calls=(OperatorCall.of("remove_markup"),)))
    store.enqueue(good, "hospital-a", 1, now)

    agent = SiteAgent(load_config(site_config(federation, tmp_path)), threading.Event())
    thread = threading.Thread(target=agent.run, kwargs={"max_tasks": len(BAD) + 1}, daemon=True)
    thread.start()
    thread.join(60)
    agent.stop.set()
    thread.join(5)
    agent.close()

    for task_id, (_, status) in BAD.items():
        result = store.get_result(task_id)
        assert result is not None and result.status is status, (task_id, result)
        assert result.score == 0.0 and result.operators_run == 0
    ok = store.get_result("t-good")
    assert ok is not None and ok.status is TaskStatus.OK and ok.operators_run == 1
    assert agent.runner.executed == 1  # only the good task ran anything
