"""``autodp coordinator ...``: serve sites and run a search.

Exit codes: 0 ok, 2 bad input (config, certificates), 4 the search failed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import typer

from protos.errors import AutodpError
from protos.runtime import install_stop_handlers, setup_logging

app = typer.Typer(help="Run the coordinator (never sees a record).", no_args_is_help=True)
log = logging.getLogger("autodp.coordinator")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", help="the coordinator's YAML config"),
          exit_when_done: bool | None = typer.Option(None, help="exit once the configured search finishes"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Serve registered sites over mutual TLS; run the search in the config, if any."""
    from coordinator.config import load_config
    from coordinator.report import write_json_atomic
    from coordinator.search import run_search
    from coordinator.server import start_server

    setup_logging(verbose)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        cfg = load_config(config, exit_when_done=exit_when_done)
        server = start_server(cfg)
    except (AutodpError, OSError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"coordinator listening on port {server.port}", err=True)
    try:
        if cfg.search is not None:
            def progress(round_no: int, done: int, total: int) -> None:
                log.debug("round %d: %d/%d tasks final", round_no, done, total)

            outcome = run_search(server.service, cfg.search, stop, progress)
            write_json_atomic(cfg.search.report, outcome.to_json())
            best = outcome.best
            log.info("search %s finished (%s); best: %s", cfg.search.search_id, outcome.reason,
                     "none" if best is None else f"{best.strategy.describe()} score {best.aggregate:+.4f}")
            typer.echo(f"search report written to {cfg.search.report}", err=True)
            if cfg.exit_when_done:
                stop.set()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
