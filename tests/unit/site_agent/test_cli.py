"""`autodp site make-toy-data`: writes the toy set; an output it cannot write is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from site_agent.cli import app


def test_make_toy_data_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "toy.jsonl"
    result = CliRunner().invoke(app, ["make-toy-data", "--out", str(out), "--n", "20"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 20


def test_make_toy_data_to_a_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["make-toy-data", "--out", str(tmp_path), "--n", "20"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # was an IsADirectoryError
    assert "cannot write" in result.output
