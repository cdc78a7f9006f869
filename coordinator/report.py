"""What a search found, built from the store alone: per strategy, per site and aggregated across sites
(mean weighted by each site's declared size bucket). Written as JSON at the end of a search."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.store import Store, TaskState
from protos.views import ResultReport, Strategy, TaskStatus

__all__ = ["SearchOutcome", "SiteResult", "StrategyOutcome", "build_outcome", "write_json_atomic"]


@dataclass(frozen=True)
class SiteResult:
    site_id: str
    state: str               # task state at the coordinator: done / failed / pending / leased
    status: str | None       # the site's TaskStatus when it answered
    score: float | None
    eval_seconds: int = 0
    cache_hits: int = 0
    epsilon_spent: float = 0.0


@dataclass(frozen=True)
class StrategyOutcome:
    round_no: int
    index: int
    strategy: Strategy
    sites: tuple[SiteResult, ...]
    aggregate: float | None  # size-weighted mean of OK scores; None when no site answered OK

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round_no, "index": self.index, "key": self.strategy.key,
            "strategy": self.strategy.describe(), "calls": self.strategy.canonical(),
            "aggregate_score": self.aggregate,
            "sites": {s.site_id: {"state": s.state, "status": s.status, "score": s.score,
                                  "eval_seconds": s.eval_seconds, "cache_hits": s.cache_hits,
                                  "epsilon_spent": s.epsilon_spent} for s in self.sites},
        }


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    strategies: tuple[StrategyOutcome, ...]
    site_ids: tuple[str, ...]
    reason: str = ""
    notes: tuple[str, ...] = field(default=())

    def with_reason(self, reason: str) -> SearchOutcome:
        return replace(self, reason=reason)

    @property
    def best(self) -> StrategyOutcome | None:
        scored = [o for o in self.strategies if o.aggregate is not None]
        return max(scored, key=lambda o: (o.aggregate, -o.round_no, -o.index)) if scored else None

    def best_for_site(self, site_id: str) -> tuple[StrategyOutcome, float] | None:
        pairs = [(o, r.score) for o in self.strategies for r in o.sites
                 if r.site_id == site_id and r.status == TaskStatus.OK.value and r.score is not None]
        if not pairs:
            return None
        o, score = max(pairs, key=lambda p: p[1])
        return o, score

    def to_json(self) -> dict[str, Any]:
        best = self.best
        per_site: dict[str, Any] = {}
        for site in self.site_ids:
            found = self.best_for_site(site)
            per_site[site] = None if found is None else {
                "strategy": found[0].strategy.describe(), "key": found[0].strategy.key, "score": found[1]}
        return {
            "search_id": self.search_id, "stopped_because": self.reason, "sites": list(self.site_ids),
            "notes": list(self.notes),
            "best": None if best is None else best.to_json(),
            "best_per_site": per_site,
            "strategies": [o.to_json() for o in self.strategies],
        }


def build_outcome(store: Store, search_id: str) -> SearchOutcome:
    weights = {s.site_id: s.size_bucket.weight for s in store.list_sites()}
    tasks = store.tasks_for_search(search_id)
    outcomes: list[StrategyOutcome] = []
    notes: list[str] = []
    for round_no, strategies in store.get_rounds(search_id):
        for index, strategy in enumerate(strategies):
            mine = [(rec, res) for rec, res in tasks
                    if rec.round_no == round_no and rec.task.strategy.key == strategy.key]
            sites = tuple(_site_result(rec.site_id, rec.state, rec.failure, res) for rec, res in mine)
            ok = [(weights.get(s.site_id, 1.0), s.score) for s in sites
                  if s.status == TaskStatus.OK.value and s.score is not None]
            total = sum(w for w, _ in ok)
            aggregate = sum(w * v for w, v in ok) / total if ok and total > 0 else None
            outcomes.append(StrategyOutcome(round_no, index, strategy, sites, aggregate))
            for s in sites:
                if s.status is None:
                    notes.append(f"round {round_no} strategy {index}: site {s.site_id} did not answer ({s.state})")
    site_ids = tuple(sorted({rec.site_id for rec, _ in tasks}))
    return SearchOutcome(search_id, tuple(outcomes), site_ids, notes=tuple(notes))


def _site_result(site_id: str, state: TaskState, failure: str | None, res: ResultReport | None) -> SiteResult:
    if res is None:
        return SiteResult(site_id, failure or state.value, None, None)
    return SiteResult(site_id, state.value, res.status.value,
                      res.score if res.status is TaskStatus.OK else None,
                      res.eval_seconds, res.cache_hits, res.epsilon_spent)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
