"""Run a strategy: apply its operator calls in order to a batch.

This is the simple, in-process executor. The full one (DPS sampling, PTS screening, prefix cache)
comes later behind the same call; a task must pass ``site_agent.policy.check_task`` before it gets here.
"""

from __future__ import annotations

import logging

from protos.views import Strategy
from site_agent.operators.base import Batch, StepStats, batch_size
from site_agent.operators.context import RunContext
from site_agent.operators.registry import create_operator

__all__ = ["run_strategy"]

log = logging.getLogger(__name__)


def run_strategy(batch: Batch, strategy: Strategy,
                 context: RunContext | None = None) -> tuple[Batch, list[StepStats]]:
    """The processed batch and one StepStats per call. Raises OperatorError (unknown operator, bad
    params, a capability the site lacks, a failing step) or DataError (a malformed batch)."""
    batch_size(batch)
    ctx = context or RunContext()
    # Build and bind every operator first: a bad call fails before any step has run.
    operators = [create_operator(call.op, call.kwargs).bind(ctx) for call in strategy.calls]
    stats: list[StepStats] = []
    for op in operators:
        batch, step = op.run(batch)
        log.debug("step %s: kept=%d dropped=%d changed=%d", step.op, step.kept, step.dropped, step.changed)
        stats.append(step)
    return batch, stats
