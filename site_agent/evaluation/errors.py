"""Errors of evaluation runs that carry the task status to report.

Hierarchy::

    EvaluationError (site_agent.errors)
    └── EvaluationFailed          a run failed; ``status`` is the TaskStatus to send (FAILED_INTERNAL)
        ├── WorkerCrashed         the isolated worker died or left no result (FAILED_WORKER_CRASH)
        ├── WorkerTimeout         the worker ran past its time limit and was killed (FAILED_TIMEOUT)
        └── TrainingIntegrityError  a LoRA/DP-SGD update check failed (FAILED_INTERNAL)

Messages name counts, exit codes and limits only, never data.
"""

from __future__ import annotations

from typing import ClassVar

from protos.views import TaskStatus
from site_agent.errors import EvaluationError

__all__ = ["EvaluationFailed", "TrainingIntegrityError", "WorkerCrashed", "WorkerTimeout"]


class EvaluationFailed(EvaluationError):
    """An evaluation run failed; ``status`` says how to report it."""

    status: ClassVar[TaskStatus] = TaskStatus.FAILED_INTERNAL


class WorkerCrashed(EvaluationFailed):
    """The worker process died (signal, non-zero exit) or exited without writing a result."""

    status: ClassVar[TaskStatus] = TaskStatus.FAILED_WORKER_CRASH

    def __init__(self, message: str, returncode: int | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.returncode, self.pid = returncode, pid


class WorkerTimeout(EvaluationFailed):
    """The worker ran past ``timeout_s``; its whole process group (id ``pid``) was killed."""

    status: ClassVar[TaskStatus] = TaskStatus.FAILED_TIMEOUT

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class TrainingIntegrityError(EvaluationFailed):
    """A guard of :mod:`site_agent.evaluation.integrity` failed: the update cannot be trusted."""
