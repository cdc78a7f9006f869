"""The search loop: propose a round of strategies, send one task per site per strategy, wait for results
(a slow or gone site does not stop the round: the round deadline does), aggregate, repeat.

All state lives in the store: a coordinator killed mid-round and started again finds its rounds, tasks and
results there and goes on without re-proposing or re-running anything (task ids are deterministic and
enqueueing is idempotent).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from coordinator.config import SearchConfig
from coordinator.proposers import Proposer, ScoredStrategy, create_proposer
from coordinator.report import SearchOutcome, build_outcome
from coordinator.service import CoordinatorService
from coordinator.store import Origin, RoundProposal, SearchState, SiteRecord, TaskState
from protos.catalog import check_strategy, index_catalog
from protos.views import OperatorSpec, Strategy, Task

if TYPE_CHECKING:
    from coordinator.agent.proposer import ProposalLog

__all__ = ["ProgressFn", "RoundFn", "baseline_configs", "common_catalog", "run_search", "task_id_for"]

log = logging.getLogger("autodp.search")

ProgressFn = Callable[[int, int, int], None]  # (round_no, finished tasks, total tasks)
RoundFn = Callable[[int, SearchOutcome], None]  # (round_no, the search so far) after each round
FINAL = (TaskState.DONE, TaskState.FAILED)


def task_id_for(search_id: str, round_no: int, index: int, strategy: Strategy, site_id: str) -> str:
    raw = f"{search_id}|{round_no}|{index}|{strategy.key}|{site_id}".encode()
    return "t-" + hashlib.sha256(raw).hexdigest()[:24]


def common_catalog(sites: Sequence[SiteRecord]) -> list[OperatorSpec]:
    """Operators every site offers (by name and version); the first site's bounds are proposed from and each
    site's own catalog is checked before a task is sent to it."""
    if not sites:
        return []
    first = index_catalog(sites[0].catalog)
    shared = set(first)
    for site in sites[1:]:
        mine = index_catalog(site.catalog)
        shared &= {n for n in mine if mine[n].version == first[n].version} if shared else set()
    return [first[n] for n in sorted(shared)]


def _wait_for_sites(service: CoordinatorService, cfg: SearchConfig, stop: threading.Event) -> list[SiteRecord]:
    deadline = time.monotonic() + cfg.wait_for_sites_s
    while not stop.is_set():
        sites = [s for s in service.store.list_sites() if s.catalog]
        if len(sites) >= cfg.min_sites or time.monotonic() >= deadline:
            return sites
        with service.changed:
            service.changed.wait(timeout=0.5)
    return []


def _log_of(proposer: Proposer, before: object, round_no: int) -> ProposalLog | None:
    """The meta-agent's log of the ``propose`` call just made: a fresh ``ProposalLog`` of this round on
    ``proposer.last`` (None for the other proposers, and for a call that left ``last`` as it was)."""
    last = getattr(proposer, "last", None)
    if last is None or last is before:
        return None
    from coordinator.agent.proposer import ProposalLog  # already loaded whenever a proposer keeps one

    return last if isinstance(last, ProposalLog) and last.round_no == round_no else None


def _round_proposal(logs: Sequence[ProposalLog], chosen: Sequence[Strategy],
                    origins: dict[str, Origin | None]) -> RoundProposal | None:
    """The round's logs summed into one record; ``origins`` of the strategies finally kept."""
    if not logs:
        return None
    problems = [p for log_ in logs for p in log_.problems]
    return RoundProposal(mode="choose" if logs[-1].mode == "choose" else "write",
                         prompt_version=logs[-1].prompt_version[:64], propose_calls=len(logs),
                         llm_calls=sum(x.llm_calls for x in logs), asked=sum(x.asked for x in logs),
                         from_llm=sum(x.from_llm for x in logs), filled=sum(x.filled for x in logs),
                         candidates=sum(x.candidates for x in logs),
                         problems=RoundProposal.bound_problems(problems),
                         origins=tuple(origins.get(s.key) for s in chosen))


def _propose_valid(proposer: Proposer, round_no: int, cfg: SearchConfig, sites: Sequence[SiteRecord],
                   history: Sequence[ScoredStrategy]) -> tuple[list[Strategy], RoundProposal | None]:
    """Ask, drop what no site could run or what was already evaluated, ask again (bounded). With the
    meta-agent, also how the round was proposed (its logs of the calls, and where each kept strategy came
    from); None for the other proposers."""
    catalog = common_catalog(sites)
    catalogs = [index_catalog(s.catalog) for s in sites]
    seen = {h.strategy.key for h in history}
    chosen: list[Strategy] = []
    logs: list[ProposalLog] = []
    origins: dict[str, Origin | None] = {}
    for _attempt in range(5):
        need = cfg.strategies_per_round - len(chosen)
        if need <= 0:
            break
        known = list(history) + [ScoredStrategy(round_no, s, None) for s in chosen]
        before = getattr(proposer, "last", None)
        proposed = proposer.propose(round_no, need, catalog, known)
        log_ = _log_of(proposer, before, round_no)
        if log_ is not None:
            logs.append(log_)
            model_keys = set(log_.from_model_keys)
            # an older log without keys cannot tell the two apart unless the model gave nothing
            told = bool(model_keys) or log_.from_llm == 0
            for s in proposed:
                origins.setdefault(s.key, "model" if s.key in model_keys else "fill" if told else None)
        for s in proposed:
            if s.key in seen or any(check_strategy(s, c, cfg.max_strategy_length) for c in catalogs):
                continue
            seen.add(s.key)
            chosen.append(s)
    chosen = chosen[: cfg.strategies_per_round]
    return chosen, _round_proposal(logs, chosen, origins)


def _enqueue_round(service: CoordinatorService, cfg: SearchConfig, round_no: int,
                   strategies: Sequence[Strategy], sites: Sequence[SiteRecord]) -> None:
    deadline_s = max(1, min(cfg.task_deadline_s, int(cfg.round_deadline_s)))
    now = service.clock()
    for i, strategy in enumerate(strategies):
        for site in sites:
            if check_strategy(strategy, index_catalog(site.catalog), cfg.max_strategy_length):
                continue  # this site cannot run it; the report shows it as not sent
            task = Task(task_id=task_id_for(cfg.search_id, round_no, i, strategy, site.site_id),
                        search_id=cfg.search_id, strategy=strategy, settings=cfg.settings,
                        deadline_s=deadline_s)
            service.store.enqueue(task, site.site_id, round_no, now, cfg.max_attempts)
    service.notify()


def _wait_round(service: CoordinatorService, cfg: SearchConfig, round_no: int, stop: threading.Event,
                progress: ProgressFn | None) -> None:
    for _ in range(1_000_000):  # bounded by the round deadline below
        records = [r for r, _ in service.store.tasks_for_search(cfg.search_id) if r.round_no == round_no]
        done = sum(r.state in FINAL for r in records)
        if progress:
            progress(round_no, done, len(records))
        started = min((r.created for r in records), default=service.clock())
        if done == len(records) or stop.is_set() or service.clock() > started + cfg.round_deadline_s:
            return
        service.store.expire_leases(service.clock())
        with service.changed:
            service.changed.wait(timeout=0.5)


def _converged(outcome: SearchOutcome, cfg: SearchConfig) -> str | None:
    """Why to stop early: the best score has not improved by more than ``min_improvement`` for ``patience``
    rounds (None: go on)."""
    if cfg.patience <= 0:
        return None
    rounds = outcome.rounds()
    if len(rounds) <= cfg.patience:
        return None
    before = rounds[-cfg.patience - 1]["best_so_far"]
    now = rounds[-1]["best_so_far"]
    if now is None or (before is not None and now - before <= cfg.min_improvement):
        return (f"converged: the best score improved by no more than {cfg.min_improvement:g} in the last "
                f"{cfg.patience} round{'s' if cfg.patience > 1 else ''}")
    return None


def run_search(service: CoordinatorService, cfg: SearchConfig, stop: threading.Event,
               progress: ProgressFn | None = None, on_round: RoundFn | None = None) -> SearchOutcome:
    """Run (or resume) the search ``cfg`` to its end; ``on_round`` sees the outcome after every round."""
    store = service.store
    if store.create_search(cfg.search_id, cfg.model_dump_json(), service.clock()):
        log.info("search %s started (%s proposer)", cfg.search_id, cfg.proposer)
    else:
        log.info("search %s resumed from the store", cfg.search_id)
    extra = cfg.agent.model_dump() if cfg.proposer == "llm" and cfg.agent is not None else {}
    proposer = create_proposer(cfg.proposer, seed=cfg.seed, max_length=cfg.max_strategy_length, **extra)
    try:
        reason = _loop(service, cfg, stop, proposer, progress, on_round)
    finally:
        close = getattr(proposer, "close", None)
        if callable(close):
            close()
    outcome: SearchOutcome = build_outcome(store, cfg.search_id)
    if not stop.is_set():
        store.set_search_state(cfg.search_id, SearchState.DONE, reason)
    return outcome.with_reason(reason if not stop.is_set() else "stopped")


def _loop(service: CoordinatorService, cfg: SearchConfig, stop: threading.Event, proposer: Proposer,
          progress: ProgressFn | None, on_round: RoundFn | None) -> str:
    store = service.store
    existing = dict(store.get_rounds(cfg.search_id))
    sites = _wait_for_sites(service, cfg, stop)
    history: list[ScoredStrategy] = []
    for round_no in range(1, cfg.rounds + 1):
        if stop.is_set():
            return "stopped"
        if not sites:
            return f"no site said hello within {cfg.wait_for_sites_s:.0f} s"
        sites = [s for s in store.list_sites() if s.catalog] or sites
        strategies = existing.get(round_no)
        if strategies is None:
            strategies, proposal = _propose_valid(proposer, round_no, cfg, sites, history)
            if not strategies:
                return f"round {round_no}: no new valid strategy could be proposed"
            store.add_round(cfg.search_id, round_no, strategies, proposal)
        _enqueue_round(service, cfg, round_no, strategies, sites)
        _wait_round(service, cfg, round_no, stop, progress)
        so_far = build_outcome(store, cfg.search_id)
        if on_round is not None and not stop.is_set():
            on_round(round_no, so_far)
        history = [ScoredStrategy(o.round_no, o.strategy, o.aggregate) for o in so_far.strategies]
        why = _converged(so_far, cfg)
        if why and round_no < cfg.rounds:
            return f"{why} (after round {round_no} of {cfg.rounds})"
    return f"completed all {cfg.rounds} rounds"


def baseline_configs(cfg: SearchConfig, outcome: SearchOutcome) -> list[SearchConfig]:
    """One search per configured baseline proposer, on the budget the search used (rounds it ran, same K,
    seed and settings), never stopping early: the report compares best-so-far curves at equal budget."""
    rounds = max((o.round_no for o in outcome.strategies), default=0)
    if rounds == 0:
        return []
    return [cfg.model_copy(update={"search_id": f"{cfg.search_id}-{name}", "proposer": name, "rounds": rounds,
                                   "patience": 0, "baselines": [], "agent": None,
                                   "report": cfg.report.with_name(f"{cfg.report.stem}-{name}.json")})
            for name in cfg.baselines if name != cfg.proposer]
