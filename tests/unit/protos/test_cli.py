"""The one ``autodp`` command line: its help states the exit codes, and every exit uses them."""

from __future__ import annotations

import sys

import pytest
import typer
from typer.testing import CliRunner

from protos import cli
from protos.errors import AutodpError


def test_top_level_help_is_for_users_and_lists_the_exit_codes() -> None:
    if not cli.app.registered_groups:
        cli._add_groups()
    result = CliRunner().invoke(cli.app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Exit codes" in result.output and "internal error" in result.output
    assert "entry-point" not in result.output  # the developer's note stays in the docstring


def _main_with(command: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cli, "app", command)
    monkeypatch.setattr(cli, "_add_groups", lambda: None)
    monkeypatch.setattr(sys, "argv", ["autodp"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert isinstance(exit_.value.code, int)
    return exit_.value.code


def test_a_bug_exits_4_with_its_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    crashing = typer.Typer(pretty_exceptions_enable=False)

    @crashing.command()
    def crash() -> None:
        raise ValueError("boom")

    assert _main_with(crashing, monkeypatch) == cli.EXIT_INTERNAL  # was 1, which means "a check failed"
    err = capsys.readouterr().err
    assert "ValueError: boom" in err and "internal error" in err


def test_a_user_error_that_escapes_exits_2_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    refusing = typer.Typer(pretty_exceptions_enable=False)

    @refusing.command()
    def refuse() -> None:
        raise AutodpError("no such file")

    assert _main_with(refusing, monkeypatch) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: no such file\n"


@pytest.mark.parametrize(("args", "says"), [(["audit", "verify", "--help"], "Audit log file"),
                                            (["certs", "show", "--help"], "A PEM certificate"),
                                            (["audit", "cross-check", "--help"], "The site's audit log")])
def test_a_positional_arguments_help_is_shown(args: list[str], says: str) -> None:
    """click 8.5 drops the help typer 0.20 gives arguments (requirements/constraints.txt pins click below it)."""
    if not cli.app.registered_groups:
        cli._add_groups()
    result = CliRunner().invoke(cli.app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert says in result.output
