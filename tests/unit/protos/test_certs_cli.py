"""``autodp certs`` through typer's CliRunner."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from protos.certs_cli import app
from protos.tls import describe_certificate

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_init_issue_show(tmp_path: Path) -> None:
    d = str(tmp_path / "certs")
    out = _ok("init", "--dir", d, "--name", "test-ca", "--days", "30")
    assert "ca.crt" in out and "ca.key" in out and "SECRET" in out and "test-ca" in out

    out = _ok("issue", "coordinator", "--dir", d, "--host", "coord.example.org", "--host", "10.0.0.5")
    assert "DNS:coord.example.org, IP:10.0.0.5" in out and "valid until" in out
    assert "SECRET" in out and "coordinator.audit.key" in out

    out = _ok("issue", "site", "hospital-a", "--dir", d, "--days", "7")
    assert "site-hospital-a.key" in out and "subject CN:  hospital-a" in out

    site_key = tmp_path / "certs" / "site-hospital-a.key"
    assert stat.S_IMODE(site_key.stat().st_mode) == 0o600
    info = describe_certificate(tmp_path / "certs" / "site-hospital-a.crt")
    assert info["issuer_cn"] == "test-ca"

    out = _ok("show", str(tmp_path / "certs" / "coordinator.crt"))
    assert "coordinator" in out and "sha256:" in out and "server and client" in out


def test_coordinator_default_hosts(tmp_path: Path) -> None:
    d = str(tmp_path)
    _ok("init", "--dir", d)
    out = _ok("issue", "coordinator", "--dir", d, "--cn", "coord-1")
    assert "DNS:localhost, IP:127.0.0.1" in out and "subject CN:  coord-1" in out


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    return result.stderr


def test_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert "certs init" in _fails("issue", "site", "hospital-a", "--dir", d)
    _ok("init", "--dir", d)
    assert "already exists" in _fails("init", "--dir", d)
    assert "site id" in _fails("issue", "site", "bad/id", "--dir", d)
    _ok("issue", "site", "hospital-a", "--dir", d)
    assert "already exists" in _fails("issue", "site", "hospital-a", "--dir", d)
    _ok("issue", "site", "hospital-a", "--dir", d, "--force")
    assert "not a PEM certificate" in _fails("show", str(tmp_path / "ca.key"))
    assert "not found" in _fails("show", str(tmp_path / "missing.crt"))


def test_days_out_of_range_is_one_line_exit_2(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert "--days" in _fails("init", "--dir", d, "--days", "99999999")  # past year 9999: was a traceback
    assert "--days" in _fails("init", "--dir", d, "--days", "0")
    _ok("init", "--dir", d)
    assert "--days" in _fails("issue", "site", "hospital-a", "--dir", d, "--days", "99999999")
    assert "--days" in _fails("issue", "coordinator", "--dir", d, "--days", "99999999")
