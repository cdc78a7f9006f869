"""``autodp data ...``: build the medical QA benchmark the demo sites train and evaluate on.

Exit codes: 0 ok, 2 bad input (an argument out of range, the pycmekg package missing, an unwritable
output folder).
"""

from __future__ import annotations

from pathlib import Path

import typer

from protos.errors import AutodpError

__all__ = ["app"]

EXIT_BAD_INPUT = 2  # protos.cli's code; not imported from there, which imports the command groups

app = typer.Typer(help="Build site datasets: the PyCMeKG medical QA benchmark.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def _group() -> None:
    """Build site datasets: the PyCMeKG medical QA benchmark."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


@app.command("build-benchmark")
def build_benchmark_cmd(
    out: Path = typer.Option(..., "--out", help="folder to write <site>/train.jsonl, <site>/eval.jsonl, manifest.json"),
    sites: int = typer.Option(3, min=1, max=26, help="number of hospital sites"),
    seed: int = typer.Option(0, min=0, help="seed: the same seed gives identical files"),
    pairs: int = typer.Option(12000, min=10, help="training pairs over all sites (noisy rows included)"),
    eval_per_site: int = typer.Option(200, min=0, max=2000, help="clean held-out pairs per site"),
) -> None:
    """Write a non-IID, noise-labelled Chinese medical QA benchmark for SITES hospitals."""
    from rich.console import Console
    from rich.table import Table

    from site_agent.data.benchmark.build import build_benchmark
    from site_agent.data.benchmark.noise import CLEAN

    try:
        manifest = build_benchmark(out, sites=sites, seed=seed, total_pairs=pairs, eval_per_site=eval_per_site)
    except AutodpError as e:
        raise _fail(str(e)) from None
    table = Table(title=f"benchmark (seed {seed}) written to {out}")
    for column in ("site", "profile", "train", "noisy", "eval", "departments", "top noise"):
        table.add_column(column, justify="right" if column in ("train", "noisy", "eval", "departments") else "left")
    for s in manifest.sites:
        noisy = {k: v for k, v in s.labels.items() if k != CLEAN}
        top = max(noisy, key=lambda k: (noisy[k], k)) if noisy else "-"
        table.add_row(s.site_id, s.noise_profile, str(s.train_rows), f"{sum(noisy.values())} ({s.noise_rate:.0%})",
                      str(s.eval_rows), str(len(s.departments)), top)
    Console(width=110).print(table)
