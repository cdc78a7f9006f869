"""Checking a strategy against an operator catalog: shared by the coordinator (never send an invalid
proposal) and the site (never run one).

Following Opacus' validators: :func:`check_strategy` returns a list of problems and raises nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from protos.views import OperatorSpec, Strategy, TaskStatus

__all__ = ["Problem", "check_strategy", "index_catalog"]

MAX_STRATEGY_LENGTH = 16


@dataclass(frozen=True)
class Problem:
    """Why a strategy cannot run. ``reason`` names operators, parameters and bounds only."""

    status: TaskStatus
    reason: str


def index_catalog(catalog: Iterable[OperatorSpec]) -> dict[str, OperatorSpec]:
    return {spec.name: spec for spec in catalog}


def check_strategy(
    strategy: Strategy, catalog: Mapping[str, OperatorSpec], max_length: int = MAX_STRATEGY_LENGTH
) -> list[Problem]:
    problems: list[Problem] = []
    if len(strategy.calls) > max_length:
        problems.append(Problem(TaskStatus.REJECTED_SETTINGS,
                                f"strategy has {len(strategy.calls)} steps, at most {max_length} allowed"))
    for i, call in enumerate(strategy.calls):
        spec = catalog.get(call.op)
        if spec is None:
            problems.append(Problem(TaskStatus.REJECTED_UNKNOWN_OPERATOR, f"step {i}: unknown operator"))
            continue
        for name, value in call.params:
            pspec = spec.param(name)
            if pspec is None:
                problems.append(Problem(TaskStatus.REJECTED_UNEXPECTED_FIELD,
                                        f"step {i} ({spec.name}): no parameter of that name"))
                continue
            why = pspec.check(value)
            if why is not None:
                problems.append(Problem(TaskStatus.REJECTED_BAD_PARAMETER, f"step {i} ({spec.name}): {why}"))
    return problems
