"""Replay and idempotency: a task delivered twice, re-leased with a new attempt number, reordered, replayed
with a changed body under the same id, or replayed after the site restarts is executed once, debited once in
the privacy ledger, and answered every time with the same result bytes.

The site is a real ``SiteAgent`` (toy data, the Laplace release so that every released score debits
epsilon). The coordinator is either a scripted one that delivers exactly the sequence a test asks for
(tests/fakes/coordinator.py, mutual TLS on a unix socket) or the real one on 127.0.0.1 (``federation``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from coordinator.sqlite_store import SQLiteStore
from protos import federation_pb2 as pb
from protos.serde import to_pb
from protos.tls import init_ca, issue_coordinator, issue_site
from protos.views import EvalSettings, OperatorCall, ResultReport, Strategy, Task, TaskStatus
from site_agent.agent import SiteAgent
from site_agent.config import load_config
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from tests.e2e.conftest import Federation
from tests.fakes.coordinator import ScriptedCoordinator

SEARCH = "s-replay"
RELEASE_EPS = 0.5
PRIVACY = {"mechanism": "laplace", "release_epsilon": RELEASE_EPS, "total_epsilon": 10.0, "budget_scope": "search",
           "min_cohort": 5}


def write_site(root: Path, certs: Path, coordinator: str) -> Path:
    data, _ = make_toy_dataset(60, seed=3, noise_rate=0.4)
    save_pairs(data, root / "train.jsonl")
    (root / "policy.yaml").write_text(yaml.safe_dump({"allowed_operators": ["remove_markup", "normalize_text"]}))
    cfg = {"site_id": "hospital-a", "coordinator": coordinator, "tls_server_name": "localhost",
           "tls": {"cert": str(certs / "site-hospital-a.crt"), "key": str(certs / "site-hospital-a.key"),
                   "ca": str(certs / "ca.crt")},
           "audit_key": str(certs / "site-hospital-a.audit.key"), "state_dir": str(root / "state"),
           "policy": "policy.yaml", "data": {"path": "train.jsonl"}, "embedder": None, "screening": None,
           "poll_wait_ms": 100, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "privacy": PRIVACY,
           "cache": {"dir": str(root / "cache")}}
    (root / "site.yaml").write_text(yaml.safe_dump(cfg))
    return root / "site.yaml"


def task(task_id: str, op: str, attempt: int = 1) -> Task:
    return Task(task_id=task_id, search_id=SEARCH, strategy=Strategy(calls=(OperatorCall.of(op),)), attempt=attempt,
                settings=EvalSettings(sample_rate_permille=1000, use_screening=False))


def poll_reply(t: Task) -> bytes:
    return pb.PollReply(has_task=True, task=to_pb(t)).SerializeToString()


class RunningSite:
    """A SiteAgent serving in a thread; ``restart`` closes it and opens a new one on the same state."""

    def __init__(self, cfg_path: Path) -> None:
        self.cfg_path = cfg_path
        self.errors: list[BaseException] = []
        self._start()

    def _start(self) -> None:
        self.agent = SiteAgent(load_config(self.cfg_path))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.agent.run()
        except BaseException as e:
            self.errors.append(e)

    def stop(self) -> None:
        self.agent.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        self.agent.close()

    def restart(self) -> None:
        self.stop()
        self._start()


@dataclass
class Scripted:
    coord: ScriptedCoordinator
    site: RunningSite

    def deliver(self, t: Task) -> pb.ResultReport:
        """Deliver ``t``; return the one report the site sent back for it (its raw bytes are checked too)."""
        n = len(self.coord.reports)
        self.coord.deliver(poll_reply(t), alive=self.site.thread.is_alive)
        assert not self.site.errors, self.site.errors
        new = self.coord.reports[n:]
        assert len(new) == 1, f"{len(new)} reports for one delivery of {t.task_id}"
        report = pb.ResultReport.FromString(new[0])
        assert report.task_id == t.task_id
        return report


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Scripted]:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue_coordinator(certs)
    issue_site(certs, "hospital-a")
    with ScriptedCoordinator(certs, tmp_path) as coord:
        site = RunningSite(write_site(tmp_path, certs, coord.address))
        try:
            yield Scripted(coord, site)
        finally:
            site.stop()


def test_duplicates_reorders_and_replays_run_once_debit_once_and_answer_the_same(scripted: Scripted) -> None:
    s = scripted
    a, b = task("t-a", "remove_markup"), task("t-b", "normalize_text")
    first_a = s.deliver(a)
    assert first_a.status == pb.TASK_STATUS_OK and first_a.epsilon_spent == pytest.approx(RELEASE_EPS)
    raw_a = s.coord.reports[-1]
    assert s.deliver(a) == first_a and s.coord.reports[-1] == raw_a  # delivered twice
    first_b = s.deliver(b)
    raw_b = s.coord.reports[-1]
    # re-leased (a new attempt number), reordered, and replayed with another body under the same id
    replays = [task("t-a", "remove_markup", attempt=2), b, task("t-a", "normalize_text", attempt=3), b, a]
    for t in replays:
        s.deliver(t)
        assert s.coord.reports[-1] == (raw_a if t.task_id == "t-a" else raw_b)

    ledger = s.site.agent.ledger
    assert s.site.agent.runner.executed == 2
    assert ledger.spent(SEARCH) == pytest.approx(2 * RELEASE_EPS)
    state_a = ledger.state("t-a")
    assert state_a is not None and state_a.epsilon == pytest.approx(RELEASE_EPS)
    assert state_a.released == pytest.approx(first_a.score)

    # the site restarts on the same state: replays are still answered from its record, nothing is charged
    s.site.restart()
    for t in (b, a, task("t-a", "remove_markup", attempt=4)):
        s.deliver(t)
        assert s.coord.reports[-1] == (raw_a if t.task_id == "t-a" else raw_b)
    assert s.site.agent.runner.executed == 0
    assert s.site.agent.ledger.spent(SEARCH) == pytest.approx(2 * RELEASE_EPS)
    # a new task still runs and debits: the ledger carried over, it was not reset
    c = s.deliver(task("t-c", "remove_markup"))
    assert c.status == pb.TASK_STATUS_OK and s.site.agent.runner.executed == 1
    assert s.site.agent.ledger.spent(SEARCH) == pytest.approx(3 * RELEASE_EPS)
    assert c.epsilon_remaining == pytest.approx(10.0 - 3 * RELEASE_EPS)
    assert first_b.epsilon_remaining == pytest.approx(10.0 - 2 * RELEASE_EPS)


def test_a_crash_before_the_answer_was_stored_reruns_but_debits_once_and_releases_the_same_score(
        scripted: Scripted, tmp_path: Path) -> None:
    """The one window where work is redone: the site debited and released, then died before storing the
    answer. The ledger charges the task once and hands back the score it released the first time."""
    s = scripted
    a = task("t-a", "remove_markup")
    first = s.deliver(a)
    s.site.stop()
    with sqlite3.connect(tmp_path / "state" / "results.db") as db:  # the answer never reached the disk
        db.execute("DELETE FROM results WHERE task_id = 't-a'")
    s.site._start()
    again = s.deliver(task("t-a", "remove_markup", attempt=2))
    assert s.site.agent.runner.executed == 1  # redone: there was no stored answer to give
    assert s.site.agent.ledger.spent(SEARCH) == pytest.approx(RELEASE_EPS)
    assert (again.status, again.score, again.epsilon_spent) == (first.status, first.score, first.epsilon_spent)


def test_the_real_coordinator_replaying_tasks_after_a_site_restart_gets_the_same_results(
        federation: Federation, tmp_path: Path) -> None:
    store = federation.server.store
    now = time.time()
    tasks = [task("t-1", "remove_markup"), task("t-2", "normalize_text")]
    for t in tasks:
        assert store.enqueue(t, "hospital-a", 1, now)
    assert not store.enqueue(tasks[0], "hospital-a", 1, now)  # the task id is the key: no duplicate in the store
    site = RunningSite(write_site(tmp_path, federation.certs, federation.address))
    try:
        first = {t.task_id: wait_result(store, t.task_id) for t in tasks}
        assert site.agent.runner.executed == 2
        spent = site.agent.ledger.spent(SEARCH)
        assert spent == pytest.approx(2 * RELEASE_EPS)

        # the coordinator loses both results (restored from an older backup) and leases them again,
        # in the other order; the site has restarted meanwhile
        site.restart()
        with sqlite3.connect(federation.config.state_dir / "store.db", timeout=10) as db:
            for i, t in enumerate(reversed(tasks)):
                db.execute("UPDATE tasks SET state = 'pending', result = NULL, result_at = NULL, "
                           "lease_expires = NULL, created = ? WHERE task_id = ?", (now + 1 + i, t.task_id))
        again = {t.task_id: wait_result(store, t.task_id) for t in tasks}
        assert again == first
        record = store.get_task("t-1")
        assert record is not None and record.attempts == 2  # it really was delivered a second time
        assert site.agent.runner.executed == 0
        assert site.agent.ledger.spent(SEARCH) == pytest.approx(spent)
    finally:
        site.stop()
    assert not site.errors


def wait_result(store: SQLiteStore, task_id: str, timeout_s: float = 30.0) -> ResultReport:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = store.get_result(task_id)
        if result is not None:
            assert result.status is TaskStatus.OK
            return result
        time.sleep(0.05)
    raise AssertionError(f"no result for {task_id} within {timeout_s} s")
