"""Tamper evidence at scale (issue #7, item 7): a 10,000-entry site audit log of real protocol messages.

Coverage, exactly (N = 10,000 entries; seeded, so every run checks the same cases):

- single-byte edits, exhaustively: every byte position (its newline included) of entries 0, 1, N/2, N-3, N-2
  and N-1 (the one the signed head names), each changed three ways (bit 0 flipped, bit 5 flipped, a random
  other value); and every byte of the signed head file, changed the same three ways; every value of the last
  three characters of the signature in entries 0, N/2 and N-1 and in the head (signatures are not covered by
  the entry hash: their encoding must be canonical), and of the head's final newline;
- single-byte edits, one per entry: a random position and a random new value in every one of the N entries;
- deletion of one entry, a swap of two adjacent entries, a move of one entry to an earlier place, a duplicated
  entry, a truncation at an entry boundary and a truncation inside an entry (after 1 byte, before the newline
  and at a random offset): each at 200 random positions plus the first and the last possible one;
- the site's log cross-matches the coordinator's (about N entries too, with another site's traffic mixed in).

Every case must be refused, and the error must name the entry where the log was changed (a damaged head file
names no entry: the error must be about the head).

How N checks stay affordable: verification is sequential and each entry's check depends only on its own
line, the hash of the entry before it and the genesis key. A changed log whose first changed line is entry
``i`` therefore reads exactly like the original up to ``i - 1``, and ``protos.audit.read_lines`` resumes the
very same reader there (``verified=`` the reading of the original's first ``i`` entries) on the changed bytes,
split into lines exactly as a file read would split them. A few cases are also written to disk and run
through the plain ``verify`` to show both readers agree. The speed of a full verification is measured by
``bench/bench_audit.py`` (house rule: no timed asserts).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import Message

from protos.audit import AuditLog, AuditReading, cross_check, head_path, read_lines, read_log, verify
from protos.errors import AuditError, AuditVerificationError
from protos.serde import to_pb
from protos.views import Heartbeat, HeartbeatReply, HelloReply, Poll, PollReply, ResultAck
from tests.unit.protos.test_audit import hello, result, task_reply

pytestmark = pytest.mark.slow  # builds two 10,000-entry logs and verifies them three times (~30 s on 2 cores)

N = 10_000
SITE, OTHER, COORD = "site-a", "site-b", "coordinator"
SAMPLES = 200


@dataclass(frozen=True)
class BigLogs:
    site: Path
    coord: Path
    site_key: Ed25519PublicKey
    coord_key: Ed25519PublicKey
    lines: tuple[bytes, ...]  # the site log's lines, each with its newline
    reading: AuditReading  # the site log, verified
    messages_before: tuple[int, ...]  # message entries among the first i entries, for each i
    exchanges: int  # site requests the coordinator received
    replies: int  # coordinator replies the site received
    undelivered: int  # site requests whose call failed before reaching the coordinator


def _exchange(k: int) -> tuple[Message, Message]:
    if k == 0:
        return hello(), to_pb(HelloReply(accepted=True))
    if k % 50 == 0:
        return to_pb(Heartbeat(site_id=SITE, tasks_done=k // 3)), to_pb(HeartbeatReply(known=True))
    if k % 3 == 1:
        return to_pb(Poll(site_id=SITE, wait_ms=1000)), task_reply(k)
    if k % 3 == 2:
        return result(k - 1), to_pb(ResultAck(accepted=True))
    return to_pb(Poll(site_id=SITE, wait_ms=1000)), to_pb(PollReply())


def write_logs(folder: Path) -> BigLogs:
    """A site log of exactly N entries and the coordinator's log of the same conversation.

    Durability is not under test here: while the bulk is written, fsync and the per-append rewrite of the
    signed head are skipped (the bytes appended are the same); the last append of each log runs the real
    code, which fsyncs and signs the head."""
    sk, ck = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    site_path, coord_path = folder / "site" / "audit.log", folder / "coord" / "audit.log"
    exchanges = replies = undelivered = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        mp.setattr(AuditLog, "_write_head", lambda self: None)
        site = AuditLog.open(site_path, sk, "site", SITE)
        coord = AuditLog.open(coord_path, ck, "coordinator", COORD)
        k = 0
        while site.entries < N - 1:  # each step adds two site entries; the genesis makes it odd
            request, reply = _exchange(k)
            digest = site.record("out", COORD, request)
            if k % 997 == 996:  # the coordinator was away: the call failed, the site marks it
                site.record_undelivered(digest, "UNAVAILABLE")
                undelivered += 1
            else:
                coord.record("in", SITE, request)
                if k % 10 == 5:  # another site talks to the coordinator meanwhile
                    coord.record("in", OTHER, to_pb(Poll(site_id=OTHER)))
                    coord.record("out", OTHER, to_pb(PollReply()))
                coord.record("out", SITE, reply)
                site.record("in", COORD, reply)
                exchanges, replies = exchanges + 1, replies + 1
            k += 1
    # the last request reached the coordinator, which logged it and was stopped before replying
    last = to_pb(Heartbeat(site_id=SITE, tasks_done=k))
    site.record("out", COORD, last)
    coord.record("in", SITE, last)
    exchanges += 1
    site.close()
    coord.close()
    lines = tuple(site_path.read_bytes().splitlines(keepends=True))  # ASCII lines: only "\n" occurs
    reading = read_log(site_path, sk.public_key())
    assert reading.error is None and len(lines) == len(reading.entries) == N
    before = tuple(itertools.accumulate((e.kind == "message" for e in reading.entries), initial=0))
    return BigLogs(site_path, coord_path, sk.public_key(), ck.public_key(), lines, reading, before,
                   exchanges, replies, undelivered)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> BigLogs:
    return write_logs(tmp_path_factory.mktemp("audit-10k"))


# ---------------------------------------------------------------- the resumed reader

def file_lines(data: bytes) -> list[bytes]:
    """``data`` split the way iterating over a binary file splits it: after each b"\\n" only."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def prefix(logs: BigLogs, i: int) -> AuditReading | None:
    """The verified reading of the original log cut to its first ``i`` entries (None for none)."""
    if i == 0:
        return None
    report = logs.reading.report
    assert report is not None
    entries = logs.reading.entries[:i]
    return AuditReading(entries, replace(report, entries=i, messages=logs.messages_before[i],
                                         last_time_ms=entries[-1].time_ms), None)


def refused_at(logs: BigLogs, i: int, tail: Iterable[bytes], *, head_dir: Path | None = None) -> str:
    """Check a log that equals the original up to entry ``i - 1`` and continues with ``tail``; the error
    must name entry ``i``. Returns the error text."""
    path = logs.site if head_dir is None else head_dir / logs.site.name
    reading = read_lines(path, tail, logs.site_key, verified=prefix(logs, i))
    assert reading.error is not None, f"a change at entry {i} went unnoticed"
    assert reading.error.entry_index == i, (i, str(reading.error))
    return str(reading.error)


def after(logs: BigLogs, j: int) -> Iterator[bytes]:
    """The original lines from entry ``j`` on, lazily (the reader stops at the first bad entry)."""
    return (logs.lines[n] for n in range(j, N))


def edit(logs: BigLogs, i: int, pos: int, value: int) -> str:
    line = logs.lines[i]
    changed = line[:pos] + bytes([value]) + line[pos + 1:]
    # a changed or added newline re-splits the file from here: entry i's bytes run into entry i + 1's
    region = file_lines(changed + b"".join(logs.lines[i + 1:i + 2]))
    return refused_at(logs, i, itertools.chain(region, after(logs, i + 2)))


def positions(rng: random.Random, last: int) -> list[int]:
    """0, ``last`` and SAMPLES random positions between them (seeded)."""
    return sorted({0, last, *rng.sample(range(1, last), SAMPLES)})


# ---------------------------------------------------------------- the logs themselves

def test_the_logs_verify_and_cross_match(logs: BigLogs) -> None:
    cc = cross_check(logs.site, logs.coord, site_key=logs.site_key, coordinator_key=logs.coord_key)
    assert cc.ok, cc.unmatched[:5]
    assert cc.site.entries == N and cc.site.pinned and cc.site.messages == N - 1 - logs.undelivered
    assert cc.coordinator.entries > N  # the other site's traffic is there too, and ignored
    assert (cc.site_to_coordinator, cc.coordinator_to_site) == (logs.exchanges, logs.replies)
    assert cc.undelivered == logs.undelivered > 0 and cc.lost_replies == 0


def test_the_resumed_reader_agrees_with_verify(logs: BigLogs, tmp_path: Path) -> None:
    # (read_log is read_lines over the file's lines.) Resumed near the end of the unchanged log, it verifies
    for i in (N - 2, N - 1, N):
        reading = read_lines(logs.site, after(logs, i), logs.site_key, verified=prefix(logs, i))
        assert reading.error is None and reading.report == logs.reading.report
    # a verified prefix under another pinned key is refused
    other = Ed25519PrivateKey.generate().public_key()
    bad = read_lines(logs.site, after(logs, 5), other, verified=prefix(logs, 5)).error
    assert bad is not None and bad.entry_index == 0 and "pinned" in str(bad)
    # only an error-free reading can be continued
    broken = AuditReading(logs.reading.entries[:3], logs.reading.report, AuditVerificationError("entry 3: x", 3))
    with pytest.raises(AuditError, match="cannot be continued"):
        read_lines(logs.site, after(logs, 3), logs.site_key, verified=broken)
    # a few changes written to disk: the plain verify names the same entry with the same words
    copy = tmp_path / logs.site.name
    shutil.copy(head_path(logs.site), head_path(copy))
    lines = list(logs.lines)
    changed_line = bytearray(lines[3])
    changed_line[40] ^= 0x01
    cases: list[tuple[int, list[bytes]]] = [
        (3, lines[:3] + [bytes(changed_line)] + lines[4:]),  # an edit
        (5, lines[:5] + lines[6:]),  # a deletion
        (7, lines[:7] + [lines[8], lines[7]] + lines[9:]),  # a swap
        (50, lines[:50]),  # a truncation at an entry boundary
        (10, lines[:10] + [lines[10][:77]]),  # a truncation inside an entry
    ]
    for i, content in cases:
        copy.write_bytes(b"".join(content))
        with pytest.raises(AuditVerificationError) as info:
            verify(copy, logs.site_key)
        assert info.value.entry_index == i
        assert str(info.value) == refused_at(logs, i, iter(content[i:]), head_dir=tmp_path)


# ---------------------------------------------------------------- single-byte edits

@pytest.mark.parametrize("where", ["first", "second", "middle", "third-last", "second-last", "last"])
def test_every_byte_of_an_entry(logs: BigLogs, where: str) -> None:
    i = {"first": 0, "second": 1, "middle": N // 2, "third-last": N - 3, "second-last": N - 2, "last": N - 1}[where]
    line = logs.lines[i]
    rng = random.Random(f"every-byte-{i}")
    for pos, byte in enumerate(line):
        other = rng.choice([v for v in range(256) if v != byte])
        for value in {byte ^ 0x01, byte ^ 0x20, other}:
            edit(logs, i, pos, value)


def head_refused(logs: BigLogs, folder: Path, content: bytes) -> str:
    """Check the original log against a head file holding ``content``; the error must be about the head."""
    head_path(folder / logs.site.name).write_bytes(content)
    reading = read_lines(folder / logs.site.name, after(logs, N - 1), logs.site_key, verified=prefix(logs, N - 1))
    assert reading.error is not None and "head" in str(reading.error), content
    return str(reading.error)


def test_every_byte_of_the_signed_head(logs: BigLogs, tmp_path: Path) -> None:
    original = head_path(logs.site).read_bytes()
    rng = random.Random("head")
    for pos, byte in enumerate(original):
        other = rng.choice([v for v in range(256) if v != byte])
        for value in {byte ^ 0x01, byte ^ 0x20, other}:
            head_refused(logs, tmp_path, original[:pos] + bytes([value]) + original[pos + 1:])
    head_path(tmp_path / logs.site.name).write_bytes(original)
    assert read_lines(tmp_path / logs.site.name, after(logs, N - 1), logs.site_key,
                      verified=prefix(logs, N - 1)).error is None


def test_signatures_have_one_encoding(logs: BigLogs, tmp_path: Path) -> None:
    # A signature is 64 bytes: 86 base64 characters and "==", the last character carrying 4 unused bits. No
    # entry hash covers the signature, so only a check of the encoding itself catches an edit there; every
    # value of the last three characters before the padding, in entries and in the head, is tried.
    for i in (0, N // 2, N - 1):
        line = logs.lines[i]
        end = line.index(b'"sig":"') + len('"sig":"') + 86
        for pos in range(end - 3, end):
            for value in range(256):
                if value != line[pos]:
                    edit(logs, i, pos, value)
    head = head_path(logs.site).read_bytes()
    end = head.index(b'"sig":"') + len('"sig":"') + 86
    for pos in [*range(end - 3, end), len(head) - 1]:  # and the final newline
        for value in range(256):
            if value != head[pos]:
                head_refused(logs, tmp_path, head[:pos] + bytes([value]) + head[pos + 1:])
    head_refused(logs, tmp_path, head[:-1])  # no newline


def test_a_random_byte_edit_in_every_entry(logs: BigLogs) -> None:
    rng = random.Random("one-edit-per-entry")
    kinds = set()
    for i, line in enumerate(logs.lines):
        pos = rng.randrange(len(line))
        value = rng.choice([v for v in range(256) if v != line[pos]])
        kinds.add(edit(logs, i, pos, value).split(": ", 1)[1])
    # the edits were caught by different checks (form, fields, hash, signature, a split line), not one
    assert len(kinds) >= 4, kinds


# ---------------------------------------------------------------- deletions, reordering, truncation

def test_deleting_any_entry(logs: BigLogs) -> None:
    for i in positions(random.Random("delete"), N - 1):
        why = refused_at(logs, i, after(logs, i + 1))
        assert ("truncation" if i == N - 1 else "entry") in why


def test_swapping_adjacent_entries(logs: BigLogs) -> None:
    for i in positions(random.Random("swap"), N - 2):
        refused_at(logs, i, itertools.chain([logs.lines[i + 1], logs.lines[i]], after(logs, i + 2)))


def test_moving_an_entry_earlier(logs: BigLogs) -> None:
    rng = random.Random("move")
    for i in positions(rng, N - 2):
        j = rng.randrange(i + 1, N)
        moved = itertools.chain([logs.lines[j]], (logs.lines[n] for n in range(i, N) if n != j))
        refused_at(logs, i, moved)


def test_duplicating_an_entry(logs: BigLogs) -> None:
    for i in positions(random.Random("duplicate"), N - 1):
        refused_at(logs, i + 1, itertools.chain([logs.lines[i]], after(logs, i)))


def test_truncation_at_entry_boundaries(logs: BigLogs) -> None:
    for i in positions(random.Random("cut"), N - 1):
        why = refused_at(logs, i, iter(()))
        assert ("empty" if i == 0 else "truncation") in why


def test_truncation_inside_an_entry(logs: BigLogs) -> None:
    rng = random.Random("cut-inside")
    for i in positions(rng, N - 1):
        line = logs.lines[i]
        for cut in {1, len(line) - 1, rng.randrange(1, len(line) - 1)}:  # keep 1..len-1 bytes of entry i
            why = refused_at(logs, i, [line[:cut]])
            assert "incomplete last line" in why
