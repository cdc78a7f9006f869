"""A Tree-structured Parzen Estimator search baseline (optuna's TPESampler) over the conditional strategy
space: a length L, an operator at each of the L positions, then that operator's parameters under names
that carry the position and the operator (``s1:dedup:threshold``), so each parameter only exists in the
trials that chose its operator there.

Stateless between calls: an in-memory study is rebuilt from the scored ``history`` every round and the
sampler is seeded from (seed, round_no), so a restarted coordinator proposes the same round again.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coordinator.baselines.space import clip_value, effective_max_length, is_valid, mutate_param, random_strategy
from coordinator.errors import SearchError
from coordinator.proposers import ScoredStrategy
from protos.catalog import index_catalog
from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, ParamValue, Strategy

if TYPE_CHECKING:
    import optuna

__all__ = ["TPEProposer", "nudge", "param_key"]


def param_key(position: int, op: str, param: str) -> str:
    return f"s{position}:{op}:{param}"


def _distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec.type is ParamType.INT:
        return IntDistribution(spec.int_min, spec.int_max)
    if spec.type is ParamType.FLOAT:
        return FloatDistribution(spec.float_min, spec.float_max)
    if spec.type is ParamType.BOOL:
        return CategoricalDistribution((False, True))
    return CategoricalDistribution(spec.choices)


class _Space:
    """The optuna distributions of one catalog, shared by the trials rebuilt from history and the new ones
    (optuna requires one distribution per parameter name across a study)."""

    def __init__(self, specs: Sequence[OperatorSpec], limit: int) -> None:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        self.index: dict[str, OperatorSpec] = index_catalog(specs)
        self.limit = limit
        self.length = IntDistribution(1, limit)
        self.names = tuple(sorted(self.index))
        self.ops = CategoricalDistribution(self.names)
        self.params = {(s.name, p.name): _distribution(p) for s in specs for p in s.params}

    def encode(self, strategy: Strategy) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """A history strategy as trial params + distributions; None when it is not a point of this space
        (proposed against another catalog or length)."""
        if not is_valid(strategy, self.index, self.limit):
            return None
        params: dict[str, Any] = {"length": len(strategy.calls)}
        dists: dict[str, Any] = {"length": self.length}
        for i, call in enumerate(strategy.calls):
            params[f"op{i}"], dists[f"op{i}"] = call.op, self.ops
            given = call.kwargs
            for p in self.index[call.op].params:
                name = param_key(i, call.op, p.name)
                params[name] = clip_value(p, given.get(p.name, p.default))  # an int given for a float
                dists[name] = self.params[(call.op, p.name)]
        return params, dists

    def sample(self, trial: optuna.Trial, rng: random.Random) -> Strategy:
        """Ask the trial for a strategy. Positions are sampled independently, so TPE may pick an operator
        twice; a repeat is replaced by a random unused operator rather than the whole trial thrown away
        (rejection wasted most asks once TPE had settled on a good operator)."""
        calls: list[OperatorCall] = []
        for i in range(trial.suggest_int("length", 1, self.limit)):
            op = str(trial.suggest_categorical(f"op{i}", self.names))
            if op in {c.op for c in calls}:
                op = rng.choice([n for n in self.names if n not in {c.op for c in calls}])
            values: list[tuple[str, ParamValue]] = []
            for p in self.index[op].params:
                name = param_key(i, op, p.name)
                if p.type is ParamType.INT:
                    raw: object = trial.suggest_int(name, p.int_min, p.int_max)
                elif p.type is ParamType.FLOAT:
                    raw = trial.suggest_float(name, p.float_min, p.float_max)
                else:
                    choices = (False, True) if p.type is ParamType.BOOL else p.choices
                    raw = trial.suggest_categorical(name, choices)
                values.append((p.name, clip_value(p, raw)))
            calls.append(OperatorCall(op=op, params=tuple(values)))
        return Strategy(calls=tuple(calls))


def nudge(rng: random.Random, strategy: Strategy, index: dict[str, OperatorSpec]) -> Strategy:
    """One parameter of one step moved to a nearby valid value (the strategy itself when none can move)."""
    genes = [(i, p) for i, c in enumerate(strategy.calls) for p in index[c.op].params]
    if not genes:
        return strategy
    i, pspec = rng.choice(genes)
    calls = list(strategy.calls)
    calls[i] = mutate_param(rng, calls[i], pspec)
    return Strategy(calls=tuple(calls))


class TPEProposer:
    """optuna TPE over the catalog; strategies without a score are skipped as observations (but never
    proposed again). ``n_startup_trials`` is lower than optuna's 10 because a federated search affords a
    few dozen evaluations: most of them would otherwise be random."""

    name = "tpe"

    def __init__(self, seed: int = 0, max_length: int = 3, n_startup_trials: int = 4) -> None:
        if n_startup_trials < 0:
            raise SearchError("tpe proposer: n_startup_trials must be >= 0")
        self.seed, self.max_length, self.n_startup_trials = seed, max_length, n_startup_trials

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        specs = sorted(catalog, key=lambda s: s.name)
        limit = effective_max_length(specs, self.max_length)
        if k <= 0 or limit == 0:
            return []
        round_seed = (self.seed * 1_000_003 + round_no) % 2**32
        space = _Space(specs, limit)
        study = self._study(round_seed, space, history)
        seen = {h.strategy.key for h in history}
        out: list[Strategy] = []
        from optuna.trial import TrialState

        rng = random.Random(round_seed)
        for _ in range(4 * k):  # bounded: late in a search TPE keeps landing on evaluated points
            if len(out) == k:
                break
            trial = study.ask()
            candidate = space.sample(trial, rng)
            for _ in range(5):  # an evaluated point is nudged to a neighbour: cheaper than another ask
                if candidate.key not in seen:
                    break
                candidate = nudge(rng, candidate, space.index)
            if candidate.key in seen or not is_valid(candidate, space.index, limit):
                study.tell(trial, state=TrialState.FAIL)  # ignored by the sampler
                continue
            seen.add(candidate.key)
            out.append(candidate)  # left running: the constant liar steers the next asks elsewhere
        for _ in range(50 * k):  # top up if TPE ran dry (tiny catalogs)
            if len(out) == k:
                break
            candidate = random_strategy(rng, specs, limit)
            if candidate.key not in seen and is_valid(candidate, space.index, limit):
                seen.add(candidate.key)
                out.append(candidate)
        return out

    def _study(self, round_seed: int, space: _Space, history: Sequence[ScoredStrategy]) -> optuna.Study:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=round_seed, n_startup_trials=self.n_startup_trials,
                                                 constant_liar=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for h in sorted(history, key=lambda h: (h.round_no, h.strategy.key)):  # order-independent rebuild
            encoded = space.encode(h.strategy) if h.score is not None and math.isfinite(h.score) else None
            if encoded is None or h.score is None:
                continue
            params, dists = encoded
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=h.score))
        return study

