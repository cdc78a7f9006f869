"""The site's own record of every task it answered: the outbox and the idempotency table.

A result is stored (fsynced) before it is sent; a task seen again is answered from here without running
anything; results not yet acknowledged are resent after a reconnect or a restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from protos import federation_pb2 as pb
from protos.serde import decode, encode, from_pb, to_pb
from protos.views import ResultReport

__all__ = ["ResultStore"]


class ResultStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (task_id TEXT PRIMARY KEY, report BLOB NOT NULL,"
                             " created REAL NOT NULL, acked INTEGER NOT NULL DEFAULT 0)")

    def get(self, task_id: str) -> ResultReport | None:
        with self._lock:
            row = self._db.execute("SELECT report FROM results WHERE task_id=?", (task_id,)).fetchone()
        if row is None:
            return None
        report: ResultReport = from_pb(decode(pb.ResultReport, row[0]))
        return report

    def put(self, report: ResultReport) -> ResultReport:
        """Store the first result for a task; return the stored one (a repeat never overwrites)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO results (task_id, report, created) VALUES (?, ?, ?)",
                             (report.task_id, encode(to_pb(report)), time.time()))
        stored = self.get(report.task_id)
        assert stored is not None
        return stored

    def mark_acked(self, task_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE results SET acked=1 WHERE task_id=?", (task_id,))

    def resend(self, task_id: str) -> None:
        """Put an answered task's result back in the outbox: the coordinator asked for that task again."""
        with self._lock:
            self._db.execute("UPDATE results SET acked=0 WHERE task_id=?", (task_id,))

    def unacked(self) -> list[ResultReport]:
        with self._lock:
            rows = self._db.execute("SELECT report FROM results WHERE acked=0 ORDER BY created").fetchall()
        return [from_pb(decode(pb.ResultReport, r[0])) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
