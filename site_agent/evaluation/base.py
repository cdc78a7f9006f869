"""The evaluator interface and a plain-dict registry of evaluator factories (Opacus style).

An evaluator turns (processed data, raw data, settings) into one score: how much better the processed
data is than the raw data by its metric. Evaluators register a factory under their ``EvaluatorKind``;
built-in ones are imported on first use so that heavy ones (LoRA: torch, peft) load only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from protos.views import EvalSettings, EvaluatorKind, Metric
from site_agent.errors import EvaluationError
from site_agent.operators.base import Batch

__all__ = [
    "EvalOutcome",
    "Evaluator",
    "EvaluatorFactory",
    "available_evaluators",
    "create_evaluator",
    "register_evaluator",
]


@dataclass(frozen=True)
class EvalOutcome:
    """A score (higher is better, processed vs raw), the metric it is in, and the time it took.

    ``epsilon``/``delta``: the (epsilon, delta)-DP guarantee of this evaluation's training run when it
    used DP-SGD (0 otherwise). ``details``: local diagnostics, numbers only (never released).
    """

    score: float
    metric: Metric
    seconds: float
    epsilon: float = 0.0
    delta: float = 0.0
    details: Mapping[str, float] = field(default_factory=dict)


class Evaluator(Protocol):
    kind: EvaluatorKind

    def evaluate(self, processed: Batch, raw: Batch, settings: EvalSettings) -> EvalOutcome: ...


EvaluatorFactory = Callable[..., Evaluator]
_FACTORIES: dict[EvaluatorKind, EvaluatorFactory] = {}
# Where each built-in evaluator registers itself; imported lazily.
_BUILTIN_MODULES: dict[EvaluatorKind, str] = {
    EvaluatorKind.QUALITY_PROXY: "site_agent.evaluation.quality_proxy",
    EvaluatorKind.LORA: "site_agent.evaluation.lora",
}


def register_evaluator(kind: EvaluatorKind, factory: EvaluatorFactory) -> None:
    if kind in _FACTORIES:
        raise EvaluationError(f"an evaluator of kind '{kind}' is already registered")
    _FACTORIES[kind] = factory


def _factory(kind: EvaluatorKind) -> EvaluatorFactory | None:
    if kind not in _FACTORIES and kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[kind])
    return _FACTORIES.get(kind)


def available_evaluators() -> list[EvaluatorKind]:
    """Kinds this site can build (importing built-ins to find out)."""
    return [k for k in EvaluatorKind if _factory(k) is not None]


def create_evaluator(kind: EvaluatorKind, **options: Any) -> Evaluator:
    factory = _factory(kind)
    if factory is None:
        raise EvaluationError(f"no evaluator of kind '{kind}' is installed at this site")
    try:
        return factory(**options)
    except TypeError:
        # Wrong option names; the names are configuration, never data, so they may be named.
        raise EvaluationError(
            f"evaluator '{kind}' does not take options {sorted(options)}") from None
