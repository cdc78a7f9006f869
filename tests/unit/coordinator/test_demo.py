"""`autodp demo run`: a wrong option is bad input (exit 2), found before anything is wiped or started."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from coordinator.demo import app


def test_an_unknown_proposer_or_baseline_is_exit_2_and_touches_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    workdir.mkdir()
    (workdir / "keep").write_text("")
    for args in (["--proposer", "bogus"], ["--baseline", "bogus"], ["--proposer", "tpe", "--baseline", "llm"]):
        result = CliRunner().invoke(app, ["--workdir", str(workdir), *args])  # a one-command app: no "run"
        assert result.exit_code == 2, result.output
        assert "unknown demo proposer or baseline" in result.output
    assert (workdir / "keep").exists()
