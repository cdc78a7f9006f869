"""The one ``autodp`` command line.

Exit codes (all commands):
  0  success
  1  the check failed (for example, audit verify found a bad entry)
  2  bad input: a missing file, an invalid config, a wrong argument
  3  a peer could not be reached or refused us
  4  internal error (a bug: please report it)

Command groups are registered by each installed package under the ``autodp.cli`` entry-point group
(see pyproject.toml), so this shared package never imports ``coordinator`` or ``site_agent``.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import entry_points

import typer

from protos.errors import AutodpError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_INTERNAL = 0, 1, 2, 3, 4

app = typer.Typer(
    name="autodp",
    help="Federated, auditable search for the best data-processing strategy to fine-tune an LLM on private "
         "hospital data.\n\n" + (__doc__.split("\n\n")[1] if __doc__ else ""),  # + the exit codes
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _add_groups() -> None:
    from protos.audit_cli import app as audit_app
    from protos.certs_cli import app as certs_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(certs_app, name="certs")
    for ep in sorted(entry_points(group="autodp.cli"), key=lambda e: e.name):
        app.add_typer(ep.load(), name=ep.name)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def main() -> None:
    _add_groups()
    try:
        app()
    except AutodpError as e:  # a user-facing error that escaped a command: no traceback
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except Exception:  # a bug: the traceback for the report, and the documented code (not 1, "check failed")
        traceback.print_exc()
        typer.echo("error: internal error (a bug: please report it with the traceback above)", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
