"""`autodp site make-toy-data`: writes the toy set; an output it cannot write is one line and exit 2.
`autodp site run`: SIGTERM during start-up stops at once; once serving, after the current answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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


class _Sleepy:
    """A site agent stand-in: SIGTERMs its own process during start-up (``at="start"``) or while serving."""

    closed = 0

    def __init__(self, cfg: object, stop: threading.Event, at: str = "start") -> None:
        self.stop = stop
        if at == "start":
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 10  # start-up work that would run on; the handler raises within it
            while time.monotonic() < deadline:
                time.sleep(0.01)
            raise AssertionError("start-up was not interrupted")

    def run(self, max_tasks: int | None = None) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        assert self.stop.wait(10), "the stop handler did not set the stop event"
        return 0

    def close(self) -> None:
        type(self).closed += 1


@pytest.fixture
def own_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("at", ["start", "serving"])
def test_sigterm_stops_start_up_at_once_and_a_serving_site_after_its_answer(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, own_signals: None, at: str) -> None:
    import site_agent.agent
    import site_agent.config

    monkeypatch.setattr(site_agent.config, "load_config", lambda path: object())
    monkeypatch.setattr(site_agent.agent, "SiteAgent", lambda cfg, stop: _Sleepy(cfg, stop, at))
    _Sleepy.closed = 0
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "site.yaml")])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - t0 < 9
    if at == "start":
        assert "site stopped during start-up" in result.output and _Sleepy.closed == 0
    else:
        assert "site stopped after answering 0 task(s)" in result.output and _Sleepy.closed == 1
