"""The search, live in the terminal: a rich progress bar per round (tasks answered of tasks sent) and, after
each round, a table of its strategies with the aggregate and per-site scores. Writes to stderr; on a
terminal that is not interactive (a log file) rich prints the tables and skips the animation."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.report import SearchOutcome

__all__ = ["SearchConsole"]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


class SearchConsole:
    """Use as a context manager; pass ``progress`` and ``on_round`` to :func:`coordinator.search.run_search`."""

    def __init__(self, title: str, rounds: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.title, self.rounds = title, rounds
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=False)
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> SearchConsole:
        self._progress.start()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.stop()

    def progress(self, round_no: int, done: int, total: int) -> None:
        if round_no not in self._tasks:
            self._tasks[round_no] = self._progress.add_task(
                f"{self.title} round {round_no}/{self.rounds}: tasks answered", total=max(total, 1))
        self._progress.update(self._tasks[round_no], completed=done, total=max(total, 1))

    def on_round(self, round_no: int, outcome: SearchOutcome) -> None:
        table = Table(title=f"{self.title}: round {round_no}", title_justify="left", show_lines=False)
        table.add_column("#", justify="right")
        table.add_column("strategy", overflow="fold")
        table.add_column("aggregate", justify="right")
        for site in outcome.site_ids:
            table.add_column(site, justify="right")
        for o in (o for o in outcome.strategies if o.round_no == round_no):
            by_site = {r.site_id: r for r in o.sites}
            cells = []
            for site in outcome.site_ids:
                r = by_site.get(site)
                cells.append("-" if r is None else _fmt(r.score) if r.ok else (r.status or r.state))
            table.add_row(str(o.index), o.strategy.describe(), _fmt(o.aggregate), *cells)
        best = outcome.best
        self._progress.console.print(table)
        if best is not None:
            self._progress.console.print(f"best so far: {best.strategy.describe()} ({_fmt(best.aggregate)}, "
                                         f"round {best.round_no})")
