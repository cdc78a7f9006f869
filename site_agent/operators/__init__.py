"""Data-processing operators: the contract (``base``), the registry, and the built-in teams.

Built-in operators live in ``site_agent.operators.<team>.<op>``, one small class per file; they are
registered when :func:`registered_operators` (or :func:`create_operator`) is first called.
"""

from site_agent.operators.base import REQUIRED_COLUMNS, Batch, Operator, OperatorParams, StepStats, batch_size
from site_agent.operators.registry import (
    PLUGIN_GROUP,
    create_operator,
    load_plugins,
    operator_spec,
    register_operator,
    registered_operators,
)

__all__ = [
    "PLUGIN_GROUP",
    "REQUIRED_COLUMNS",
    "Batch",
    "Operator",
    "OperatorParams",
    "StepStats",
    "batch_size",
    "create_operator",
    "load_plugins",
    "operator_spec",
    "register_operator",
    "registered_operators",
]
