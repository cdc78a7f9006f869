"""``autodp train ...``: after a search, train a LoRA adapter across the sites on the chosen strategy.

``autodp train federated --config coordinator.yaml --recipe search-report.recipe.yaml`` starts Flower's
SuperLink (TLS, SuperNode authentication with the sites' certificate keys), runs FedAvg of the LoRA
adapter for ``--rounds`` rounds, sends the final adapter to every site and writes it (safetensors + PEFT
config + a run summary) to ``--output``. Each site joins with
``autodp site federated --config site.yaml --recipe <the same recipe>``, and only when its config
enables ``federated_training``: in this phase adapter weights, not only scores, leave the sites (see
docs/federated-training.md).

Exit codes: 0 the run completed, 1 no site returned a usable update (or stopped), 2 bad input (config, recipe,
certificates, options), 3 Flower could not start or the sites did not all connect.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Literal

import typer

from protos.config import first_error
from protos.errors import AutodpError

__all__ = ["app"]

app = typer.Typer(help="Train on the chosen strategy after a search (federated LoRA; off at every site unless "
                  "it enables it).", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """Train on the chosen strategy after a search."""


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _site_certs(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        site, sep, path = v.partition("=")
        if not sep or not site or not path:
            raise _fail(f"--site-cert takes SITE=PATH, got '{v[:80]}'")
        out[site] = Path(path)
    return out


@app.command()
def federated(
    config: Path = typer.Option(..., "--config", "-c", help="the coordinator's YAML config (TLS, audit key, "
                                "sites)"),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="the recipe of the search whose strategy the sites "
                                "applied"),
    listen: str = typer.Option("127.0.0.1:9093", "--listen", help="host:port of the Flower SuperLink; the sites "
                               "dial it, so the coordinator certificate must name the host"),
    rounds: int = typer.Option(3, "--rounds", min=1, max=1000, help="FedAvg rounds"),
    local_steps: int = typer.Option(20, "--local-steps", min=1, max=10_000, help="training steps per site per round"),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, max=1.0, help="AdamW learning rate of the LoRA matrices"),
    lora_r: int = typer.Option(8, "--lora-r", min=1, max=256),
    lora_alpha: int = typer.Option(16, "--lora-alpha", min=1, max=4096),
    seq_len: int = typer.Option(128, "--seq-len", min=8, max=8192),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=1024),
    seed: int = typer.Option(0, "--seed", min=0, help="adapter initialisation (the same at every site) and "
                             "batch order"),
    loss_mean: Literal["row", "token"] = typer.Option("row", "--loss-mean", help="how a step averages its "
                                                      "loss: row (every row weighs the same) or token (every "
                                                      "answer token does); sites with DP-SGD accept row only"),
    output: Path | None = typer.Option(None, "--output", "-o", help="folder of the final adapter "
                                       "(default: <state_dir>/federated/adapter)"),
    site_cert: list[str] = typer.Option([], "--site-cert", help="SITE=PATH of a site's certificate (default: "
                                        "site-<id>.crt beside the CA certificate); repeatable"),
    round_timeout: float = typer.Option(3600.0, "--round-timeout", min=1.0, help="seconds to wait for a round's "
                                        "updates"),
    connect_timeout: float = typer.Option(600.0, "--connect-timeout", min=1.0, help="seconds to wait for every "
                                          "site to connect"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Federated LoRA training of the chosen strategy across the registered sites (FedAvg of the adapter)."""
    from pydantic import ValidationError

    from coordinator.config import load_config
    from coordinator.federated.errors import NoUsableUpdate, SitesMissing
    from protos.federated import FederatedError, RoundSettings
    from protos.recipe import load_recipe
    from protos.runtime import setup_logging

    setup_logging(verbose)
    if not verbose:  # one line per HTTP call and per database plug-in: noise for an operator
        for name in ("httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    certs = _site_certs(site_cert)
    try:
        settings = RoundSettings(local_steps=local_steps, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
                                 seq_len=seq_len, batch_size=batch_size, seed=seed, loss_mean=loss_mean)
    except ValidationError as e:
        loc, why, _ = first_error(e)
        raise _fail(f"option '{loc[0] if loc else 'settings'}': {why}") from None
    try:
        cfg = load_config(config)
        rec = load_recipe(recipe)
    except AutodpError as e:
        raise _fail(str(e)) from None
    typer.echo(f"search {rec.search_id}: {rec.to_strategy().describe()}", err=True)

    from coordinator.federated.launch import LaunchOptions, train_federated

    opts = LaunchOptions(listen=listen, output=output, site_certs=certs, round_timeout_s=round_timeout,
                         connect_timeout_s=connect_timeout)
    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the context managers that stop the SuperLink

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = train_federated(cfg, rec.search_id, rounds, settings, opts, say=lambda m: typer.echo(m, err=True))
    except KeyboardInterrupt:
        raise _fail("stopped before the run finished", 1) from None
    except NoUsableUpdate as e:
        raise _fail(str(e), 1) from None
    except (SitesMissing, FederatedError) as e:
        raise _fail(str(e), 3) from None
    except AutodpError as e:
        raise _fail(str(e)) from None
    out = opts.output or cfg.state_dir / "federated" / "adapter"
    typer.echo(f"final adapter: {out / summary['adapter']} (sha256 {summary['final_sha256'][:16]}, "
               f"{summary['parameters']} parameters); run summary: {out / 'federated-training.json'}", err=True)
    typer.echo(json.dumps({k: summary[k] for k in ("run_id", "search_id", "rounds", "sites", "final_sha256",
                                                   "final_delivery")}, indent=2))


if __name__ == "__main__":
    app()
