"""An elitist evolutionary search baseline: keep the best scored strategies, breed the next round from them
by tournament selection, one-point crossover of operator lists and small mutations.

Stateless between calls: the population is rebuilt from ``history`` every round and the random generator is
seeded from (seed, round_no), so a restarted coordinator proposes the same round again.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from coordinator.baselines.space import (
    effective_max_length,
    is_valid,
    mutate_param,
    random_call,
    random_strategy,
    repair,
)
from coordinator.errors import SearchError
from coordinator.proposers import ScoredStrategy
from protos.catalog import index_catalog
from protos.views import OperatorCall, OperatorSpec, Strategy

__all__ = ["EvolutionaryProposer", "crossover", "mutate"]

# how often each kind of structural edit is picked when one is made
_EDITS = (("insert", 2), ("delete", 1), ("replace", 2), ("swap", 1))


def crossover(rng: random.Random, a: Strategy, b: Strategy, max_length: int) -> Strategy:
    """One-point crossover of two operator lists: a's head + b's tail, an operator kept at its first
    occurrence, cut to ``max_length``."""
    head = a.calls[: rng.randint(0, len(a.calls))]
    tail = b.calls[rng.randint(0, len(b.calls)):]
    calls: list[OperatorCall] = []
    for call in head + tail:
        if call.op not in {c.op for c in calls}:
            calls.append(call)
    if not calls:  # both cuts took nothing: keep a's first step rather than an empty strategy
        calls = list(a.calls[:1])
    return Strategy(calls=tuple(calls[:max_length]))


def _edit(rng: random.Random, calls: list[OperatorCall], index: Mapping[str, OperatorSpec],
          max_length: int) -> bool:
    """One structural edit among those that apply (insert / delete / replace an operator, swap two
    steps), in place; False when none applies."""
    unused = sorted(n for n in index if n not in {c.op for c in calls})
    applicable = {"insert": len(calls) < max_length and bool(unused), "delete": len(calls) > 1,
                  "replace": bool(unused) and bool(calls), "swap": len(calls) > 1}
    kinds = [(k, w) for k, w in _EDITS if applicable[k]]
    if not kinds:
        return False
    kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
    if kind == "insert":
        calls.insert(rng.randint(0, len(calls)), random_call(rng, index[rng.choice(unused)]))
    elif kind == "delete":
        del calls[rng.randrange(len(calls))]
    elif kind == "replace":
        calls[rng.randrange(len(calls))] = random_call(rng, index[rng.choice(unused)])
    else:
        i, j = rng.sample(range(len(calls)), 2)
        calls[i], calls[j] = calls[j], calls[i]
    return True


def mutate(rng: random.Random, strategy: Strategy, index: Mapping[str, OperatorSpec], max_length: int,
           rate: float = 0.3, edit_rate: float = 0.5) -> Strategy:
    """A structural edit with probability ``edit_rate``, then each parameter moved within its bounds with
    probability ``rate``; at least one change whenever one is possible."""
    calls = list(strategy.calls)
    changed = rng.random() < edit_rate and _edit(rng, calls, index, max_length)
    genes = [(i, p) for i, c in enumerate(calls) for p in index[c.op].params]
    for i, pspec in genes:
        if rng.random() < rate:
            calls[i] = mutate_param(rng, calls[i], pspec)
            changed = True
    if not changed:
        if genes:
            i, pspec = rng.choice(genes)
            calls[i] = mutate_param(rng, calls[i], pspec)
        else:
            _edit(rng, calls, index, max_length)
    return Strategy(calls=tuple(calls))


class EvolutionaryProposer:
    """Round 1 (or no score yet): random strategies whose first steps cover the catalog. Later rounds:
    children of the ``population`` best scored strategies, never one already in ``history``."""

    name = "evolutionary"

    def __init__(self, seed: int = 0, max_length: int = 3, population: int = 8, mutation_rate: float = 0.5,
                 crossover_rate: float = 0.3, tournament: int = 5, edit_rate: float = 0.4) -> None:
        """``mutation_rate``: the chance each parameter of a child moves; ``crossover_rate``: the chance a
        child has two parents."""
        rates = (mutation_rate, crossover_rate, edit_rate)
        if population < 1 or tournament < 1 or not all(0.0 <= r <= 1.0 for r in rates):
            raise SearchError("evolutionary proposer: population and tournament >= 1, rates within [0, 1]")
        self.seed, self.max_length, self.population = seed, max_length, population
        self.mutation_rate, self.crossover_rate, self.edit_rate = mutation_rate, crossover_rate, edit_rate
        self.tournament = tournament

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        specs = sorted(catalog, key=lambda s: s.name)
        index = index_catalog(specs)
        limit = effective_max_length(specs, self.max_length)
        if k <= 0 or limit == 0:
            return []
        rng = random.Random(self.seed * 1_000_003 + round_no)
        seen = {h.strategy.key for h in history}
        parents = self._elites(history, index, limit)
        out: list[Strategy] = []

        def take(candidate: Strategy) -> bool:
            if candidate.key in seen or not is_valid(candidate, index, limit):
                return False
            seen.add(candidate.key)
            out.append(candidate)
            return True

        if parents:
            for _ in range(30 * k):  # bounded: a converged population may have few new neighbours left
                if len(out) == k:
                    break
                take(self._child(rng, parents, index, limit, seen))
        order = rng.sample(specs, len(specs))
        for i in range(50 * k):  # seeding round, or topping up when breeding ran dry
            if len(out) == k:
                break
            take(random_strategy(rng, specs, limit, first=order[i % len(order)]))
        return out

    def _elites(self, history: Sequence[ScoredStrategy], index: Mapping[str, OperatorSpec],
                limit: int) -> list[Strategy]:
        """The best distinct scored strategies, best first; ties broken by key so the order of
        ``history`` does not matter."""
        best: dict[str, tuple[float, Strategy]] = {}
        for h in history:
            fitted = repair(h.strategy, index, limit) if h.score is not None else None
            if fitted is None or h.score is None:
                continue
            if fitted.key not in best or h.score > best[fitted.key][0]:
                best[fitted.key] = (h.score, fitted)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [s for _, (_, s) in ranked[: self.population]]

    def _pick(self, rng: random.Random, parents: Sequence[Strategy]) -> Strategy:
        # parents are sorted best first, so the lowest drawn index wins the tournament
        return parents[min(rng.randrange(len(parents)) for _ in range(self.tournament))]

    def _child(self, rng: random.Random, parents: Sequence[Strategy], index: Mapping[str, OperatorSpec],
               limit: int, seen: set[str]) -> Strategy:
        child = self._pick(rng, parents)
        if len(parents) > 1 and rng.random() < self.crossover_rate:
            child = crossover(rng, child, self._pick(rng, parents), limit)
        child = mutate(rng, child, index, limit, self.mutation_rate, self.edit_rate)
        for _ in range(3):  # a child equal to something evaluated is nudged rather than wasted
            if child.key not in seen:
                break
            child = mutate(rng, child, index, limit, self.mutation_rate, self.edit_rate)
        return child
