"""What a search found, built from the store alone: per strategy, per site and aggregated across sites
(mean weighted by each site's declared size bucket), per round, and per site totals of time spent, time
saved and epsilon spent. Written as JSON at the end of a search (and after every round).

With the LLM meta-agent, each round also records how it was proposed (``proposal``: calls to the model, how
many strategies it gave, how many the seeded fill added, repair summaries; counts only) and each strategy
its ``origin``: ``model`` or ``fill``; both are null for the other proposers.

Time saved is partly measured and partly estimated, and the record says which: the cache's saving is what
the reused steps took when they ran (measured at the site); what sampling (DPS) and screening (PTS) saved
is estimated by scaling the measured time to the whole data set, assuming cost linear in rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.store import Origin, RoundProposal, Store, TaskState
from protos.files import write_text_atomic
from protos.views import ResultReport, Strategy, TaskStatus

__all__ = ["SearchOutcome", "SiteResult", "StrategyOutcome", "build_outcome", "write_json_atomic"]

_MAX_SCALE = 1000.0  # an estimate never scales a measured time by more than this


@dataclass(frozen=True)
class SiteResult:
    site_id: str
    state: str               # task state at the coordinator: done / failed / pending / leased
    status: str | None       # the site's TaskStatus when it answered
    score: float | None
    eval_ms: int = 0
    processing_ms: int = 0
    cache_hits: int = 0      # operator steps reused from the site's prefix cache
    operators_run: int = 0
    cache_saved_ms: int = 0
    sampled_permille: int = 1000
    targets_permille: int = 1000
    epsilon_spent: float = 0.0
    epsilon_remaining: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == TaskStatus.OK.value

    def estimated_saved_by_sampling_ms(self) -> int:
        """Evaluation and processing time the full data set would have added (linear-cost estimate)."""
        if not self.ok:
            return 0
        s = max(self.sampled_permille, 1) / 1000.0
        t = max(self.targets_permille, 1) / 1000.0
        eval_full = self.eval_ms * min(1.0 / s, _MAX_SCALE)
        proc_full = self.processing_ms * min(1.0 / (s * t), _MAX_SCALE)
        return round(eval_full + proc_full - self.eval_ms - self.processing_ms)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "status": self.status, "score": self.score, "eval_ms": self.eval_ms,
                "processing_ms": self.processing_ms, "cache_hits": self.cache_hits,
                "operators_run": self.operators_run, "cache_saved_ms": self.cache_saved_ms,
                "sampled_permille": self.sampled_permille, "targets_permille": self.targets_permille,
                "epsilon_spent": self.epsilon_spent, "epsilon_remaining": self.epsilon_remaining}


@dataclass(frozen=True)
class StrategyOutcome:
    round_no: int
    index: int
    strategy: Strategy
    sites: tuple[SiteResult, ...]
    aggregate: float | None  # size-weighted mean of OK scores; None when no site answered OK
    origin: Origin | None = None  # meta-agent rounds: the model's or the fill's; None: other proposers, unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round_no, "index": self.index, "key": self.strategy.key,
            "strategy": self.strategy.describe(), "calls": self.strategy.canonical(),
            "aggregate_score": self.aggregate, "origin": self.origin,
            "sites": {s.site_id: s.to_json() for s in self.sites},
        }


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    strategies: tuple[StrategyOutcome, ...]
    site_ids: tuple[str, ...]
    reason: str = ""
    notes: tuple[str, ...] = field(default=())
    proposer: str = ""
    proposals: Mapping[int, RoundProposal] = field(default_factory=dict)  # round -> how the meta-agent proposed

    def with_reason(self, reason: str) -> SearchOutcome:
        return replace(self, reason=reason)

    @property
    def best(self) -> StrategyOutcome | None:
        scored = [o for o in self.strategies if o.aggregate is not None]
        return max(scored, key=lambda o: (o.aggregate, -o.round_no, -o.index)) if scored else None

    @property
    def evaluations(self) -> int:
        """Strategies proposed and sent (the search's budget unit)."""
        return len(self.strategies)

    def best_so_far(self) -> list[float | None]:
        """After each strategy, in proposal order: the best aggregate score seen so far."""
        curve: list[float | None] = []
        best: float | None = None
        for o in self.strategies:
            if o.aggregate is not None and (best is None or o.aggregate > best):
                best = o.aggregate
            curve.append(best)
        return curve

    def best_for_site(self, site_id: str) -> tuple[StrategyOutcome, float] | None:
        pairs = [(o, r.score) for o in self.strategies for r in o.sites
                 if r.site_id == site_id and r.ok and r.score is not None]
        if not pairs:
            return None
        o, score = max(pairs, key=lambda p: p[1])
        return o, score

    def rounds(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        best_so_far: float | None = None
        for round_no in sorted({o.round_no for o in self.strategies}):
            scores = [o.aggregate for o in self.strategies if o.round_no == round_no and o.aggregate is not None]
            best = max(scores) if scores else None
            if best is not None and (best_so_far is None or best > best_so_far):
                best_so_far = best
            out.append({"round": round_no, "proposed": sum(o.round_no == round_no for o in self.strategies),
                        "evaluated": len(scores), "best": best,
                        "mean": sum(scores) / len(scores) if scores else None, "best_so_far": best_so_far,
                        "proposal": proposal.summary() if (proposal := self.proposals.get(round_no)) else None})
        return out

    def per_site(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for site in self.site_ids:
            mine = [r for o in self.strategies for r in o.sites if r.site_id == site]
            ok = [r for r in mine if r.ok]
            steps = sum(r.cache_hits + r.operators_run for r in ok)
            remaining = [r.epsilon_remaining for r in mine if r.status is not None and r.epsilon_remaining is not None]
            out[site] = {
                "tasks": len(mine), "ok": len(ok), "not_answered": sum(r.status is None for r in mine),
                "eval_ms": sum(r.eval_ms for r in ok), "processing_ms": sum(r.processing_ms for r in ok),
                "cache_saved_ms": sum(r.cache_saved_ms for r in ok),
                "est_saved_by_sampling_ms": sum(r.estimated_saved_by_sampling_ms() for r in ok),
                "cache_hit_rate": sum(r.cache_hits for r in ok) / steps if steps else 0.0,
                "epsilon_spent": sum(r.epsilon_spent for r in mine),
                "epsilon_remaining": min(remaining) if remaining else None,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        best = self.best
        per_site: dict[str, Any] = {}
        for site in self.site_ids:
            found = self.best_for_site(site)
            per_site[site] = None if found is None else {
                "strategy": found[0].strategy.describe(), "key": found[0].strategy.key, "score": found[1]}
        return {
            "search_id": self.search_id, "proposer": self.proposer, "stopped_because": self.reason,
            "sites": list(self.site_ids), "evaluations": self.evaluations, "notes": list(self.notes),
            "best": None if best is None else best.to_json(),
            "best_per_site": per_site,
            "rounds": self.rounds(),
            "best_so_far": self.best_so_far(),
            "per_site": self.per_site(),
            "strategies": [o.to_json() for o in self.strategies],
        }


def _proposer_of(store: Store, search_id: str) -> str:
    record = store.get_search(search_id)
    if record is None:
        return ""
    try:
        name = json.loads(record.config_json).get("proposer", "")
    except (ValueError, AttributeError):
        return ""
    return name if isinstance(name, str) else ""


def build_outcome(store: Store, search_id: str) -> SearchOutcome:
    weights = {s.site_id: s.size_bucket.weight for s in store.list_sites()}
    tasks = store.tasks_for_search(search_id)
    outcomes: list[StrategyOutcome] = []
    notes: list[str] = []
    proposals = store.get_round_proposals(search_id)
    for round_no, strategies in store.get_rounds(search_id):
        origins = proposals[round_no].origins if round_no in proposals else ()
        for index, strategy in enumerate(strategies):
            mine = [(rec, res) for rec, res in tasks
                    if rec.round_no == round_no and rec.task.strategy.key == strategy.key]
            sites = tuple(_site_result(rec.site_id, rec.state, rec.failure, res) for rec, res in mine)
            ok = [(weights.get(s.site_id, 1.0), s.score) for s in sites if s.ok and s.score is not None]
            total = sum(w for w, _ in ok)
            aggregate = sum(w * v for w, v in ok) / total if ok and total > 0 else None
            origin = origins[index] if index < len(origins) else None
            outcomes.append(StrategyOutcome(round_no, index, strategy, sites, aggregate, origin))
            for s in sites:
                if s.status is None:
                    notes.append(f"round {round_no} strategy {index}: site {s.site_id} did not answer ({s.state})")
    site_ids = tuple(sorted({rec.site_id for rec, _ in tasks}))
    return SearchOutcome(search_id, tuple(outcomes), site_ids, notes=tuple(notes),
                         proposer=_proposer_of(store, search_id), proposals=proposals)


def _site_result(site_id: str, state: TaskState, failure: str | None, res: ResultReport | None) -> SiteResult:
    if res is None:
        return SiteResult(site_id, failure or state.value, None, None)
    return SiteResult(site_id, state.value, res.status.value, res.score if res.status is TaskStatus.OK else None,
                      eval_ms=res.eval_ms, processing_ms=res.processing_ms, cache_hits=res.cache_hits,
                      operators_run=res.operators_run, cache_saved_ms=res.cache_saved_ms,
                      sampled_permille=res.sampled_permille, targets_permille=res.targets_permille,
                      epsilon_spent=res.epsilon_spent, epsilon_remaining=res.epsilon_remaining)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False))
