"""The audit log: writing, reopening, crash recovery, tamper detection and the cross-check."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from protos import federation_pb2 as pb
from protos.audit import (
    AuditLog,
    cross_check,
    head_path,
    key_fingerprint,
    load_signing_key,
    load_verify_key,
    read_log,
    verify,
)
from protos.errors import AuditError, AuditVerificationError
from protos.serde import decode, encode, to_pb
from protos.views import (
    EvalSettings,
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    OperatorCall,
    OperatorSpec,
    ParamSpec,
    ParamType,
    Poll,
    PollReply,
    ResultAck,
    ResultReport,
    SizeBucket,
    Strategy,
    Task,
    TaskStatus,
    Team,
)

SITE = "site-a"
COORD = "coordinator"
CATALOG = (
    OperatorSpec(name="dedup", team=Team.CLEANING, version="1", params=(
        ParamSpec(name="threshold", type=ParamType.FLOAT, float_min=0.0, float_max=1.0, float_default=0.9),)),
    OperatorSpec(name="rewrite", team=Team.GENERATION, version="1"),
    OperatorSpec(name="shorten", team=Team.OPTIMIZATION, version="1"),
    OperatorSpec(name="top_k", team=Team.SELECTION, version="1", params=(
        ParamSpec(name="k", type=ParamType.INT, int_min=1, int_max=100, int_default=10),)),
)


def hello(site: str = SITE) -> Message:
    return to_pb(Hello(site_id=site, software_version="0.1.0", catalog=CATALOG,
                       size_bucket=SizeBucket.FROM_1K_TO_10K))


def task_reply(i: int) -> Message:
    strategy = Strategy(calls=(OperatorCall.of("dedup", threshold=0.8), OperatorCall.of("top_k", k=5)))
    return to_pb(PollReply(task=Task(task_id=f"t-{i}", search_id="search-1", strategy=strategy,
                                     settings=EvalSettings())))


def result(i: int, site: str = SITE) -> Message:
    return to_pb(ResultReport(task_id=f"t-{i}", site_id=site, status=TaskStatus.OK, score=0.0312,
                              epsilon_spent=0.0, epsilon_remaining=1.0))


def conversation(site: str = SITE, tasks: int = 2) -> list[tuple[Message, Message]]:
    """(site request, coordinator reply) pairs of a short, realistic session."""
    talk = [(hello(site), to_pb(HelloReply(accepted=True)))]
    talk.append((to_pb(Heartbeat(site_id=site)), to_pb(HeartbeatReply(known=True))))
    talk.append((to_pb(Poll(site_id=site)), to_pb(PollReply())))
    for i in range(tasks):
        talk.append((to_pb(Poll(site_id=site)), task_reply(i)))
        talk.append((result(i, site), to_pb(ResultAck(accepted=True))))
    return talk


def write_pair(tmp: Path, tasks: int = 2) -> tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]:
    """A site log and the coordinator log of the same session (plus another site's traffic)."""
    sk, ck = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    site_path, coord_path = tmp / "site.log", tmp / "coord.log"
    other = conversation("site-b", tasks=1)
    with AuditLog.open(site_path, sk, "site", SITE) as site, \
            AuditLog.open(coord_path, ck, "coordinator", COORD) as coord:
        for i, (req, rep) in enumerate(conversation(tasks=tasks)):
            site.record("out", COORD, req)
            coord.record("in", SITE, req)
            if i < len(other):
                coord.record("in", "site-b", other[i][0])
                coord.record("out", "site-b", other[i][1])
            coord.record("out", SITE, rep)
            site.record("in", COORD, rep)
    return site_path, coord_path, sk, ck


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def small_log(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A 20-entry site log (genesis + 19 messages)."""
    path = tmp_path / "audit.log"
    msgs = [m for pair in conversation(tasks=4) for m in pair][:19]
    with AuditLog.open(path, key, "site", SITE) as log:
        for i, m in enumerate(msgs):
            log.record("out" if i % 2 == 0 else "in", COORD, m)
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def failure(path: Path, **kw: object) -> AuditVerificationError:
    with pytest.raises(AuditVerificationError) as info:
        verify(path, **kw)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- writing and reading

def test_round_trip(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    msgs = [hello(), to_pb(Poll(site_id=SITE)), result(1)]
    with AuditLog.open(path, key, "site", SITE) as log:
        digests = [log.record("out", COORD, m) for m in msgs]
    assert digests == [hashlib.sha256(encode(m)).hexdigest() for m in msgs]
    report = verify(path)
    assert (report.entries, report.messages, report.party, report.side) == (4, 3, SITE, "site")
    assert report.pinned is False and report.key_fingerprint == key_fingerprint(key.public_key())
    entries = read_log(path).entries
    assert entries[0].kind == "genesis" and entries[0].software_version
    for e, m in zip(entries[1:], msgs, strict=True):
        assert e.msg_type == m.DESCRIPTOR.full_name and e.direction == "out" and e.peer == COORD
        assert decode(type(m), e.payload) == m
    assert verify(path, key.public_key()).pinned is True


def test_reopen_continues_the_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    with AuditLog.open(path, key, "site", SITE) as log:
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))
    with AuditLog.open(path, key, "site", SITE) as log:
        assert log.entries == 2
        log.record("in", COORD, to_pb(PollReply()))
    entries = read_log(path).entries
    assert [e.index for e in entries] == [0, 1, 2] and entries[2].prev == entries[1].hash
    assert verify(path).recovered == 0


def test_reopen_refuses_another_key_or_party(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    AuditLog.open(path, key, "site", SITE).close()
    with pytest.raises(AuditError, match="different signing key"):
        AuditLog.open(path, Ed25519PrivateKey.generate(), "site", SITE)
    with pytest.raises(AuditError, match="belongs to site"):
        AuditLog.open(path, key, "coordinator", SITE)


def test_open_twice_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "a.log", key, "site", SITE):
        with pytest.raises(AuditError, match="already open"):
            AuditLog.open(tmp_path / "a.log", key, "site", SITE)


def test_bad_arguments_and_closed_log(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(AuditError, match="party"):
        AuditLog.open(tmp_path / "a.log", key, "site", "not an id")
    log = AuditLog.open(tmp_path / "a.log", key, "site", SITE)
    with pytest.raises(AuditError, match="peer"):
        log.record("out", "bad peer!", to_pb(Poll(site_id=SITE)))
    with pytest.raises(AuditError, match="direction"):
        log.record("sideways", COORD, to_pb(Poll(site_id=SITE)))  # type: ignore[arg-type]
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))


def test_threads_append_one_chain(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    with AuditLog.open(path, key, "coordinator", COORD) as log:
        def work(n: int) -> None:
            for i in range(15):
                log.record("in", f"site-{n}", to_pb(Heartbeat(site_id=f"site-{n}", tasks_done=i)))
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify(path).messages == 60


# ---------------------------------------------------------------- crashes

def test_partial_last_line_is_cut_and_noted(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    with AuditLog.open(path, key, "site", SITE) as log:
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))
    crumb = b'{"bytes":"CgZzaXRlLWE=","direction":"out","hash":"ab'
    with path.open("ab") as f:
        f.write(crumb)
    assert "incomplete last line" in str(failure(path))
    with AuditLog.open(path, key, "site", SITE) as log:
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))
    report = verify(path)
    assert report.recovered == 1 and report.entries == 4
    recovered = read_log(path).entries[2]
    assert recovered.kind == "recovered" and recovered.dropped_bytes == len(crumb)


def test_crash_before_head_update_is_repaired_on_reopen(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "a.log"
    with AuditLog.open(path, key, "site", SITE) as log:
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))
        old_head = head_path(path).read_bytes()
        log.record("out", COORD, to_pb(Poll(site_id=SITE)))
    head_path(path).write_bytes(old_head)
    err = failure(path)
    assert err.entry_index == 2 and "past the signed head" in str(err)
    AuditLog.open(path, key, "site", SITE).close()
    assert verify(path).entries == 3


def test_reopen_refuses_a_truncated_log(small_log: Path, key: Ed25519PrivateKey) -> None:
    small_log.write_bytes(b"".join(lines(small_log)[:-3]))
    with pytest.raises(AuditVerificationError, match="refusing"):
        AuditLog.open(small_log, key, "site", SITE)


# ---------------------------------------------------------------- tampering

def _flip_each(path: Path, positions: range) -> None:
    original = path.read_bytes()
    verify(path)
    for pos in positions:
        edited = bytearray(original)
        edited[pos] ^= 0x01  # the logs are ASCII without 0x0B, so this never makes a line break
        path.write_bytes(bytes(edited))
        with pytest.raises(AuditVerificationError) as info:
            verify(path)
        assert info.value.entry_index == original.count(b"\n", 0, pos), pos  # the line it sits in
    path.write_bytes(original)
    verify(path)


def test_every_single_byte_change_is_detected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    # Every byte of a 10-entry log: a flip in line k costs k signature checks, so this loop grows
    # with the square of the length; the 20-entry log below is sampled with a stride instead.
    path = tmp_path / "audit.log"
    with AuditLog.open(path, key, "site", SITE) as log:
        for i, m in enumerate([m for pair in conversation(tasks=1) for m in pair][:9]):
            log.record("out" if i % 2 == 0 else "in", COORD, m)
    assert len(lines(path)) == 10
    _flip_each(path, range(len(path.read_bytes())))


def test_byte_changes_across_a_20_entry_log_are_detected(small_log: Path) -> None:
    assert len(lines(small_log)) == 20
    _flip_each(small_log, range(0, len(small_log.read_bytes()), 11))


def test_flip_into_newline_or_garbage_is_a_bad_entry(small_log: Path) -> None:
    original = small_log.read_bytes()
    for pos, byte in ((50, b"\n"), (700, b"\xff"), (len(original) - 1, b" ")):
        small_log.write_bytes(original[:pos] + byte + original[pos + 1:])
        assert failure(small_log).entry_index == original.count(b"\n", 0, pos)


def test_deleted_entry(small_log: Path) -> None:
    ls = lines(small_log)
    small_log.write_bytes(b"".join(ls[:5] + ls[6:]))
    err = failure(small_log)
    assert err.entry_index == 5 and "deleted" in str(err)


def test_reordered_entries(small_log: Path) -> None:
    ls = lines(small_log)
    ls[7], ls[8] = ls[8], ls[7]
    small_log.write_bytes(b"".join(ls))
    assert failure(small_log).entry_index == 7


def test_truncation_with_head(small_log: Path) -> None:
    small_log.write_bytes(b"".join(lines(small_log)[:-3]))
    err = failure(small_log)
    assert err.entry_index == 17 and "truncation" in str(err)


def test_truncation_without_head(small_log: Path) -> None:
    small_log.write_bytes(b"".join(lines(small_log)[:-3]))
    head_path(small_log).unlink()
    err = failure(small_log)
    assert "missing" in str(err) and "truncation" in str(err)


def test_edited_or_foreign_head(small_log: Path, key: Ed25519PrivateKey) -> None:
    head = head_path(small_log)
    original = head.read_bytes()
    head.write_bytes(original.replace(b'"index":19', b'"index":18'))
    assert "signature" in str(failure(small_log))
    head.write_bytes(b"{}")
    assert "damaged" in str(failure(small_log))


def test_wrong_pinned_key(small_log: Path, key: Ed25519PrivateKey) -> None:
    err = failure(small_log, public_key=Ed25519PrivateKey.generate().public_key())
    assert err.entry_index == 0 and "pinned" in str(err)
    assert verify(small_log, key.public_key()).pinned


def test_log_re_signed_with_another_key_fails_the_pin(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "forged.log"
    with AuditLog.open(path, Ed25519PrivateKey.generate(), "site", SITE) as log:
        log.record("out", COORD, result(1))
    assert not verify(path).pinned  # self-consistent on its own ...
    assert failure(path, public_key=key.public_key()).entry_index == 0  # ... but not the site's key


def test_empty_or_missing_log(tmp_path: Path) -> None:
    (tmp_path / "empty.log").write_bytes(b"")
    assert failure(tmp_path / "empty.log").entry_index == 0
    with pytest.raises(AuditError, match="not found") as info:
        verify(tmp_path / "nope.log")
    assert not isinstance(info.value, AuditVerificationError)


# ---------------------------------------------------------------- keys

def test_key_files(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    priv, pub = tmp_path / "audit.key", tmp_path / "audit.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    assert load_signing_key(priv).public_key() == key.public_key()
    assert load_verify_key(pub) == key.public_key()
    with pytest.raises(AuditError, match="not found"):
        load_signing_key(tmp_path / "missing.key")
    with pytest.raises(AuditError, match="not an unencrypted PEM private key"):
        load_signing_key(pub)
    with pytest.raises(AuditError, match="not a PEM public key"):
        load_verify_key(priv)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(AuditError, match="not an Ed25519 key"):
        load_signing_key(ec_key)


# ---------------------------------------------------------------- cross-check

def test_cross_check_ok(tmp_path: Path) -> None:
    site, coord, sk, ck = write_pair(tmp_path)
    report = cross_check(site, coord, site_key=sk.public_key(), coordinator_key=ck.public_key())
    assert report.ok and report.unmatched == ()
    assert report.site_to_coordinator == report.coordinator_to_site == 7
    assert (report.site.party, report.coordinator.party) == (SITE, COORD)


def test_cross_check_finds_a_message_the_coordinator_never_logged(tmp_path: Path) -> None:
    _, coord_path, _, _ = write_pair(tmp_path)
    # The site sent an identical Poll twice and the coordinator got one: exactly one unmatched entry.
    with AuditLog.open(tmp_path / "site2.log", Ed25519PrivateKey.generate(), "site", SITE) as site2:
        for i, (req, rep) in enumerate(conversation()):
            site2.record("out", COORD, req)
            if i == 3:
                site2.record("out", COORD, req)
            site2.record("in", COORD, rep)
    report = cross_check(tmp_path / "site2.log", coord_path)
    assert not report.ok and report.site_to_coordinator == 7
    assert [(u.log, u.index, u.direction, u.msg_type) for u in report.unmatched] == [
        ("site", 8, "out", "autodp.v1.PollRequest")]


def test_cross_check_reports_both_directions(tmp_path: Path) -> None:
    _, coord_path, _, _ = write_pair(tmp_path)
    with AuditLog.open(tmp_path / "s.log", Ed25519PrivateKey.generate(), "site", SITE) as s:
        s.record("out", COORD, hello())
        s.record("in", COORD, to_pb(HelloReply(accepted=False)))  # not what the coordinator sent
    report = cross_check(tmp_path / "s.log", coord_path)
    assert not report.ok and report.site_to_coordinator == 1 and report.coordinator_to_site == 0
    kinds = {(u.log, u.direction) for u in report.unmatched}
    assert kinds == {("site", "in"), ("coordinator", "in"), ("coordinator", "out")}
    assert all(u.msg_type.startswith("autodp.v1.") for u in report.unmatched)


def test_cross_check_verifies_both_logs_first(tmp_path: Path) -> None:
    site, coord, _, _ = write_pair(tmp_path)
    with pytest.raises(AuditError, match="not a site log"):
        cross_check(coord, site)
    ls = lines(coord)
    coord.write_bytes(b"".join(ls[:3] + ls[4:]))
    with pytest.raises(AuditVerificationError, match="coordinator log: entry 3"):
        cross_check(site, coord)


def test_cross_check_many_identical_polls_stays_exact(tmp_path: Path) -> None:
    sk, ck = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    poll, empty = to_pb(Poll(site_id=SITE)), to_pb(PollReply())
    with AuditLog.open(tmp_path / "s.log", sk, "site", SITE) as s, \
            AuditLog.open(tmp_path / "c.log", ck, "coordinator", COORD) as c:
        for i in range(40):
            s.record("out", COORD, poll)
            if i != 11:  # lost on the way
                c.record("in", SITE, poll)
                c.record("out", SITE, empty)
                s.record("in", COORD, empty)
    report = cross_check(tmp_path / "s.log", tmp_path / "c.log")
    assert (report.site_to_coordinator, report.coordinator_to_site) == (39, 39)
    assert len(report.unmatched) == 1 and report.unmatched[0].log == "site"


def test_messages_are_real_protocol_messages() -> None:
    for req, rep in conversation():
        assert req.DESCRIPTOR.file is pb.DESCRIPTOR and rep.DESCRIPTOR.file is pb.DESCRIPTOR


def test_undelivered_sends_and_lost_replies_are_explained(tmp_path: Path) -> None:
    sk, ck = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    site_path, coord_path = tmp_path / "site.log", tmp_path / "coord.log"
    poll = to_pb(Poll(site_id=SITE))
    with AuditLog.open(site_path, sk, "site", SITE) as site, \
            AuditLog.open(coord_path, ck, "coordinator", COORD) as coord:
        # 1: the coordinator was down: the hello never arrived
        site.record_undelivered(site.record("out", COORD, hello()), "UNAVAILABLE")
        # 2: the poll arrived, but the reply was lost to a deadline on the site's side
        coord.record("in", SITE, poll)
        site.record_undelivered(site.record("out", COORD, poll), "DEADLINE_EXCEEDED")
        coord.record("out", SITE, task_reply(1))
        # 3: a normal exchange
        site.record("out", COORD, hello())
        coord.record("in", SITE, hello())
        coord.record("out", SITE, to_pb(HelloReply(accepted=True)))
        site.record("in", COORD, to_pb(HelloReply(accepted=True)))
    report = cross_check(site_path, coord_path)
    assert report.ok, report.unmatched
    assert (report.undelivered, report.lost_replies) == (1, 1)
    # without the markers the same logs do not cross-match: an extra, unmarked send is caught
    with AuditLog.open(site_path, sk, "site", SITE) as site:
        site.record("out", COORD, poll)
    assert not cross_check(site_path, coord_path).ok


def test_undelivered_marker_needs_a_recent_send(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with AuditLog.open(tmp_path / "a.log", key, "site", SITE) as log:
        with pytest.raises(AuditError):
            log.record_undelivered("0" * 64, "UNAVAILABLE")
        digest = log.record("out", COORD, hello())
        with pytest.raises(AuditError):
            log.record_undelivered(digest, "not a status")
        log.record_undelivered(digest, "UNAVAILABLE")
    assert verify(tmp_path / "a.log").entries == 3
