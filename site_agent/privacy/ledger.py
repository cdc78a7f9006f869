"""The site's privacy ledger: one SQLite file (WAL, synchronous=FULL) that says what each task spent.

Composition. Every task that may release something is charged ``epsilon`` (and ``delta``): its DP-SGD
run and its noisy score release, added together. Tasks in one scope add up the same way. This is basic
sequential composition: k mechanisms that are (ε_i, δ_i)-DP are together (Σ ε_i, Σ δ_i)-DP. It is loose
(advanced composition or an RDP/PRV accountant over all tasks would give a smaller total) but it holds
for any mix of mechanisms without further assumptions, so what the ledger reports is an honest upper
bound on what the site has given away in the scope. Releases with mechanism ``none`` carry no guarantee
and are charged 0: the ledger does not pretend otherwise.

Scopes. ``budget_scope: search``: each search id has ``total_epsilon``. ``budget_scope: window``: every
task reserved in the last ``window_days`` counts against one ``total_epsilon``, whatever its search; older
spending expires. Pass the task's search id as ``scope_id`` in both cases (it is recorded either way).

Order of calls for one task (the agent):

1. ``reserve(task_id, search_id, planned_epsilon(...))`` right after the policy check and before any
   work; a refusal (``decision.ok`` false) is answered ``REJECTED_BUDGET`` and nothing runs.
2. run the strategy; ``check_cohort(len(processed rows), settings.min_cohort)``; on ``False`` call
   ``commit(task_id, 0.0)`` and answer ``REJECTED_COHORT``: nothing was released, nothing is debited.
3. evaluate; ``commit(task_id, actual_epsilon)`` (DP-SGD's accountant figure + release epsilon), then
   ``release(task_id, raw_score)``; put ``state.epsilon`` / ``state.remaining`` into the result.
   A task that fails before anything is released is committed at 0.

Every write is fsynced before the call returns, so a result is only sent after its debit is on disk.
Idempotency: the task id is the key. A replayed task finds its reservation (``decision.replay``) and is
not charged again; ``commit`` keeps the first figure; ``release`` keeps the first released value. A
reservation that is never committed (the site died mid-task) keeps counting in full, the safe side.
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from protos.views import TaskStatus
from site_agent.privacy.release import release_rng, release_score
from site_agent.privacy.settings import PrivacyError, PrivacySettings

__all__ = ["LedgerDecision", "LedgerState", "PrivacyLedger"]

log = logging.getLogger("autodp.site.privacy")
_TOL = 1e-9  # float sums of many small epsilons must not refuse a task that exactly fits
_DAY_S = 86_400.0
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (task_id TEXT PRIMARY KEY, scope_id TEXT NOT NULL, created REAL NOT NULL,"
    " reserved REAL NOT NULL, reserved_delta REAL NOT NULL, spent REAL, spent_delta REAL, committed_at REAL,"
    " released REAL)",
    "CREATE INDEX IF NOT EXISTS entries_scope ON entries (scope_id)",
    "CREATE INDEX IF NOT EXISTS entries_created ON entries (created)",
)


@dataclass(frozen=True)
class LedgerDecision:
    """The answer to a reservation. ``spent``/``remaining`` are the scope's, this task included when ok."""

    ok: bool
    spent: float
    remaining: float
    epsilon: float = 0.0  # reserved for this task (0 when refused)
    reason: str | None = None
    replay: bool = False  # the task id was reserved before: nothing new was charged

    @property
    def status(self) -> TaskStatus | None:
        return None if self.ok else TaskStatus.REJECTED_BUDGET


@dataclass(frozen=True)
class LedgerState:
    """One task's entry and its scope's totals. ``epsilon`` is what the task is charged: the committed
    figure, or the reservation while uncommitted; it and ``remaining`` go into the ResultReport."""

    task_id: str
    scope_id: str
    reserved: float
    epsilon: float
    delta: float
    committed: bool
    released: float | None
    spent: float
    remaining: float


def _finite_nonneg(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise PrivacyError(f"{what} must be a finite number >= 0")
    return float(value)


class PrivacyLedger:
    def __init__(self, path: Path, settings: PrivacySettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit returns only once it is fsynced
            for statement in _SCHEMA:
                self._db.execute(statement)
            # The release-noise secret: never leaves the site, kept for replays after a restart.
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)",
                             (secrets.token_bytes(32),))
            self._secret = bytes(self._db.execute("SELECT value FROM meta WHERE key='secret'").fetchone()[0])
        except (sqlite3.Error, OSError) as e:
            raise PrivacyError(f"privacy ledger {path.name}: cannot open ({type(e).__name__})") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise PrivacyError(f"privacy ledger: write failed ({type(e).__name__})") from None

    def _totals(self, db: sqlite3.Connection, scope_id: str, now: float) -> tuple[float, float]:
        charge = "COALESCE(SUM(COALESCE(spent, reserved)), 0), COALESCE(SUM(COALESCE(spent_delta, reserved_delta)), 0)"
        if self.settings.budget_scope == "window":
            since = now - self.settings.window_days * _DAY_S
            row = db.execute(f"SELECT {charge} FROM entries WHERE created > ?", (since,)).fetchone()
        else:
            row = db.execute(f"SELECT {charge} FROM entries WHERE scope_id = ?", (scope_id,)).fetchone()
        return float(row[0]), float(row[1])

    def _left(self, spent: float) -> float:
        return max(0.0, self.settings.total_epsilon - spent)

    def reserve(self, task_id: str, scope_id: str, epsilon: float, now: float | None = None,
                delta: float = 0.0) -> LedgerDecision:
        """Hold ``epsilon`` (the most the task may spend) before the task does any work."""
        epsilon, delta = _finite_nonneg(epsilon, "epsilon"), _finite_nonneg(delta, "delta")
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT scope_id, COALESCE(spent, reserved) FROM entries WHERE task_id=?",
                             (task_id,)).fetchone()
            if row is not None:
                spent, _ = self._totals(db, row[0], now)
                return LedgerDecision(True, spent, self._left(spent), float(row[1]), replay=True)
            spent, _ = self._totals(db, scope_id, now)
            if spent + epsilon > self.settings.total_epsilon + _TOL:
                left = self._left(spent)
                why = (f"privacy budget: task needs epsilon {epsilon:.4g}, {left:.4g} of "
                       f"{self.settings.total_epsilon:.4g} left in this {self.settings.budget_scope}")
                log.warning("task %s refused: %s", task_id, why)
                return LedgerDecision(False, spent, left, 0.0, reason=why)
            db.execute("INSERT INTO entries (task_id, scope_id, created, reserved, reserved_delta)"
                       " VALUES (?, ?, ?, ?, ?)", (task_id, scope_id, now, epsilon, delta))
        spent += epsilon
        return LedgerDecision(True, spent, self._left(spent), epsilon)

    def commit(self, task_id: str, epsilon_spent: float, delta_spent: float | None = None,
               now: float | None = None) -> LedgerState:
        """Record what the task actually spent (0 when nothing was released). The first commit wins."""
        epsilon_spent = _finite_nonneg(epsilon_spent, "epsilon_spent")
        with self._write() as db:
            row = db.execute("SELECT reserved, reserved_delta, spent FROM entries WHERE task_id=?",
                             (task_id,)).fetchone()
            if row is None:
                raise PrivacyError(f"task {task_id} was never reserved: reserve before commit")
            if row[2] is None:
                if epsilon_spent > row[0] + _TOL:
                    # The truth is recorded anyway: a ledger that under-reports is worse than a refusal.
                    log.warning("task %s spent epsilon %.4g, more than the %.4g it reserved",
                                task_id, epsilon_spent, row[0])
                d = row[1] if delta_spent is None else _finite_nonneg(delta_spent, "delta_spent")
                db.execute("UPDATE entries SET spent=?, spent_delta=?, committed_at=? WHERE task_id=?",
                           (epsilon_spent, d, time.time(), task_id))
        state = self.state(task_id, now)
        assert state is not None
        return state

    def release(self, task_id: str, raw: float) -> float:
        """Clip, noise and quantize ``raw`` for a committed task, store it (fsync) and return it. A task
        released before gets its stored value back: the noise is drawn once per task id."""
        with self._write() as db:
            row = db.execute("SELECT spent, released FROM entries WHERE task_id=?", (task_id,)).fetchone()
            if row is None:
                raise PrivacyError(f"task {task_id} was never reserved: nothing may be released")
            if row[1] is not None:
                return float(row[1])
            if row[0] is None:
                raise PrivacyError(f"task {task_id} is not debited yet: commit before release")
            value = release_score(raw, self.settings, self.rng_for(task_id))
            db.execute("UPDATE entries SET released=? WHERE task_id=?", (value, task_id))
        return value

    def release_of(self, task_id: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT released FROM entries WHERE task_id=?", (task_id,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def state(self, task_id: str, now: float | None = None) -> LedgerState | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "SELECT scope_id, reserved, COALESCE(spent, reserved), COALESCE(spent_delta, reserved_delta),"
                " spent IS NOT NULL, released FROM entries WHERE task_id=?", (task_id,)).fetchone()
            if row is None:
                return None
            spent, _ = self._totals(self._db, row[0], now)
        return LedgerState(task_id, row[0], float(row[1]), float(row[2]), float(row[3]), bool(row[4]),
                           None if row[5] is None else float(row[5]), spent, self._left(spent))

    def spent(self, scope_id: str, now: float | None = None) -> float:
        with self._lock:
            return self._totals(self._db, scope_id, time.time() if now is None else now)[0]

    def delta_spent(self, scope_id: str, now: float | None = None) -> float:
        with self._lock:
            return self._totals(self._db, scope_id, time.time() if now is None else now)[1]

    def remaining(self, scope_id: str, now: float | None = None) -> float:
        return self._left(self.spent(scope_id, now))

    def rng_for(self, task_id: str) -> np.random.Generator:
        """The task's noise generator, seeded from this site's secret and the task id."""
        return release_rng(task_id, self._secret)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
