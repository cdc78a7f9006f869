import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from site_agent.data_cli import app

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pyCMeKG") is None, reason="pycmekg is not installed")


def test_build_benchmark_writes_files_and_prints_counts(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["build-benchmark", "--out", str(out), "--sites", "4", "--seed", "3",
                                      "--pairs", "800", "--eval-per-site", "10"])
    assert result.exit_code == 0, result.output
    for site in ("hospital-a", "hospital-b", "hospital-c", "hospital-d"):
        assert site in result.output
        assert len((out / site / "eval.jsonl").read_text(encoding="utf-8").splitlines()) == 10
    assert "200" in result.output and "40 (20%)" in result.output  # rows and noisy rows of hospital-a
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and len(manifest["sites"]) == 4


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build-benchmark", "--out", str(tmp_path), "--sites", "3", "--pairs", "20"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["build-benchmark", "--out", str(tmp_path / "file"), "--pairs", "100",
                                      "--eval-per-site", "1"])
    assert result.exit_code == 2 and "could not be written" in result.output
    assert CliRunner().invoke(app, ["build-benchmark", "--out", str(tmp_path), "--sites", "0"]).exit_code == 2


def test_help_lists_the_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "build-benchmark" in result.output
