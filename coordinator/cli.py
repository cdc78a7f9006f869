"""``autodp coordinator ...``: serve sites and run a search.

Exit codes: 0 ok, 1 stopped before the end (resumable), 2 bad input (config, certificates), 4 the search
scored nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from protos.errors import AutodpError
from protos.runtime import install_stop_handlers, setup_logging

if TYPE_CHECKING:
    from coordinator.config import CoordinatorConfig, SearchConfig
    from coordinator.report import SearchOutcome

app = typer.Typer(help="Run the coordinator (never sees a record).", no_args_is_help=True)
log = logging.getLogger("autodp.coordinator")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _search_and_report(server: Any, cfg: CoordinatorConfig, stop: threading.Event, live: bool) -> int:
    """Run the configured search and its baselines, write the JSON/HTML/recipe; the exit code."""
    from coordinator.console import SearchConsole
    from coordinator.outputs import record, write_outputs
    from coordinator.report import write_json_atomic
    from coordinator.search import baseline_configs, run_search

    search = cfg.search
    assert search is not None

    def run(sc: SearchConfig) -> SearchOutcome:
        def checkpoint(round_no: int, so_far: SearchOutcome, con: SearchConsole | None = None) -> None:
            write_json_atomic(sc.report, record(so_far.with_reason(f"running: round {round_no} done")))
            if con is not None:
                con.on_round(round_no, so_far)

        if not live:
            return run_search(server.service, sc, stop, None, checkpoint)
        with SearchConsole(sc.search_id, sc.rounds) as con:
            return run_search(server.service, sc, stop, con.progress, lambda r, o: checkpoint(r, o, con))

    main = run(search)
    baselines = [] if stop.is_set() else [run(bc) for bc in baseline_configs(search, main)]
    if stop.is_set():
        log.info("search %s stopped; start again to resume it", search.search_id)
        return 1
    files = write_outputs(search, main, baselines)
    best = main.best
    log.info("search %s finished (%s); best: %s", search.search_id, main.reason,
             "none" if best is None else f"{best.strategy.describe()} score {best.aggregate:+.4f}")
    typer.echo(f"search {search.search_id}: {main.reason}", err=True)
    if best is not None:
        typer.echo(f"best strategy: {best.strategy.describe()} (score {best.aggregate:+.4f} against no processing)",
                   err=True)
    for b in baselines:
        typer.echo(f"baseline {b.proposer}: best {'-' if b.best is None else f'{b.best.aggregate:+.4f}'} "
                   f"in {b.evaluations} evaluations", err=True)
    typer.echo(f"report: {files.json} and {files.html}", err=True)
    if files.recipe is not None:
        typer.echo(f"recipe: {files.recipe} (re-run at a site: autodp site process --recipe {files.recipe} "
                   "--config site.yaml --output processed.jsonl)", err=True)
    return 0 if best is not None else 4


def _start(config: Path, verbose: bool, **overrides: object) -> tuple[CoordinatorConfig, Any, threading.Event]:
    from coordinator.config import load_config
    from coordinator.server import start_server

    setup_logging(verbose)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        cfg = load_config(config, **overrides)
        server = start_server(cfg)
    except (AutodpError, OSError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"coordinator listening on port {server.port}", err=True)
    return cfg, server, stop


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", help="the coordinator's YAML config"),
          exit_when_done: bool | None = typer.Option(None, help="exit once the configured search finishes"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Serve registered sites over mutual TLS; run the search in the config, if any, then keep serving."""
    cfg, server, stop = _start(config, verbose, exit_when_done=exit_when_done)
    code = 0
    try:
        if cfg.search is not None:
            try:
                code = _search_and_report(server, cfg, stop, live=False)
            except AutodpError as e:  # a bad setting found when the search starts (e.g. the meta-agent's)
                raise _fail(str(e)) from None
            if cfg.exit_when_done:
                stop.set()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    if code and cfg.exit_when_done:
        raise typer.Exit(code)


@app.command()
def search(config: Path = typer.Option(..., "--config", "-c", help="the coordinator's YAML config, with a "
                                       "'search' section"),
           live: bool = typer.Option(True, help="rich progress bars and a table per round on the terminal"),
           verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Serve the sites for one search (resumed if its id is in the store), write its report and recipe, exit.

    Exit codes: 0 a best strategy was found, 1 stopped (run again to resume), 2 bad input, 4 nothing scored."""
    cfg, server, stop = _start(config, verbose)
    try:
        if cfg.search is None:
            raise _fail(f"{config}: no 'search' section: nothing to search")
        try:
            code = _search_and_report(server, cfg, stop, live=live)
        except AutodpError as e:  # a bad setting found when the search starts (e.g. the meta-agent's)
            raise _fail(str(e)) from None
    finally:
        server.stop()
    raise typer.Exit(code)


@app.command()
def report(record: Path = typer.Argument(..., help="a search's JSON record"),
           compare: list[Path] = typer.Option([], "--compare", help="JSON records of other searches to plot"),
           html: Path | None = typer.Option(None, "--html", help="where to write (default: beside the record)")
           ) -> None:
    """Render a search's JSON record as a self-contained HTML report with plots."""
    import json

    from coordinator.report_html import write_html

    def load(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise _fail(f"{path}: cannot read a JSON search record ({type(e).__name__})") from None
        if not isinstance(data, dict) or "strategies" not in data:
            raise _fail(f"{path}: not a search record (no 'strategies')")
        return data

    out = html or record.with_suffix(".html")
    data, others = load(record), [load(c) for c in compare]
    try:
        write_html(out, data, others)
    except OSError as e:
        raise _fail(f"{out}: cannot write the report ({type(e).__name__})") from None
    typer.echo(f"report written to {out}", err=True)
