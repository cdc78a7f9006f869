"""`autodp coordinator search`: a user mistake found when the search starts is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from coordinator.cli import app
from protos.tls import init_ca, issue_coordinator


def write_config(tmp: Path, search: dict[str, object] | None) -> Path:
    certs = tmp / "certs"
    init_ca(certs)
    issue_coordinator(certs)
    cfg: dict[str, object] = {
        "listen": "127.0.0.1:0", "state_dir": str(tmp / "state"), "sites": ["hospital-a"],
        "tls": {"cert": str(certs / "coordinator.crt"), "key": str(certs / "coordinator.key"),
                "ca": str(certs / "ca.crt")},
        "audit_key": str(certs / "coordinator.audit.key")}
    if search is not None:
        cfg["search"] = search
    path = tmp / "coordinator.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_bad_meta_agent_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"proposer": "llm", "agent": {"backend": "local",
                                                                  "model_dir": str(tmp_path / "no-model")}})
    result = CliRunner().invoke(app, ["search", "--config", str(config), "--no-live"])
    assert result.exit_code == 2, result.output
    assert "is not a model folder" in result.output and "Traceback" not in result.output


def test_search_without_a_search_section_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["search", "--config", str(write_config(tmp_path, None)), "--no-live"])
    assert result.exit_code == 2 and "no 'search' section" in result.output


def test_report_to_an_unwritable_place_is_one_line_and_exit_2(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    record.write_text('{"strategies": []}')
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["report", str(record), "--html", str(blocker / "report.html")])
    assert result.exit_code == 2, result.output
    assert "cannot write the report" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # was a FileNotFoundError
