"""Evaluators: score processed data against raw data behind one interface.

``quality_proxy`` is a cheap rule-based data-quality proxy; the LoRA evaluator (fine-tune and compare
held-out loss) plugs in behind the same :class:`Evaluator` protocol.
"""

from site_agent.evaluation.base import (
    EvalOutcome,
    Evaluator,
    EvaluatorFactory,
    available_evaluators,
    create_evaluator,
    register_evaluator,
)

__all__ = [
    "EvalOutcome",
    "Evaluator",
    "EvaluatorFactory",
    "available_evaluators",
    "create_evaluator",
    "register_evaluator",
]
