"""A site's part in federated LoRA training: ``python -m site_agent.federated --config site.yaml --recipe
recipe.yaml`` (the command ``join`` of :data:`app`).

It refuses to start unless the site config sets ``federated_training.enabled: true``. It then applies
the recipe to the site's full data (or takes ``--processed``, the output of ``autodp site process``),
starts a Flower SuperNode that dials out to the coordinator's SuperLink, trains every round with this
site's own ClientApp, and stops after the final adapter. The final adapter and a report (base vs final
held-out loss) are written under ``--output`` (default ``<state_dir>/federated``); they stay here.

Exit codes: 0 the run completed, 1 it ended without a final adapter (time-out, the coordinator's run
failed), 2 bad input (config, recipe, data, federated training not enabled), 3 the SuperLink could not
be reached or dropped this site. A stop (SIGTERM, Ctrl-C) while the site prepares ends the command at once (exit 0);
once the SuperNode runs, it leaves the run cleanly.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import typer

from protos.errors import AutodpError
from protos.federated import FederatedError
from protos.runtime import StopRequested, install_abort_handlers, install_stop_handlers, setup_logging

__all__ = ["app", "join"]

app = typer.Typer(help="A site's part in federated LoRA training (off unless federated_training.enabled).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
log = logging.getLogger("autodp.site.federated")


@app.callback()
def _group() -> None:
    """A site's part in federated LoRA training."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("join")
def join(config: Path = typer.Option(..., "--config", "-c", help="the site's YAML config"),
         recipe: Path = typer.Option(..., "--recipe", "-r", help="the recipe YAML the search wrote"),
         processed: Path | None = typer.Option(None, "--processed", help="use this processed dataset (from "
                                               "`autodp site process`) instead of applying the recipe again"),
         superlink: str | None = typer.Option(None, "--superlink", help="host:port of the coordinator's SuperLink "
                                              "(default: federated_training.superlink)"),
         output: Path | None = typer.Option(None, "--output", "-o", help="where the final adapter and the report "
                                            "go (default: <state_dir>/federated)"),
         timeout: float | None = typer.Option(None, "--timeout", min=1.0, help="seconds to wait for the final "
                                              "adapter (default: federated_training.timeout_s)"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Train a LoRA adapter across sites on this site's processed data (adapter updates leave the site)."""
    from site_agent.config import load_config
    from site_agent.federated.errors import NotEnabled, RunTimedOut, SuperNodeFailed
    from site_agent.federated.session import open_session

    setup_logging(verbose)
    if not verbose:  # one line per HTTP call and per database plug-in: noise for an operator
        for name in ("httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    stop = threading.Event()
    install_abort_handlers()  # preparing (processing the data, loading the model) stops at once on SIGTERM
    try:
        cfg = load_config(config)
        if not cfg.federated_training.enabled:
            raise NotEnabled("federated training is off for this site: set federated_training.enabled: true "
                             "in its config (adapter weights, not only scores, leave the site in this phase)")
        fed = cfg.federated_training
        with open_session(cfg, recipe, processed=processed, output=output,
                          progress=lambda m: typer.echo(m, err=True)) as (session, node_factory):
            install_stop_handlers(stop)  # from here on a stop ends the SuperNode cleanly
            node = node_factory(superlink or fed.superlink)
            try:
                node.run(stop, timeout or fed.timeout_s)
            except RunTimedOut as e:
                raise _fail(str(e), 1) from None
            except (SuperNodeFailed, FederatedError) as e:
                raise _fail(str(e), 3) from None
            report = session.report
    except AutodpError as e:
        raise _fail(str(e)) from None
    except StopRequested:
        typer.echo("stopped before joining the training", err=True)
        raise typer.Exit(0) from None
    if report is None:
        raise _fail("the run ended without a final adapter (see this site's log)", 1)
    typer.echo(json.dumps({k: report[k] for k in ("run_id", "search_id", "rounds_trained", "examples",
                                                  "base_loss", "final_loss", "epsilon_spent", "final_sha256")},
                          indent=2))
