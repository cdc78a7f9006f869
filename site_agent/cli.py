"""``autodp site ...``: run a site agent, inspect what it publishes, apply a search's winning recipe to the
site's data, make the toy demo data.

Exit codes: 0 ok, 2 bad input (config, policy, data, certificates, a recipe this site refuses, an output
that exists), 3 the coordinator refused this site.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import typer

from protos.errors import AutodpError
from protos.runtime import StopRequested, install_abort_handlers, install_stop_handlers, setup_logging

app = typer.Typer(help="Run and inspect a site agent (inside the hospital).", no_args_is_help=True)

CONFIG = typer.Option(..., "--config", "-c", help="the site's YAML config", exists=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(config: Path = CONFIG,
        max_tasks: int | None = typer.Option(None, min=1, help="stop after answering this many tasks"),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Dial out to the coordinator and answer tasks until stopped (SIGTERM or Ctrl-C)."""
    from site_agent.agent import SiteAgent
    from site_agent.client import CoordinatorRefused
    from site_agent.config import load_config

    setup_logging(verbose)
    stop = threading.Event()
    agent = None
    install_abort_handlers()  # start-up (embeddings, screener) stops at once on SIGTERM / Ctrl-C
    try:
        agent = SiteAgent(load_config(config), stop)
        install_stop_handlers(stop)  # from here on a stop finishes the current answer first
    except AutodpError as e:
        raise _fail(str(e)) from None
    except StopRequested:
        if agent is not None:
            agent.close()
        typer.echo("site stopped during start-up", err=True)
        raise typer.Exit(0) from None
    try:
        done = agent.run(max_tasks=max_tasks)
    except CoordinatorRefused as e:
        raise _fail(str(e), 3) from None
    finally:
        agent.close()
    typer.echo(f"site stopped after answering {done} task(s)")


@app.command()
def catalog(config: Path = CONFIG) -> None:
    """Print, as JSON schema, the operators this site publishes (registered and allowed by its policy)."""
    from site_agent.config import load_config
    from site_agent.policy import load_policy, published_catalog

    try:
        policy = load_policy(load_config(config).policy)
    except AutodpError as e:
        raise _fail(str(e)) from None
    out = {spec.name: {"team": spec.team.value, "version": spec.version, "params": spec.json_schema()}
           for spec in published_catalog(policy)}
    typer.echo(json.dumps(out, indent=2))


@app.command()
def process(config: Path = CONFIG,
            recipe: Path = typer.Option(..., "--recipe", "-r", help="the recipe YAML a search wrote"),
            output: Path = typer.Option(..., "--output", "-o", help="where to write the processed dataset: "
                                        ".jsonl, .parquet or .csv"),
            screening: bool | None = typer.Option(
                None, "--screening/--no-screening",
                help="process only the rows the screening model marks noisy (default: as the recipe says)"),
            force: bool = typer.Option(False, "--force", help="overwrite the output file if it exists"),
            verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Apply a search's winning recipe to this site's FULL data and write the processed dataset locally.

    The recipe is checked against this site's policy first, like any task; nothing leaves the site.
    """
    from rich.console import Console

    from protos.recipe import load_recipe
    from site_agent.config import load_config
    from site_agent.process import process_dataset

    setup_logging(verbose)
    if output.exists() and not force:
        raise _fail(f"{output} already exists (use --force to overwrite it)")
    console = Console(stderr=True)
    try:
        cfg = load_config(config)
        rec = load_recipe(recipe)
        with console.status("applying the recipe") as status:
            summary = process_dataset(cfg, rec, output, use_screening=screening, overwrite=force,
                                      progress=lambda msg: status.update(msg))
    except AutodpError as e:
        raise _fail(str(e)) from None
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"wrote {summary.rows_out} rows to {output}")


@app.command("make-toy-data")
def make_toy_data(out: Path = typer.Option(..., help="JSONL file to write"),
                  n: int = typer.Option(300, min=10, max=10_512), seed: int = typer.Option(0, min=0),
                  noise_rate: float = typer.Option(0.3, min=0.0, max=0.9)) -> None:
    """Write the TOY placeholder dataset (template QA pairs with injected noise) for quick tests; the demo
    uses the PyCMeKG medical benchmark (autodp data build-benchmark)."""
    from site_agent.data.loading import save_pairs
    from site_agent.data.toy import make_toy_dataset

    batch, labels = make_toy_dataset(n, seed, noise_rate)
    try:
        save_pairs(batch, out)
    except OSError as e:
        raise _fail(f"{out}: cannot write ({type(e).__name__})") from None
    noisy = sum(label != "clean" for label in labels)
    typer.echo(f"wrote {n} toy pairs ({noisy} with injected noise) to {out}")


def _federated() -> None:
    # ``autodp site federated``: the site's part in federated LoRA training (off unless the config enables it)
    from site_agent.federated.cli import join

    app.command("federated", help="Take part in federated LoRA training of a search's recipe (off unless "
                                  "federated_training.enabled: true); see docs/federated-training.md.")(join)


_federated()
