"""``autodp site ...``: run a site agent, inspect what it publishes, make the toy demo data.

Exit codes: 0 ok, 2 bad input (config, policy, data, certificates), 3 the coordinator refused this site.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import typer

from protos.errors import AutodpError
from protos.runtime import install_stop_handlers, setup_logging

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
    install_stop_handlers(stop)
    try:
        agent = SiteAgent(load_config(config), stop)
    except AutodpError as e:
        raise _fail(str(e)) from None
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


@app.command("make-toy-data")
def make_toy_data(out: Path = typer.Option(..., help="JSONL file to write"),
                  n: int = typer.Option(300, min=10, max=10_512), seed: int = typer.Option(0, min=0),
                  noise_rate: float = typer.Option(0.3, min=0.0, max=0.9)) -> None:
    """Write the TOY placeholder dataset (template QA pairs with injected noise) used by the demo until the
    real medical benchmark builder lands."""
    from site_agent.data.loading import save_pairs
    from site_agent.data.toy import make_toy_dataset

    batch, labels = make_toy_dataset(n, seed, noise_rate)
    save_pairs(batch, out)
    noisy = sum(label != "clean" for label in labels)
    typer.echo(f"wrote {n} toy pairs ({noisy} with injected noise) to {out}")
