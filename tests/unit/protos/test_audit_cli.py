"""``autodp audit verify | show | cross-check`` through typer's CliRunner: exit codes and wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from protos.audit import AuditLog, head_path
from protos.audit_cli import app, describe_view
from protos.serde import from_pb, to_pb
from protos.views import Poll, PollReply, ResultAck, Strategy
from tests.unit.protos.test_audit import COORD, SITE, result, task_reply, write_pair

runner = CliRunner()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]:
    return write_pair(tmp_path)


def pem(tmp_path: Path, key: Ed25519PublicKey, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def drop_line(path: Path, n: int) -> None:
    ls = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(ls[:n] + ls[n + 1:]))


def test_verify_ok_unpinned_and_pinned(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey],
                                       tmp_path: Path) -> None:
    site, _, sk, _ = pair
    res = runner.invoke(app, ["verify", str(site)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("OK: 15 entries") and SITE in res.output and "NOT pinned" in res.output
    res = runner.invoke(app, ["verify", str(site), "--key", str(pem(tmp_path, sk.public_key(), "s.pub"))])
    assert res.exit_code == 0 and " pinned" in res.output and "NOT pinned" not in res.output


def test_verify_failures(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey], tmp_path: Path) -> None:
    site, _, _, _ = pair
    other = pem(tmp_path, Ed25519PrivateKey.generate().public_key(), "other.pub")
    res = runner.invoke(app, ["verify", str(site), "--key", str(other)])
    assert res.exit_code == 1 and res.output.startswith("FAILED: entry 0") and "pinned" in res.output
    drop_line(site, 4)
    res = runner.invoke(app, ["verify", str(site)])
    assert res.exit_code == 1 and "FAILED: entry 4" in res.output


def test_verify_bad_input(tmp_path: Path, pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    res = runner.invoke(app, ["verify", str(tmp_path / "missing.log")])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    res = runner.invoke(app, ["verify", str(pair[0]), "--key", str(junk)])
    assert res.exit_code == 2 and "not a PEM public key" in res.output


def test_show_plain_words(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    site, _, _, _ = pair
    res = runner.invoke(app, ["show", str(site)])
    assert res.exit_code == 0, res.output
    out = res.output
    for words in ("Party        : site-a (site)", "Verification : OK", "not pinned",
                  "sent to coordinator", "received from coordinator",
                  "Hello (site site-a", "catalog of 4 operators", "size bucket 1k_10k",
                  "Task t-0", "strategy: dedup(threshold=0.8) -> top_k(k=5)", "evaluator quality_proxy",
                  "Result t-1: status ok, score +0.0312, epsilon spent 0.0, remaining 1.0",
                  "Poll reply (no task)", "Heartbeat (0 tasks done)",
                  "Fields that left this party: message types HeartbeatRequest, HelloRequest, PollRequest, "
                  "ResultReport (numbers, enums and identifiers only)"):
        assert words in out, words
    assert "  sent      PollRequest       3" in out
    assert "\x1b[" not in out  # plain text when piped


def test_show_json(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    res = runner.invoke(app, ["show", "--json", str(pair[0])])
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert doc["party"] == SITE and doc["verification"]["ok"] is True and len(doc["entries"]) == 15
    result_entry = doc["entries"][9]
    assert result_entry["type"] == "autodp.v1.ResultReport" and result_entry["message"]["status"] == "ok"
    assert doc["types_sent"] == ["HeartbeatRequest", "HelloRequest", "PollRequest", "ResultReport"]


def test_show_tampered_log_stops_at_the_bad_entry(
        pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    site, _, _, _ = pair
    drop_line(site, 6)
    res = runner.invoke(app, ["show", str(site)])
    assert res.exit_code == 1
    assert "Verification : FAILED: entry 6" in res.output
    assert "Entries from 6 on are not shown" in res.output
    assert "Task t-0" not in res.output  # entry 8 sits after the bad one


def test_show_recovered_and_unreadable_entries(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "c.log"
    with AuditLog.open(path, key, "coordinator", COORD) as log:
        log.record("in", SITE, to_pb(Poll(site_id=SITE)))
    with path.open("ab") as f:
        f.write(b'{"bytes":')
    with AuditLog.open(path, key, "coordinator", COORD) as log:
        bad = result(1)
        bad.status = 0  # type: ignore[attr-defined]  # unset enum: logged as received, fails the contract
        log.record("in", SITE, bad)
    res = runner.invoke(app, ["show", str(path)])
    assert res.exit_code == 0, res.output
    assert "crash recovery: 9 bytes" in res.output
    assert "ResultReport (unreadable:" in res.output and "status" in res.output
    assert "Fields that left this party: none" in res.output


def test_show_missing_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["show", str(tmp_path / "nope.log")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cross_check_ok_and_not(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey],
                                tmp_path: Path) -> None:
    site, coord, sk, ck = pair
    keys = ["--site-key", str(pem(tmp_path, sk.public_key(), "s.pub")),
            "--coordinator-key", str(pem(tmp_path, ck.public_key(), "c.pub"))]
    res = runner.invoke(app, ["cross-check", str(site), str(coord), *keys])
    assert res.exit_code == 0, res.output
    assert "site -> coordinator: 7 messages matched" in res.output and "OK" in res.output
    with AuditLog.open(site, sk, "site", SITE) as log:  # a result the coordinator never logged
        log.record("out", COORD, result(9))
    res = runner.invoke(app, ["cross-check", str(site), str(coord)])
    assert res.exit_code == 1
    assert "NOT OK: 1 unmatched" in res.output and "site log entry 15: sent ResultReport" in res.output


def test_cross_check_bad_inputs(pair: tuple[Path, Path, Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    site, coord, _, _ = pair
    res = runner.invoke(app, ["cross-check", str(coord), str(site)])
    assert res.exit_code == 2 and "not a site log" in res.output
    head_path(coord).unlink()
    res = runner.invoke(app, ["cross-check", str(site), str(coord)])
    assert res.exit_code == 1 and "FAILED: coordinator log" in res.output


def test_describe_views() -> None:
    assert describe_view(from_pb(to_pb(PollReply()))) == "Poll reply (no task)"
    assert describe_view(from_pb(task_reply(3))).startswith("Task t-3 (search search-1")
    assert "duplicate" in describe_view(ResultAck(accepted=True, duplicate=True))
    assert describe_view(Strategy()) == "Strategy: (no processing)"
