"""Signed, hash-chained audit log of every protocol message, and its verifier.

Each side appends every message it sends or receives (:meth:`AuditLog.record`) before acting on it;
the line is fsynced before ``record`` returns, so an acknowledged entry survives a crash. A signed head
file (``<log>.head``) names the last entry, so cutting entries off the end is detected. The format is
described in :mod:`protos.audit_format`.

:func:`verify` checks a whole log and names the first bad entry; :func:`cross_check` matches a site's
log against the coordinator's (the coordinator records a site's messages with ``peer`` = the site id,
which is the ``party`` of the site's genesis entry).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import Message

from protos.audit_format import (
    FORMAT_VERSION,
    GENESIS_PREV,
    AuditReading,
    Entry,
    EntryProblem,
    VerifyReport,
    canonical_json,
    check_signature,
    entry_hash,
    head_path,
    head_payload,
    key_fingerprint,
    load_signing_key,
    load_verify_key,
    parse_entry,
    public_key_b64,
    read_head,
    read_lines,
    read_log,
    verify,
)
from protos.errors import AuditError, AuditVerificationError
from protos.serde import encode, message_type
from protos.views import IDENT_PATTERN

__all__ = [
    "AuditLog",
    "AuditReading",
    "CrossCheckReport",
    "Entry",
    "Unmatched",
    "VerifyReport",
    "cross_check",
    "head_path",
    "key_fingerprint",
    "load_signing_key",
    "load_verify_key",
    "read_lines",
    "read_log",
    "verify",
]

Side = Literal["site", "coordinator"]
Direction = Literal["in", "out"]
_IDENT = re.compile(IDENT_PATTERN)


def _software_version() -> str:
    import protos

    version = re.sub(r"[^A-Za-z0-9_.:-]", "_", str(getattr(protos, "__version__", "0")))[:64]
    return version if _IDENT.match(version) else "0"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _tail(fd: int, size: int) -> tuple[int, bytes]:
    """(end offset of the last complete line, that line without its newline); (0, b"") if none."""
    block = 4096
    while True:
        start = max(0, size - block)
        chunk = os.pread(fd, size - start, start)
        nl = chunk.rfind(b"\n")
        if nl < 0 and start > 0:
            block *= 2
            continue
        if nl < 0:
            return 0, b""
        before = chunk.rfind(b"\n", 0, nl)
        if before < 0 and start > 0:
            block *= 2
            continue
        return start + nl + 1, chunk[before + 1:nl]


def _first_line(fd: int, end: int) -> bytes:
    block = 4096
    while True:
        chunk = os.pread(fd, min(block, end), 0)
        nl = chunk.find(b"\n")
        if nl >= 0:
            return chunk[:nl]
        block *= 2


class AuditLog:
    """An append-only, signed, hash-chained log of one party's protocol messages. Thread-safe."""

    def __init__(self, path: Path, key: Ed25519PrivateKey, fd: int, dir_fd: int) -> None:
        self.path = path
        self.head_path = head_path(path)
        self._key = key
        self._fd = fd
        self._dir_fd = dir_fd
        self._lock = threading.Lock()
        self._last_index = -1
        self._last_hash = GENESIS_PREV
        self._closed = False
        self._broken = False
        self._recent_out: dict[str, int] = {}  # digest -> entry index of recent sends, for undelivered markers

    @classmethod
    def open(cls, path: Path, signing_key: Ed25519PrivateKey, side: Side, party: str) -> AuditLog:
        """Create the log, or reopen it and continue its chain (after checking its ends)."""
        if side not in ("site", "coordinator"):
            raise AuditError("audit log side must be 'site' or 'coordinator'")
        if not _IDENT.match(party):
            raise AuditError("audit log party must be an identifier")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            raise AuditError(f"audit log {path} cannot be opened: {e.strerror}") from None
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)  # to fsync renames and the new file's entry
        except OSError as e:
            os.close(fd)
            raise AuditError(f"audit log folder {path.parent} cannot be opened: {e.strerror}") from None
        log = cls(path, signing_key, fd, dir_fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditError(f"audit log {path} is already open in another process") from None
            log._start(side, party)
        except BaseException:
            log._release()
            raise
        return log

    # ------------------------------------------------------------ reopening

    def _start(self, side: Side, party: str) -> None:
        try:
            size = os.fstat(self._fd).st_size
            end, last_line = _tail(self._fd, size)
            dropped = size - end
            if dropped:  # a partial line from a crash mid-write: never acknowledged, so cut it
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
        except OSError as e:
            raise AuditError(f"audit log {self.path} cannot be read: {e.strerror}") from None
        if end == 0:
            if self.head_path.exists():
                raise AuditVerificationError(
                    "entry 0: the log is empty but its signed head names an entry (truncation)", 0)
            self._append({"kind": "genesis", "format": FORMAT_VERSION, "side": side, "party": party,
                          "public_key": public_key_b64(self._key.public_key()),
                          "software_version": _software_version()})
        else:
            self._resume(side, party, _first_line(self._fd, end), last_line)
        if dropped:
            self._append({"kind": "recovered", "dropped_bytes": dropped})
        elif end:
            try:
                self._write_head()  # repairs a head left one entry behind by a crash
            except OSError as e:
                raise AuditError(f"audit head {self.head_path} cannot be written: {e.strerror}") from None

    def _resume(self, side: Side, party: str, first: bytes, last: bytes) -> None:
        def bad(index: int | None, why: str) -> AuditVerificationError:
            where = "last entry" if index is None else f"entry {index}"
            return AuditVerificationError(f"{where}: {why}; refusing to continue this log", index)

        try:
            genesis = parse_entry(first)
        except EntryProblem as p:
            raise bad(0, str(p)) from None
        if genesis.kind != "genesis" or genesis.index != 0:
            raise bad(0, "first entry is not a genesis entry")
        ours = public_key_b64(self._key.public_key())
        if base64.b64encode(genesis.public_key).decode("ascii") != ours:
            raise AuditError(f"audit log {self.path} was created with a different signing key")
        if (genesis.side, genesis.party) != (side, party):
            raise AuditError(f"audit log {self.path} belongs to {genesis.side} '{genesis.party}', "
                             f"not {side} '{party}'")
        pub = self._key.public_key()
        try:
            tail = parse_entry(last)
        except EntryProblem as p:
            raise bad(None, str(p)) from None
        for e in (genesis, tail):
            if not check_signature(pub, e.sig, bytes.fromhex(e.hash)):
                raise bad(e.index, "signature does not verify")
        try:
            head = read_head(self.head_path, pub)
        except EntryProblem as p:
            raise bad(tail.index, str(p)) from None
        if head is None:
            if tail.index != 0:  # only a crash right after the genesis leaves no head
                raise bad(tail.index, "the signed head file is missing (truncation cannot be ruled out)")
        elif head != (tail.index, tail.hash) and head != (tail.index - 1, tail.prev):
            raise bad(min(head[0], tail.index), "the log does not end where its signed head says")
        self._last_index, self._last_hash = tail.index, tail.hash

    # ------------------------------------------------------------ writing

    def record(self, direction: Direction, peer: str, msg: Message) -> str:
        """Append one message and return the SHA-256 (hex) of its canonical bytes, once durable."""
        if direction not in ("in", "out"):
            raise AuditError("audit direction must be 'in' or 'out'")
        if not _IDENT.match(peer):
            raise AuditError("audit peer must be an identifier")
        data = encode(msg)
        digest = hashlib.sha256(data).hexdigest()
        body = {"kind": "message", "direction": direction, "peer": peer, "type": message_type(msg),
                "sha256": digest, "bytes": base64.b64encode(data).decode("ascii")}
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            self._append(body)
            if direction == "out":
                if len(self._recent_out) >= 256:
                    self._recent_out.pop(next(iter(self._recent_out)))
                self._recent_out[digest] = self._last_index
        return digest

    def record_undelivered(self, digest: str, status: str) -> None:
        """Mark the most recent sent message with this digest as not delivered (its call failed with the
        gRPC status name ``status``), so that a cross-check does not count it as hidden by the peer."""
        if not re.fullmatch(r"[A-Z_]{1,32}", status):
            raise AuditError("undelivered status must be a gRPC status name")
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            ref = self._recent_out.get(digest)
            if ref is None:
                raise AuditError("no recent sent message with that digest")
            self._append({"kind": "undelivered", "ref": ref, "sha256": digest, "status": status})

    def _append(self, body: dict[str, Any]) -> None:
        if self._broken:
            raise AuditError(f"audit log {self.path} failed an earlier write; restart to recover it")
        body["index"] = self._last_index + 1
        body["prev"] = self._last_hash
        body["time_ms"] = time.time_ns() // 1_000_000
        h = entry_hash(body)
        body["hash"] = h
        body["sig"] = base64.b64encode(self._key.sign(bytes.fromhex(h))).decode("ascii")
        try:
            _write_all(self._fd, (canonical_json(body) + "\n").encode("ascii"))
            os.fsync(self._fd)
            self._last_index, self._last_hash = body["index"], h
            self._write_head()
        except OSError as e:
            self._broken = True  # a half-written line must not get entries appended after it
            raise AuditError(f"audit log {self.path} cannot be written: {e.strerror}") from None

    def _write_head(self) -> None:
        sig = self._key.sign(head_payload(self._last_index, self._last_hash))
        head = {"index": self._last_index, "hash": self._last_hash,
                "sig": base64.b64encode(sig).decode("ascii")}
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, (canonical_json(head) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        os.fsync(self._dir_fd)

    # ------------------------------------------------------------ closing

    @property
    def entries(self) -> int:
        return self._last_index + 1

    def _release(self) -> None:
        for fd in (self._fd, self._dir_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------- cross-check

@dataclass(frozen=True)
class Unmatched:
    """A message one log has and the other lacks (or has out of order)."""

    log: Side
    index: int
    direction: str
    msg_type: str


@dataclass(frozen=True)
class CrossCheckReport:
    site: VerifyReport
    coordinator: VerifyReport
    site_to_coordinator: int  # site 'out' entries matched by coordinator 'in' entries
    coordinator_to_site: int  # coordinator 'out' entries to this site matched by site 'in' entries
    unmatched: tuple[Unmatched, ...]
    undelivered: int = 0   # site sends whose call failed (marked in the site log), not received: explained
    lost_replies: int = 0  # coordinator replies to such failed calls, never received by the site: explained

    @property
    def ok(self) -> bool:
        return not self.unmatched


def _myers(a: list[str], b: list[str], max_d: int) -> list[tuple[int, int]] | None:
    """Pairs of a longest order-preserving matching (Myers' diff); None past ``max_d`` differences,
    where its cost (about d squared) stops being worth it."""
    n, m = len(a), len(b)
    v: dict[int, int] = {1: 0}
    trace: list[dict[int, int]] = []
    for d in range(min(n + m, max_d) + 1):
        trace.append(dict(v))
        for k in range(-d, d + 1, 2):
            x = v[k + 1] if k == -d or (k != d and v[k - 1] < v[k + 1]) else v[k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            v[k] = x
            if x >= n and y >= m:
                return _backtrack(trace, n, m)
    return None


def _backtrack(trace: list[dict[int, int]], x: int, y: int) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for d in range(len(trace) - 1, -1, -1):
        v, k = trace[d], x - y
        prev_k = k + 1 if k == -d or (k != d and v[k - 1] < v[k + 1]) else k - 1
        prev_x = v[prev_k]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            pairs.append((x, y))
        x, y = prev_x, prev_y
    return pairs[::-1]


def _greedy(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Order-preserving matching that takes the next equal item; for logs too different for Myers."""
    where: dict[str, list[int]] = {}
    for j, item in enumerate(b):
        where.setdefault(item, []).append(j)
    pairs, j, seen = [], 0, dict.fromkeys(where, 0)
    for i, item in enumerate(a):
        spots = where.get(item, [])
        while seen.get(item, 0) < len(spots) and spots[seen[item]] < j:
            seen[item] += 1
        if seen.get(item, 0) < len(spots):
            j = spots[seen[item]] + 1
            seen[item] += 1
            pairs.append((i, j - 1))
    return pairs


def _match(a: list[Entry], b: list[Entry], a_side: Side, b_side: Side) -> tuple[int, list[Unmatched]]:
    # The type is part of the key: different empty messages all serialize to b"".
    ka = [f"{e.msg_type}:{e.sha256}" for e in a]
    kb = [f"{e.msg_type}:{e.sha256}" for e in b]
    pairs = _myers(ka, kb, max_d=1000)
    if pairs is None:
        pairs = _greedy(ka, kb)
    got_a, got_b = {i for i, _ in pairs}, {j for _, j in pairs}
    missing = [Unmatched(a_side, e.index, e.direction, e.msg_type)
               for i, e in enumerate(a) if i not in got_a]
    missing += [Unmatched(b_side, e.index, e.direction, e.msg_type)
                for j, e in enumerate(b) if j not in got_b]
    return len(pairs), missing


def _verified(path: Path, key: Ed25519PublicKey | None, side: Side) -> AuditReading:
    reading = read_log(path, key)
    if reading.error is not None:
        err = reading.error
        raise AuditVerificationError(f"{side} log: {err}", err.entry_index)
    assert reading.report is not None
    if reading.report.side != side:
        raise AuditError(f"{path} is a {reading.report.side} log, not a {side} log")
    return reading


def cross_check(site_log: Path, coord_log: Path, *, site_key: Ed25519PublicKey | None = None,
                coordinator_key: Ed25519PublicKey | None = None) -> CrossCheckReport:
    """Match a site's log against the coordinator's, 1:1 and in order, by message type and SHA-256.

    Both logs are verified first (AuditVerificationError, prefixed with which log). The coordinator's
    entries are those whose peer is the site's party; the site talks to one coordinator only.
    """
    site = _verified(site_log, site_key, "site")
    coord = _verified(coord_log, coordinator_key, "coordinator")
    assert site.report is not None and coord.report is not None
    party = site.report.party

    def msgs(r: AuditReading, direction: str, peer: str | None = None) -> list[Entry]:
        return [e for e in r.entries if e.kind == "message" and e.direction == direction
                and (peer is None or e.peer == peer)]

    up, up_missing = _match(msgs(site, "out"), msgs(coord, "in", party), "site", "coordinator")
    down, down_missing = _match(msgs(coord, "out", party), msgs(site, "in"), "coordinator", "site")
    # A send the site itself marked undelivered explains one absence at the coordinator of an identical
    # message (same type and bytes: retries of one message are interchangeable, so this counts per message,
    # not per position). A marked call that did reach the coordinator (a deadline, a cut link, a crash
    # before the reply) explains at most one coordinator reply the site never got.
    def key(e: Entry) -> str:
        return f"{e.msg_type}:{e.sha256}"

    markers = [e for e in site.entries if e.kind == "undelivered"]
    budget = Counter(key(site.entries[m.ref]) for m in markers)
    undelivered = []
    for u in up_missing:
        k = key(site.entries[u.index]) if u.log == "site" else ""
        if budget[k] > 0:
            budget[k] -= 1
            undelivered.append(u)
    reached = len(markers) - len(undelivered)
    lost = [u for u in down_missing if u.log == "coordinator"][:reached]
    explained = {id(u) for u in undelivered + lost}
    unmatched = sorted((u for u in up_missing + down_missing if id(u) not in explained),
                       key=lambda u: (u.log != "site", u.index))
    return CrossCheckReport(site.report, coord.report, up, down, tuple(unmatched), len(undelivered), len(lost))
