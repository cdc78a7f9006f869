"""Strategy proposers: what suggests the next round of strategies.

The LLM meta-agent arrives with the search issue behind this same interface; for now ``random`` is a real
random search over the sites' common catalog (it stays afterwards as the baseline the agent must beat).
Proposers see only the catalog and scores, never data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, ParamValue, Strategy

__all__ = ["Proposer", "RandomProposer", "ScoredStrategy", "create_proposer", "register_proposer"]


@dataclass(frozen=True)
class ScoredStrategy:
    round_no: int
    strategy: Strategy
    score: float | None  # aggregated across sites; None when no site answered


class Proposer(Protocol):
    name: str

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]: ...


def _random_value(rng: random.Random, spec: ParamSpec) -> ParamValue:
    if spec.type is ParamType.INT:
        return rng.randint(spec.int_min, spec.int_max)
    if spec.type is ParamType.FLOAT:
        return round(rng.uniform(spec.float_min, spec.float_max), 4)
    if spec.type is ParamType.BOOL:
        return rng.random() < 0.5
    return rng.choice(spec.choices)


class RandomProposer:
    """Uniform random strategies: a length in [1, max_length], distinct operators in random order, each
    parameter at its default half of the time and uniform in its bounds otherwise. Seeded per round, so a
    restarted search proposes the same round again."""

    name = "random"

    def __init__(self, seed: int = 0, max_length: int = 3) -> None:
        self.seed = seed
        self.max_length = max_length

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        rng = random.Random(self.seed * 1_000_003 + round_no)
        seen = {h.strategy.key for h in history}
        out: list[Strategy] = []
        specs = sorted(catalog, key=lambda s: s.name)
        for _ in range(50 * k):  # bounded: small catalogs run out of new strategies
            if len(out) == k or not specs:
                break
            length = rng.randint(1, min(self.max_length, len(specs)))
            chosen = rng.sample(specs, length)
            calls = tuple(
                OperatorCall(op=s.name, params=tuple(
                    (p.name, p.default if rng.random() < 0.5 else _random_value(rng, p)) for p in s.params))
                for s in chosen)
            strategy = Strategy(calls=calls)
            if strategy.key not in seen:
                seen.add(strategy.key)
                out.append(strategy)
        return out


def _evolutionary(**options: Any) -> Proposer:
    from coordinator.baselines.evolutionary import EvolutionaryProposer  # lazy: baselines import this module

    return EvolutionaryProposer(**options)


def _tpe(**options: Any) -> Proposer:
    from coordinator.baselines.tpe import TPEProposer  # lazy, as above (optuna itself loads on first propose)

    return TPEProposer(**options)


def _llm(**options: Any) -> Proposer:
    from coordinator.agent import LLMProposer  # lazy: httpx and the prompt files load only for the meta-agent

    return LLMProposer(**options)


_PROPOSERS: dict[str, Callable[..., Proposer]] = {"random": RandomProposer, "evolutionary": _evolutionary,
                                                  "tpe": _tpe, "llm": _llm}


def register_proposer(name: str, factory: Callable[..., Proposer]) -> None:
    if name in _PROPOSERS:
        raise ValueError(f"proposer '{name}' is already registered")
    _PROPOSERS[name] = factory


def create_proposer(name: str, **options: object) -> Proposer:
    try:
        factory = _PROPOSERS[name]
    except KeyError:
        raise ValueError(f"unknown proposer '{name}'; known: {sorted(_PROPOSERS)}") from None
    return factory(**options)
