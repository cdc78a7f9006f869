"""Cache-and-Reuse (CRM): a content-addressed, size-bounded store of intermediate datasets.

Layout under ``root``::

    index.sqlite3        one row per entry: key, steps, rows, bytes, SHA-256 of the file, the recorded
                         StepStats of the prefix, created / last-access times (SQLite, WAL)
    entries/<key>.batch  the batch after the prefix (Arrow IPC, or gzipped JSON Lines; see ``codec``)

Crash safety: an entry is written to a temp file in ``entries/``, fsync'ed, and only then, inside one
``BEGIN IMMEDIATE`` index transaction, renamed into place (``os.replace``) and indexed. A reader sees an
entry only through its index row, so a crash before the commit leaves at most an invisible file, which
the next open sweeps away. Every read checks the file against the SHA-256 in the index; a missing or
corrupt file is a miss and is removed. SQLite's write lock serialises writers across processes, so one
site agent may use the store from several threads or worker processes.

Budget: when the stored bytes exceed ``budget_bytes`` after a put, least-recently-used entries (by last
hit or put) are evicted; an entry larger than the whole budget is not stored.

Cost: a put (encode, fsync of the file and of ``entries/``, one index transaction) takes about 8 ms at the
median and 12-16 ms at the tail for a 100-600 row batch of short QA text on our development VM (virtio disk; 2 ms
without fsync). Storing a prefix whose steps took less than that to compute makes the cache slower than
no cache, so the executor (``site_agent.pipeline.execute``) stores a prefix only when the operator time
it would save reaches ``min_store_seconds``; ``put`` itself stores whatever it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from site_agent.cache.codec import CorruptEntry, decode_batch, encode_batch
from site_agent.cache.keys import CacheBase, StepKey, prefix_key
from site_agent.errors import SiteError
from site_agent.operators.base import Batch, StepStats

__all__ = ["DEFAULT_MIN_STORE_SECONDS", "CacheError", "CacheHit", "CacheStats", "PrefixCache"]

log = logging.getLogger(__name__)

_SUFFIX = ".batch"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0  # a temp file this old belongs to a writer that died (writes take milliseconds)
# A put costs ~8 ms (median) to ~16 ms (tail) with fsync for a few hundred short QA rows; a later hit adds a
# read, a hash and a decode (~1-2 ms). Only a prefix saving a few times that repays its write even when it is
# reused once; rule-based steps (microseconds to a few ms) stay below it, model-bound steps (seconds) are far
# above it.
DEFAULT_MIN_STORE_SECONDS = 0.05
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, n_steps INTEGER NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, stats TEXT NOT NULL, created_ns INTEGER NOT NULL, last_access_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access_ns);
"""


class CacheError(SiteError):
    """The prefix cache cannot be opened or written (the task itself can still run without it)."""


@dataclass(frozen=True)
class CacheHit:
    """The longest cached prefix: how many steps it covers, their result and their recorded stats."""

    n_steps: int
    batch: Batch
    stats: tuple[StepStats, ...]

    @property
    def seconds_saved(self) -> float:
        return sum(s.seconds for s in self.stats)


@dataclass(frozen=True)
class CacheStats:
    """Counters of this PrefixCache object (hits..corrupt) and the store's current size (entries, bytes)."""

    hits: int
    misses: int
    steps_reused: int
    seconds_saved: float
    bytes_written: int
    bytes_read: int
    evictions: int
    corrupt: int
    entries: int
    bytes_stored: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PrefixCache:
    """The store. ``min_store_seconds`` is the store rule the executor applies (the store does not): a prefix
    is written only when the operator seconds since the longest prefix already stored or reused reach it,
    because with that shorter prefix stored the alternative to writing this one costs just those seconds
    (a hit on the shorter prefix plus the recomputation). 0 stores every prefix."""

    def __init__(self, root: Path, budget_bytes: int, *, durable: bool = True,
                 min_store_seconds: float = DEFAULT_MIN_STORE_SECONDS) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise CacheError("prefix cache budget must be a non-negative number of bytes")
        if (isinstance(min_store_seconds, bool) or not isinstance(min_store_seconds, (int, float))
                or not math.isfinite(min_store_seconds) or min_store_seconds < 0):
            raise CacheError("prefix cache min_store_seconds must be a finite number of seconds >= 0")
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        self.min_store_seconds = float(min_store_seconds)
        self._durable = durable  # False skips fsync: for benchmarks and throw-away caches only
        self._dir = self.root / "entries"
        self._lock = threading.RLock()
        self._last_ns = 0
        self._counts = {"hits": 0, "misses": 0, "steps_reused": 0, "bytes_written": 0, "bytes_read": 0,
                        "evictions": 0, "corrupt": 0}
        self._saved = 0.0
        try:
            # Entries hold the site's rows: readable by the agent's user only.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)
            self._db = self._open_index()
            self._sweep()
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"prefix cache cannot be opened: {type(e).__name__}") from None

    # -- plumbing -------------------------------------------------------------------------------------

    def _open_index(self) -> sqlite3.Connection:
        path = self.root / "index.sqlite3"
        for attempt in (1, 2):
            db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                return db
            except sqlite3.DatabaseError:
                db.close()
                if attempt == 2:
                    raise
                # A damaged index is only a cache: start a fresh one; the sweep drops the orphaned files.
                log.warning("prefix cache index unreadable: starting an empty one")
                for suffix in ("", "-wal", "-shm"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One index transaction holding SQLite's write lock (across processes) until it ends."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now_ns(self) -> int:
        # Strictly increasing within the process, so LRU order never depends on clock resolution.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _file(self, key: str) -> Path:
        return self._dir / (key + _SUFFIX)

    def _sweep(self) -> None:
        """Drop files no index row points to (a crash between rename and commit), stale temp files,
        and rows whose file is gone."""
        with self._write() as db:
            known = {k for (k,) in db.execute("SELECT key FROM entries")}
            on_disk: set[str] = set()
            for f in self._dir.iterdir():
                if f.name.startswith(_TMP_PREFIX):
                    try:
                        if time.time() - f.stat().st_mtime > _STALE_TMP_S:
                            f.unlink(missing_ok=True)
                    except FileNotFoundError:
                        pass  # its writer finished or cleaned up meanwhile
                elif f.name.endswith(_SUFFIX):
                    key = f.name[: -len(_SUFFIX)]
                    if key in known:
                        on_disk.add(key)
                    else:
                        f.unlink(missing_ok=True)
            for key in known - on_disk:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))

    def _drop(self, key: str, sha: str) -> None:
        """Remove an entry found missing or corrupt, unless a writer replaced it meanwhile."""
        with self._write() as db:
            row = db.execute("SELECT sha256 FROM entries WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] == sha:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._file(key).unlink(missing_ok=True)

    # -- public API -----------------------------------------------------------------------------------

    def lookup(self, base: CacheBase, steps: Sequence[StepKey]) -> CacheHit | None:
        """The longest cached prefix of ``steps`` (longest first), or None. Counts a hit or a miss."""
        if not steps:
            return None
        keys = {prefix_key(base, steps[:k]): k for k in range(len(steps), 0, -1)}
        try:
            with self._lock:
                marks = ",".join("?" * len(keys))
                rows = {r[0]: r[1:] for r in self._db.execute(
                    f"SELECT key, n_steps, sha256, stats FROM entries WHERE key IN ({marks})", list(keys))}
            for key, k in keys.items():  # dicts keep insertion order: longest prefix first
                if key not in rows:
                    continue
                hit = self._read(key, k, *rows[key])
                if hit is not None:
                    return hit
        except (sqlite3.Error, OSError) as e:
            log.warning("prefix cache lookup failed (%s): treated as a miss", type(e).__name__)
        with self._lock:
            self._counts["misses"] += 1
        return None

    def _read(self, key: str, k: int, n_steps: int, sha: str, stats_json: str) -> CacheHit | None:
        try:
            data = self._file(key).read_bytes()
        except FileNotFoundError:
            self._drop(key, sha)  # evicted by another process between our query and read
            return None
        try:
            if hashlib.sha256(data).hexdigest() != sha or n_steps != k:
                raise CorruptEntry("cache entry does not match its index row")
            batch = decode_batch(data)
            stats = tuple(StepStats(**s) for s in json.loads(stats_json))
            if len(stats) != k:
                raise CorruptEntry("cache entry has the wrong number of step stats")
        except (CorruptEntry, ValueError, TypeError):
            log.warning("prefix cache entry corrupt: removed, treated as a miss")
            with self._lock:
                self._counts["corrupt"] += 1
            self._drop(key, sha)
            return None
        with self._lock:
            self._db.execute("UPDATE entries SET last_access_ns = ? WHERE key = ?", (self._now_ns(), key))
            self._counts["hits"] += 1
            self._counts["steps_reused"] += k
            self._counts["bytes_read"] += len(data)
            hit = CacheHit(n_steps=k, batch=batch, stats=stats)
            self._saved += hit.seconds_saved
        return hit

    def lookup_longest(self, base: CacheBase, steps: Sequence[StepKey]) -> tuple[int, Batch | None]:
        """``(n_steps, batch)`` of the longest cached prefix of ``steps``; ``(0, None)`` on a miss."""
        hit = self.lookup(base, steps)
        return (hit.n_steps, hit.batch) if hit else (0, None)

    def put(self, base: CacheBase, steps: Sequence[StepKey], batch: Batch, stats: Sequence[StepStats]) -> bool:
        """Store ``batch`` as the result of ``steps``, with one recorded StepStats per step (their
        ``seconds`` are what a later hit saves). False when the entry alone exceeds the budget."""
        if not steps or len(stats) != len(steps):
            raise CacheError("a cache entry needs at least one step and one StepStats per step")
        key = prefix_key(base, steps)
        data = encode_batch(batch)
        if len(data) > self.budget_bytes:
            return False
        rows = len(next(iter(batch.values()))) if batch else 0
        stats_json = json.dumps([asdict(s) for s in stats])
        final = self._file(key)
        tmp = self._dir / f"{_TMP_PREFIX}{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                if self._durable:
                    os.fsync(f.fileno())
            with self._write() as db:
                os.replace(tmp, final)
                if self._durable:
                    _fsync_dir(self._dir)
                now = self._now_ns()
                db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (key, len(steps), rows, len(data), hashlib.sha256(data).hexdigest(), stats_json,
                            now, now))
                self._evict(db, keep=key)
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"prefix cache write failed: {type(e).__name__}") from None
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._counts["bytes_written"] += len(data)
        return True

    def _evict(self, db: sqlite3.Connection, keep: str) -> None:
        (total,) = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()
        if total <= self.budget_bytes:
            return
        victims = db.execute("SELECT key, bytes FROM entries WHERE key != ? ORDER BY last_access_ns, created_ns",
                             (keep,)).fetchall()
        for key, size in victims:
            if total <= self.budget_bytes:
                break
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self._file(key).unlink(missing_ok=True)
            total -= size
            self._counts["evictions"] += 1

    def contains(self, base: CacheBase, steps: Sequence[StepKey]) -> bool:
        """Whether exactly this prefix has an index entry (no read, no counters touched)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM entries WHERE key = ?",
                                    (prefix_key(base, steps),)).fetchone() is not None

    def stats(self) -> CacheStats:
        with self._lock:
            entries, stored = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries").fetchone()
            return CacheStats(seconds_saved=self._saved, entries=entries, bytes_stored=stored, **self._counts)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrefixCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
