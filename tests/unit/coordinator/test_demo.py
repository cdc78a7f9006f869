"""`autodp demo run`: a wrong option is bad input (exit 2), found before anything is wiped or started; the demo
wipes only a folder that is new, empty or one it made."""

from __future__ import annotations

import signal
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


def test_the_demo_wipes_only_a_folder_it_made(tmp_path: Path) -> None:
    from coordinator.demo import DEMO_MARKER, is_demo_folder

    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "keep.txt").write_text("mine")
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, ["--workdir", str(home), "--proposer", "random"])
    assert result.exit_code == 2, result.output
    assert "not empty and not a demo folder" in result.output
    assert (home / "notes" / "keep.txt").read_text() == "mine"
    assert signal.getsignal(signal.SIGTERM) == before  # the demo's SIGTERM handler is not left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    made = tmp_path / "made"
    made.mkdir()
    (made / DEMO_MARKER).write_text("")
    (made / "anything").write_text("")
    old = tmp_path / "old-demo"  # a demo folder from before the marker: its layout
    (old / "certs").mkdir(parents=True)
    (old / "certs" / "ca.crt").write_text("")
    (old / "logs").mkdir()
    (old / "coordinator.yaml").write_text("")
    assert [is_demo_folder(p) for p in (home, empty, made, old, tmp_path / "missing")] == [False, True, True, True,
                                                                                          False]
