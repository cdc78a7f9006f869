"""SQLite implementation of :class:`coordinator.store.Store`.

One connection in WAL mode with synchronous=FULL (a returned write survives a killed process and a
power cut), guarded by a lock because the gRPC server calls from many threads. Read-modify-write
operations run in ``BEGIN IMMEDIATE`` transactions so a second process on the same file cannot
interleave. Tasks, results, strategies and site catalogs are stored as canonical protobuf bytes
(the contract's own encoding, so nothing is lost or reinterpreted) next to the indexed columns the
queries need.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from coordinator.errors import StoreError
from coordinator.store import (
    FAILURE_DEADLINE,
    FAILURE_LEASE_EXPIRED,
    RoundProposal,
    SearchRecord,
    SearchState,
    SiteRecord,
    TaskRecord,
    TaskState,
)
from protos import federation_pb2 as pb
from protos.errors import MalformedMessage
from protos.serde import decode, encode, from_pb, to_pb
from protos.views import Hello, OperatorSpec, ResultReport, SizeBucket, Strategy, Task

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 2  # 2: rounds.proposal (how the meta-agent proposed the round, JSON)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS = 10_000
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sites (
    site_id TEXT PRIMARY KEY, hello BLOB NOT NULL, last_seen REAL NOT NULL, tasks_done INTEGER NOT NULL);
CREATE TABLE searches (
    search_id TEXT PRIMARY KEY, config_json TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE rounds (
    search_id TEXT NOT NULL, round_no INTEGER NOT NULL, proposal TEXT, PRIMARY KEY (search_id, round_no));
CREATE TABLE round_strategies (
    search_id TEXT NOT NULL, round_no INTEGER NOT NULL, idx INTEGER NOT NULL, strategy BLOB NOT NULL,
    PRIMARY KEY (search_id, round_no, idx));
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, search_id TEXT NOT NULL, site_id TEXT NOT NULL, round_no INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, lease_expires REAL,
    deadline REAL NOT NULL, created REAL NOT NULL, failure TEXT, task BLOB NOT NULL, result BLOB,
    result_at REAL, seq INTEGER NOT NULL);
CREATE INDEX tasks_by_site ON tasks (site_id, state, created, seq);
CREATE INDEX tasks_by_search ON tasks (search_id, round_no, created, seq);
CREATE INDEX tasks_by_state ON tasks (state, deadline);
"""
# What takes a store from version v to v + 1, run in the opening transaction (a failure leaves it at v).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE rounds ADD COLUMN proposal TEXT",),
}


def _check_header(path: Path) -> None:
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"task store {path} is not a regular file")
    with path.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    # An empty file is what sqlite3 itself would create; anything else must be a SQLite database.
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"task store {path} is not a SQLite database")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a fresh file must not both create it
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif "schema_version" not in tables:
            raise StoreError(f"task store {path} is a SQLite file but not an autodp store")
        else:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if not isinstance(version, int):
                raise StoreError(f"task store {path} has no readable schema version")
            if version > SCHEMA_VERSION:
                raise StoreError(f"task store {path} has schema version {version}, newer than this "
                                 f"coordinator's {SCHEMA_VERSION}: upgrade autodp")
            if version < 1:
                raise StoreError(f"task store {path} has unknown schema version {version}")
            for v in range(version, SCHEMA_VERSION):
                for stmt in _MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute("UPDATE schema_version SET version = ?", (v + 1,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _open_connection(path: Path) -> sqlite3.Connection:
    _check_header(path)
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the lock
        # in SQLiteStore serializes use across the gRPC server's threads.
        conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open task store {path}: {e}") from None
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"task store {path}: WAL journal mode unavailable (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"cannot open task store {path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn


_TASK_COLS = ("task, site_id, round_no, state, attempts, max_attempts, lease_expires, created, deadline, "
              "failure")


def _decode(cls: Any, data: bytes, what: str) -> Any:
    try:
        return from_pb(decode(cls, data))
    except MalformedMessage:
        # Corruption or a foreign writer; name the kind of record only.
        raise StoreError(f"a stored {what} does not decode") from None


def _task_record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        task=_decode(pb.Task, row["task"], "task"), site_id=row["site_id"], round_no=row["round_no"],
        state=TaskState(row["state"]), attempts=row["attempts"], max_attempts=row["max_attempts"],
        lease_expires=row["lease_expires"], created=row["created"], deadline=row["deadline"],
        failure=row["failure"])


class SQLiteStore:
    """The coordinator's durable state in one SQLite file (WAL)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _open_connection(self._path)

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def _locked(self, op: str, write: bool) -> Iterator[sqlite3.Connection]:
        """Hold the lock; for writes, one IMMEDIATE transaction committed on success."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"store operation '{op}' on a closed store")
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
                if write:
                    conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one worth reporting
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"store operation '{op}' failed: {e}") from None
                raise

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ sites

    def upsert_site(self, site_id: str, software_version: str, catalog: Sequence[OperatorSpec],
                    size_bucket: SizeBucket, now: float) -> None:
        try:
            hello = Hello(site_id=site_id, software_version=software_version, catalog=tuple(catalog),
                          size_bucket=size_bucket)
        except ValidationError as e:
            where = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors()[:5])
            raise StoreError(f"invalid site record: {where}") from None
        with self._locked("upsert_site", write=True) as c:
            c.execute("INSERT INTO sites (site_id, hello, last_seen, tasks_done) VALUES (?, ?, ?, 0) "
                      "ON CONFLICT(site_id) DO UPDATE SET hello = excluded.hello, "
                      "last_seen = excluded.last_seen", (site_id, encode(to_pb(hello)), now))

    def touch_site(self, site_id: str, now: float, tasks_done: int | None = None) -> bool:
        with self._locked("touch_site", write=True) as c:
            cur = c.execute("UPDATE sites SET last_seen = ?, tasks_done = COALESCE(?, tasks_done) "
                            "WHERE site_id = ?", (now, tasks_done, site_id))
            return cur.rowcount == 1

    @staticmethod
    def _site(row: sqlite3.Row) -> SiteRecord:
        hello: Hello = _decode(pb.HelloRequest, row["hello"], "site")
        return SiteRecord(site_id=row["site_id"], software_version=hello.software_version,
                          catalog=hello.catalog, size_bucket=hello.size_bucket,
                          last_seen=row["last_seen"], tasks_done=row["tasks_done"])

    def get_site(self, site_id: str) -> SiteRecord | None:
        with self._locked("get_site", write=False) as c:
            row = c.execute("SELECT * FROM sites WHERE site_id = ?", (site_id,)).fetchone()
        return None if row is None else self._site(row)

    def list_sites(self) -> list[SiteRecord]:
        with self._locked("list_sites", write=False) as c:
            rows = c.execute("SELECT * FROM sites ORDER BY site_id").fetchall()
        return [self._site(r) for r in rows]

    # ------------------------------------------------------------ searches

    def create_search(self, search_id: str, config_json: str, now: float) -> bool:
        with self._locked("create_search", write=True) as c:
            cur = c.execute("INSERT OR IGNORE INTO searches (search_id, config_json, state, reason, created) "
                            "VALUES (?, ?, ?, '', ?)", (search_id, config_json, SearchState.RUNNING, now))
            return cur.rowcount == 1

    def get_search(self, search_id: str) -> SearchRecord | None:
        with self._locked("get_search", write=False) as c:
            row = c.execute("SELECT * FROM searches WHERE search_id = ?", (search_id,)).fetchone()
        if row is None:
            return None
        return SearchRecord(search_id=row["search_id"], config_json=row["config_json"],
                            state=SearchState(row["state"]), reason=row["reason"], created=row["created"])

    def set_search_state(self, search_id: str, state: SearchState, reason: str) -> None:
        with self._locked("set_search_state", write=True) as c:
            cur = c.execute("UPDATE searches SET state = ?, reason = ? WHERE search_id = ?",
                            (SearchState(state).value, reason, search_id))
            if cur.rowcount != 1:
                raise StoreError("set_search_state: unknown search id")

    def add_round(self, search_id: str, round_no: int, strategies: Sequence[Strategy],
                  proposal: RoundProposal | None = None) -> None:
        blobs = [encode(to_pb(s)) for s in strategies]
        record = None if proposal is None else proposal.model_dump_json()
        with self._locked("add_round", write=True) as c:
            if c.execute("SELECT 1 FROM searches WHERE search_id = ?", (search_id,)).fetchone() is None:
                raise StoreError("add_round: unknown search id")
            cur = c.execute("INSERT OR IGNORE INTO rounds (search_id, round_no, proposal) VALUES (?, ?, ?)",
                            (search_id, round_no, record))
            if cur.rowcount == 0:
                return  # already stored: a resumed search replays its rounds
            c.executemany("INSERT INTO round_strategies (search_id, round_no, idx, strategy) "
                          "VALUES (?, ?, ?, ?)", [(search_id, round_no, i, b) for i, b in enumerate(blobs)])

    def get_rounds(self, search_id: str) -> list[tuple[int, list[Strategy]]]:
        with self._locked("get_rounds", write=False) as c:
            nos = [r[0] for r in c.execute(
                "SELECT round_no FROM rounds WHERE search_id = ? ORDER BY round_no", (search_id,))]
            rows = c.execute("SELECT round_no, strategy FROM round_strategies WHERE search_id = ? "
                             "ORDER BY round_no, idx", (search_id,)).fetchall()
        by_round: dict[int, list[Strategy]] = {n: [] for n in nos}
        for r in rows:
            by_round.setdefault(r[0], []).append(_decode(pb.Strategy, r[1], "strategy"))
        return [(n, by_round[n]) for n in nos]

    def get_round_proposals(self, search_id: str) -> dict[int, RoundProposal]:
        with self._locked("get_round_proposals", write=False) as c:
            rows = c.execute("SELECT round_no, proposal FROM rounds WHERE search_id = ? AND proposal IS NOT NULL "
                             "ORDER BY round_no", (search_id,)).fetchall()
        out: dict[int, RoundProposal] = {}
        for no, text in rows:
            try:
                out[no] = RoundProposal.model_validate_json(text)
            except ValidationError:
                raise StoreError(f"the stored proposal record of round {no} does not decode") from None
        return out

    # ------------------------------------------------------------ tasks

    def enqueue(self, task: Task, site_id: str, round_no: int, now: float, max_attempts: int = 3) -> bool:
        if max_attempts < 1:
            raise StoreError(f"enqueue: max_attempts must be >= 1, got {max_attempts}")
        blob = encode(to_pb(task))
        with self._locked("enqueue", write=True) as c:
            seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks").fetchone()[0]
            cur = c.execute(
                "INSERT OR IGNORE INTO tasks (task_id, search_id, site_id, round_no, state, attempts, "
                "max_attempts, lease_expires, deadline, created, failure, task, result, result_at, seq) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, NULL, ?, ?, NULL, ?, NULL, NULL, ?)",
                (task.task_id, task.search_id, site_id, round_no, TaskState.PENDING, max_attempts,
                 now + task.deadline_s, now, blob, seq))
            return cur.rowcount == 1

    @staticmethod
    def _expire(c: sqlite3.Connection, now: float) -> int:
        # Deadline first: a task past its deadline fails for that reason even if its lease also ran out.
        n = c.execute("UPDATE tasks SET state = 'failed', failure = ?, lease_expires = NULL "
                      "WHERE state IN ('pending', 'leased') AND deadline <= ?",
                      (FAILURE_DEADLINE, now)).rowcount
        n += c.execute("UPDATE tasks SET state = 'failed', failure = ?, lease_expires = NULL "
                       "WHERE state = 'leased' AND lease_expires <= ? AND attempts >= max_attempts",
                       (FAILURE_LEASE_EXPIRED, now)).rowcount
        n += c.execute("UPDATE tasks SET state = 'pending', lease_expires = NULL "
                       "WHERE state = 'leased' AND lease_expires <= ?", (now,)).rowcount
        return n

    def expire_leases(self, now: float) -> int:
        with self._locked("expire_leases", write=True) as c:
            return self._expire(c, now)

    def lease_next(self, site_id: str, now: float, lease_s: float) -> Task | None:
        if not lease_s > 0:
            raise StoreError(f"lease_next: lease_s must be > 0, got {lease_s}")
        with self._locked("lease_next", write=True) as c:
            self._expire(c, now)
            row = c.execute("SELECT task_id, task, attempts FROM tasks "
                            "WHERE site_id = ? AND state = 'pending' ORDER BY created, seq LIMIT 1",
                            (site_id,)).fetchone()
            if row is None:
                return None
            attempts = row["attempts"] + 1
            c.execute("UPDATE tasks SET state = 'leased', attempts = ?, lease_expires = ? WHERE task_id = ?",
                      (attempts, now + lease_s, row["task_id"]))
            task: Task = _decode(pb.Task, row["task"], "task")
        return task.model_copy(update={"attempt": attempts})

    def record_result(self, report: ResultReport, now: float) -> tuple[bool, bool]:
        blob = encode(to_pb(report))
        with self._locked("record_result", write=True) as c:
            row = c.execute("SELECT site_id, result IS NOT NULL AS has_result FROM tasks WHERE task_id = ?",
                            (report.task_id,)).fetchone()
            if row is None or row["site_id"] != report.site_id:
                return False, False
            if row["has_result"]:
                return True, True
            # Any state, FAILED included: a late answer is still the site's final answer.
            c.execute("UPDATE tasks SET state = 'done', failure = NULL, lease_expires = NULL, result = ?, "
                      "result_at = ? WHERE task_id = ?", (blob, now, report.task_id))
            return True, False

    def get_result(self, task_id: str) -> ResultReport | None:
        with self._locked("get_result", write=False) as c:
            row = c.execute("SELECT result FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        out: ResultReport = _decode(pb.ResultReport, row[0], "result")
        return out

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._locked("get_task", write=False) as c:
            row = c.execute(f"SELECT {_TASK_COLS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _task_record(row)

    def tasks_for_search(self, search_id: str) -> list[tuple[TaskRecord, ResultReport | None]]:
        with self._locked("tasks_for_search", write=False) as c:
            rows = c.execute(f"SELECT {_TASK_COLS}, result FROM tasks WHERE search_id = ? "
                             "ORDER BY round_no, created, seq", (search_id,)).fetchall()
        return [(_task_record(r),
                 None if r["result"] is None else _decode(pb.ResultReport, r["result"], "result"))
                for r in rows]

    def pending_count(self, site_id: str | None = None) -> int:
        with self._locked("pending_count", write=False) as c:
            if site_id is None:
                row = c.execute("SELECT COUNT(*) FROM tasks WHERE state = 'pending'").fetchone()
            else:
                row = c.execute("SELECT COUNT(*) FROM tasks WHERE state = 'pending' AND site_id = ?",
                                (site_id,)).fetchone()
        return int(row[0])
