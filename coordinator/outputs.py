"""What a finished search leaves on disk, beside ``search.report``: the JSON record, the self-contained
HTML report (plots against the baselines run on the same budget) and the winning strategy as a YAML recipe
a hospital re-runs with ``autodp site process``. Every file is written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import SearchConfig
from coordinator.report import SearchOutcome, write_json_atomic

__all__ = ["SearchFiles", "record", "write_outputs"]


@dataclass(frozen=True)
class SearchFiles:
    json: Path
    html: Path
    recipe: Path | None  # None when nothing scored


def record(outcome: SearchOutcome, baselines: Sequence[SearchOutcome] = (), recipe: Path | None = None
           ) -> dict[str, Any]:
    """The JSON record: the search, the recipe's path and a summary of each baseline at equal budget."""
    data = outcome.to_json()
    data["recipe"] = None if recipe is None else str(recipe)
    data["baselines"] = {
        b.proposer or b.search_id: {
            "search_id": b.search_id, "evaluations": b.evaluations, "stopped_because": b.reason,
            "best_score": None if b.best is None else b.best.aggregate,
            "best_strategy": None if b.best is None else b.best.strategy.describe(),
            "best_so_far": b.best_so_far()}
        for b in baselines}
    return data


def write_outputs(cfg: SearchConfig, outcome: SearchOutcome, baselines: Sequence[SearchOutcome] = ()
                  ) -> SearchFiles:
    from coordinator.report_html import write_html  # lazy: matplotlib
    from protos.recipe import recipe_from_strategy, write_recipe

    recipe: Path | None = None
    best = outcome.best
    if best is not None:
        recipe = cfg.recipe
        write_recipe(recipe, recipe_from_strategy(
            best.strategy, search_id=cfg.search_id, score=best.aggregate,
            rounds=max(o.round_no for o in outcome.strategies), evaluations=outcome.evaluations,
            use_screening=cfg.settings.use_screening))
    compare = []
    for b in baselines:
        data = record(b)
        write_json_atomic(cfg.report.with_name(f"{cfg.report.stem}-{b.proposer or b.search_id}.json"), data)
        compare.append(data)
    main = record(outcome, baselines, recipe)
    write_json_atomic(cfg.report, main)
    write_html(cfg.html_report, main, compare)
    return SearchFiles(cfg.report, cfg.html_report, recipe)
