"""SQLiteStore against the Store contract: sites, searches, task leasing, results, reopen."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.errors import CoordinatorError, StoreError
from coordinator.sqlite_store import SCHEMA_VERSION, SQLiteStore
from coordinator.store import SearchState, Store, TaskState
from protos.errors import AutodpError
from protos.views import (
    EvalSettings,
    OperatorCall,
    OperatorSpec,
    ParamSpec,
    ParamType,
    ResultReport,
    SizeBucket,
    Strategy,
    Task,
    TaskStatus,
    Team,
)

T0 = 1_000_000.0
CATALOG = (
    OperatorSpec(name="dedup", team=Team.CLEANING, version="1.0", params=(
        ParamSpec(name="threshold", type=ParamType.FLOAT, float_min=0.0, float_max=1.0, float_default=0.8),
        ParamSpec(name="mode", type=ParamType.ENUM, choices=("exact", "minhash"), enum_default="exact"))),
    OperatorSpec(name="select_top", team=Team.SELECTION, version="2.1", params=(
        ParamSpec(name="k", type=ParamType.INT, int_min=1, int_max=100, int_default=10),)),
)
S1 = Strategy(calls=(OperatorCall.of("dedup", threshold=0.5, mode="minhash"),
                     OperatorCall.of("select_top", k=5)))
S2 = Strategy(calls=(OperatorCall.of("select_top", k=7),))
S0 = Strategy()


def task(task_id: str, search_id: str = "srch1", deadline_s: int = 600, strategy: Strategy = S1) -> Task:
    return Task(task_id=task_id, search_id=search_id, strategy=strategy,
                settings=EvalSettings(seed=7, train_steps=3), deadline_s=deadline_s)


def report(task_id: str, site_id: str = "siteA", score: float = 0.25,
           status: TaskStatus = TaskStatus.OK) -> ResultReport:
    return ResultReport(task_id=task_id, site_id=site_id, status=status, score=score, epsilon_spent=0.1,
                        epsilon_remaining=2.9, eval_ms=3000, cache_hits=1, operators_run=2)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "store.db") as s:
        yield s


def test_implements_protocol_and_error_tree(store: SQLiteStore) -> None:
    assert isinstance(store, Store)
    assert issubclass(StoreError, CoordinatorError) and issubclass(CoordinatorError, AutodpError)


def test_pragmas(store: SQLiteStore, tmp_path: Path) -> None:
    c = sqlite3.connect(tmp_path / "store.db")
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    c.close()


# ---------------------------------------------------------------- sites

def test_sites(store: SQLiteStore) -> None:
    assert store.get_site("siteA") is None
    assert store.touch_site("siteA", T0) is False
    store.upsert_site("siteB", "0.1.0", CATALOG[:1], SizeBucket.OVER_100K, T0)
    store.upsert_site("siteA", "0.1.0", CATALOG, SizeBucket.FROM_1K_TO_10K, T0)
    rec = store.get_site("siteA")
    assert rec is not None
    assert (rec.site_id, rec.software_version, rec.catalog, rec.size_bucket, rec.last_seen,
            rec.tasks_done) == ("siteA", "0.1.0", CATALOG, SizeBucket.FROM_1K_TO_10K, T0, 0)
    assert store.touch_site("siteA", T0 + 5, tasks_done=4) is True
    assert store.touch_site("siteA", T0 + 6) is True  # no count: keeps the last one
    rec = store.get_site("siteA")
    assert rec is not None and (rec.last_seen, rec.tasks_done) == (T0 + 6, 4)
    # A reconnecting site refreshes its catalog and version but keeps its counters.
    store.upsert_site("siteA", "0.2.0", (), SizeBucket.UNDER_1K, T0 + 9)
    rec = store.get_site("siteA")
    assert rec is not None
    assert (rec.software_version, rec.catalog, rec.size_bucket, rec.last_seen, rec.tasks_done) == (
        "0.2.0", (), SizeBucket.UNDER_1K, T0 + 9, 4)
    assert [s.site_id for s in store.list_sites()] == ["siteA", "siteB"]


def test_bad_site_id_is_a_store_error_without_the_value(store: SQLiteStore) -> None:
    with pytest.raises(StoreError) as e:
        store.upsert_site("bad id with spaces", "0.1", (), SizeBucket.UNDER_1K, T0)
    assert "spaces" not in str(e.value)


# ---------------------------------------------------------------- searches

def test_searches_and_rounds(store: SQLiteStore) -> None:
    assert store.get_search("srch1") is None
    assert store.create_search("srch1", '{"rounds": 3}', T0) is True
    assert store.create_search("srch1", '{"other": 1}', T0 + 1) is False
    rec = store.get_search("srch1")
    assert rec is not None
    assert (rec.config_json, rec.state, rec.reason, rec.created) == (
        '{"rounds": 3}', SearchState.RUNNING, "", T0)
    store.set_search_state("srch1", SearchState.DONE, "rounds_complete")
    rec = store.get_search("srch1")
    assert rec is not None and (rec.state, rec.reason) == (SearchState.DONE, "rounds_complete")

    store.add_round("srch1", 1, [S2, S0])
    store.add_round("srch1", 0, [S1, S2, S0])
    store.add_round("srch1", 2, [])
    store.add_round("srch1", 0, [S0])  # idempotent: a resumed search replays round 0
    assert store.get_rounds("srch1") == [(0, [S1, S2, S0]), (1, [S2, S0]), (2, [])]
    assert store.get_rounds("nope") == []


def test_unknown_search_is_an_error(store: SQLiteStore) -> None:
    with pytest.raises(StoreError):
        store.set_search_state("nope", SearchState.FAILED, "x")
    with pytest.raises(StoreError):
        store.add_round("nope", 0, [S1])


# ---------------------------------------------------------------- tasks

def test_enqueue_idempotent_and_get_task(store: SQLiteStore) -> None:
    assert store.enqueue(task("t1", deadline_s=60), "siteA", 0, T0, max_attempts=2) is True
    assert store.enqueue(task("t1", deadline_s=999, strategy=S2), "siteB", 5, T0 + 1) is False
    rec = store.get_task("t1")
    assert rec is not None
    assert rec.task == task("t1", deadline_s=60)
    assert (rec.site_id, rec.round_no, rec.state, rec.attempts, rec.max_attempts, rec.lease_expires,
            rec.created, rec.deadline, rec.failure) == (
        "siteA", 0, TaskState.PENDING, 0, 2, None, T0, T0 + 60, None)
    assert store.get_task("nope") is None
    assert (store.pending_count(), store.pending_count("siteA"), store.pending_count("siteB")) == (1, 1, 0)
    with pytest.raises(StoreError):
        store.enqueue(task("t2"), "siteA", 0, T0, max_attempts=0)


def test_lease_order_and_no_double_lease(store: SQLiteStore) -> None:
    store.enqueue(task("t_late"), "siteA", 0, T0 + 2)
    store.enqueue(task("t_b"), "siteA", 0, T0)
    store.enqueue(task("t_a"), "siteA", 0, T0)  # same time as t_b: insertion order breaks the tie
    store.enqueue(task("t_other"), "siteB", 0, T0 - 10)
    got = [store.lease_next("siteA", T0 + 3, 30.0) for _ in range(4)]
    assert [t.task_id if t else None for t in got] == ["t_b", "t_a", "t_late", None]
    assert all(t is not None and t.attempt == 1 for t in got[:3])
    rec = store.get_task("t_b")
    assert rec is not None and (rec.state, rec.attempts, rec.lease_expires) == (TaskState.LEASED, 1, T0 + 33)
    assert store.pending_count("siteA") == 0 and store.pending_count() == 1
    # Still within the lease: nothing handed out again.
    assert store.lease_next("siteA", T0 + 32, 30.0) is None


def test_concurrent_leases_hand_each_task_out_once(store: SQLiteStore) -> None:
    for i in range(40):
        store.enqueue(task(f"t{i}"), "siteA", 0, T0 + i)
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(40):  # bounded: more tries than tasks
            t = store.lease_next("siteA", T0 + 100, 300.0)
            if t is None:
                return
            with lock:
                got.append(t.task_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert sorted(got) == sorted(f"t{i}" for i in range(40))


def test_lease_expiry_releases_then_fails_at_max_attempts(store: SQLiteStore) -> None:
    store.enqueue(task("t1", deadline_s=10_000), "siteA", 0, T0, max_attempts=2)
    first = store.lease_next("siteA", T0, 10.0)
    assert first is not None and first.attempt == 1
    assert store.expire_leases(T0 + 5) == 0
    second = store.lease_next("siteA", T0 + 10, 10.0)  # the expired lease is reclaimed first
    assert second is not None and (second.task_id, second.attempt) == ("t1", 2)
    assert store.expire_leases(T0 + 20) == 1
    rec = store.get_task("t1")
    assert rec is not None and (rec.state, rec.failure, rec.attempts) == (
        TaskState.FAILED, "lease_expired_max_attempts", 2)
    assert store.lease_next("siteA", T0 + 30, 10.0) is None


def test_expired_lease_goes_back_to_pending(store: SQLiteStore) -> None:
    store.enqueue(task("t1"), "siteA", 0, T0)
    store.lease_next("siteA", T0, 10.0)
    assert store.expire_leases(T0 + 11) == 1
    rec = store.get_task("t1")
    assert rec is not None and (rec.state, rec.lease_expires, rec.attempts) == (TaskState.PENDING, None, 1)
    assert store.pending_count("siteA") == 1


def test_deadline_fails_pending_and_leased(store: SQLiteStore) -> None:
    store.enqueue(task("t_leased", deadline_s=60), "siteA", 0, T0)
    store.enqueue(task("t_pending", deadline_s=60), "siteA", 0, T0 + 1)
    store.enqueue(task("t_long", deadline_s=600), "siteA", 0, T0 + 2)
    store.lease_next("siteA", T0, 1_000.0)
    assert store.expire_leases(T0 + 61) == 2
    for tid in ("t_leased", "t_pending"):
        rec = store.get_task(tid)
        assert rec is not None and (rec.state, rec.failure) == (TaskState.FAILED, "deadline")
    rec = store.get_task("t_long")
    assert rec is not None and rec.state is TaskState.PENDING
    leased = store.lease_next("siteA", T0 + 62, 10.0)
    assert leased is not None and leased.task_id == "t_long"


def test_results(store: SQLiteStore) -> None:
    store.enqueue(task("t1"), "siteA", 0, T0)
    store.enqueue(task("t2"), "siteA", 0, T0)
    store.lease_next("siteA", T0, 30.0)
    assert store.get_result("t1") is None
    assert store.record_result(report("nope"), T0 + 1) == (False, False)
    assert store.record_result(report("t1", site_id="siteB"), T0 + 1) == (False, False)
    assert store.get_result("t1") is None
    assert store.record_result(report("t1", score=0.25), T0 + 2) == (True, False)
    assert store.record_result(report("t1", score=0.99), T0 + 3) == (True, True)
    assert store.get_result("t1") == report("t1", score=0.25)
    rec = store.get_task("t1")
    assert rec is not None and (rec.state, rec.lease_expires, rec.failure) == (TaskState.DONE, None, None)
    # A rejection is a final answer too.
    rejected = report("t2", score=0.0, status=TaskStatus.REJECTED_BUDGET)
    assert store.record_result(rejected, T0 + 4) == (True, False)
    rec = store.get_task("t2")
    assert rec is not None and rec.state is TaskState.DONE
    assert store.expire_leases(T0 + 10_000) == 0  # final tasks never expire


def test_late_result_after_failure(store: SQLiteStore) -> None:
    store.enqueue(task("t1", deadline_s=5), "siteA", 0, T0)
    store.lease_next("siteA", T0, 1.0)
    store.expire_leases(T0 + 100)
    rec = store.get_task("t1")
    assert rec is not None and rec.state is TaskState.FAILED
    assert store.record_result(report("t1"), T0 + 101) == (True, False)
    rec = store.get_task("t1")
    assert rec is not None and (rec.state, rec.failure) == (TaskState.DONE, None)
    assert store.get_result("t1") == report("t1")
    assert store.record_result(report("t1", score=0.5), T0 + 102) == (True, True)


def test_tasks_for_search_order(store: SQLiteStore) -> None:
    store.enqueue(task("r1_a"), "siteA", 1, T0)
    store.enqueue(task("r0_b"), "siteB", 0, T0 + 5)
    store.enqueue(task("r0_a"), "siteA", 0, T0 + 1)
    store.enqueue(task("other", search_id="srch2"), "siteA", 0, T0)
    store.lease_next("siteA", T0 + 6, 30.0)
    store.record_result(report("r0_a"), T0 + 7)
    rows = store.tasks_for_search("srch1")
    assert [(r.task.task_id, r.round_no) for r, _ in rows] == [("r0_a", 0), ("r0_b", 0), ("r1_a", 1)]
    assert [res for _, res in rows] == [report("r0_a"), None, None]
    assert store.tasks_for_search("none") == []


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as s:
        s.upsert_site("siteA", "0.1.0", CATALOG, SizeBucket.FROM_10K_TO_100K, T0)
        s.touch_site("siteA", T0 + 1, tasks_done=2)
        s.create_search("srch1", "{}", T0)
        s.set_search_state("srch1", SearchState.FAILED, "no_sites")
        s.add_round("srch1", 0, [S1, S0])
        s.enqueue(task("t1"), "siteA", 0, T0)
        s.enqueue(task("t2"), "siteA", 0, T0 + 1)
        s.enqueue(task("t3"), "siteA", 0, T0 + 2)
        s.lease_next("siteA", T0, 30.0)
        s.lease_next("siteA", T0, 30.0)
        s.record_result(report("t1"), T0 + 3)
        before = (s.list_sites(), s.get_search("srch1"), s.get_rounds("srch1"), s.tasks_for_search("srch1"))
    with pytest.raises(StoreError):
        s.get_site("siteA")  # closed
    with SQLiteStore(path) as s2:
        after = (s2.list_sites(), s2.get_search("srch1"), s2.get_rounds("srch1"),
                 s2.tasks_for_search("srch1"))
        assert after == before
        assert s2.record_result(report("t1", score=0.9), T0 + 4) == (True, True)
        t = s2.lease_next("siteA", T0 + 5, 30.0)
        assert t is not None and t.task_id == "t3"


def test_open_refuses_foreign_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some bytes\n" * 10)
    with pytest.raises(StoreError, match="not a SQLite database"):
        SQLiteStore(junk)

    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="not an autodp store"):
        SQLiteStore(other)

    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    c = sqlite3.connect(newer)
    c.execute("UPDATE schema_version SET version = 7")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(newer)

    with pytest.raises(StoreError):
        SQLiteStore(tmp_path / "missing_dir" / "store.db")
    with pytest.raises(StoreError):
        SQLiteStore(tmp_path)  # a directory
