"""The coordinator's durable state behind one small interface.

Sites, searches (config, state, the strategies proposed per round and, for the LLM meta-agent, how each
round was proposed: :class:`RoundProposal`) and evaluation tasks with their results. Everything a killed
coordinator needs to resume lives here; ``SQLiteStore`` is the implementation, tests run against it.

Time is always passed in (``now``, seconds since the epoch) so callers and tests control the clock.

Task life cycle::

    enqueue -> PENDING --lease_next--> LEASED --record_result--> DONE
                  ^                      |
                  +---- lease expired ---+  (attempts < max_attempts)
    LEASED, lease expired, attempts == max_attempts -> FAILED("lease_expired_max_attempts")
    PENDING/LEASED past the task's deadline         -> FAILED("deadline")
    a late result for a FAILED task                 -> DONE (the work was done)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from protos.views import OperatorSpec, ResultReport, SizeBucket, Strategy, Task

__all__ = [
    "FAILURE_DEADLINE",
    "FAILURE_LEASE_EXPIRED",
    "MAX_PROBLEMS",
    "Origin",
    "RoundProposal",
    "SearchRecord",
    "SearchState",
    "SiteRecord",
    "Store",
    "TaskRecord",
    "TaskState",
]

# Reason codes of TaskRecord.failure.
FAILURE_LEASE_EXPIRED = "lease_expired_max_attempts"
FAILURE_DEADLINE = "deadline"


class TaskState(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"


class SearchState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class SiteRecord:
    site_id: str
    software_version: str
    catalog: tuple[OperatorSpec, ...]
    size_bucket: SizeBucket
    last_seen: float
    tasks_done: int


@dataclass(frozen=True)
class TaskRecord:
    task: Task  # as enqueued (attempt=1); the live count is ``attempts``
    site_id: str
    round_no: int
    state: TaskState
    attempts: int
    max_attempts: int
    lease_expires: float | None
    created: float
    deadline: float  # absolute: created + task.deadline_s
    failure: str | None  # reason code when FAILED


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    config_json: str
    state: SearchState
    reason: str
    created: float


Origin = Literal["model", "fill"]
MAX_PROBLEMS = 20  # repair summaries kept per round
_MAX_PROBLEM_CHARS = 300


class RoundProposal(BaseModel):
    """How the LLM meta-agent proposed one round, summed over the round's ``propose`` calls: counts, the
    mode, the prompt version and the repair summaries (counts and catalog names), never prompt text or
    model output. ``origins`` runs parallel to the strategies stored for the round: ``model`` (the model
    wrote it, or chose it in mode choose), ``fill`` (the seeded fill proposer's) or None (not known)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["write", "choose"]
    prompt_version: str = Field(max_length=64)
    propose_calls: int = Field(ge=0)
    llm_calls: int = Field(ge=0)
    asked: int = Field(ge=0)
    from_llm: int = Field(ge=0)
    filled: int = Field(ge=0)
    candidates: int = Field(ge=0)
    problems: tuple[str, ...] = Field(default=(), max_length=MAX_PROBLEMS)
    origins: tuple[Origin | None, ...] = ()

    @staticmethod
    def bound_problems(problems: Sequence[str]) -> tuple[str, ...]:
        """The first ``MAX_PROBLEMS`` summaries, each cut to a bounded length."""
        return tuple(p[:_MAX_PROBLEM_CHARS] for p in problems[:MAX_PROBLEMS])

    @property
    def kept_from_model(self) -> int:
        return sum(o == "model" for o in self.origins)

    @property
    def kept_from_fill(self) -> int:
        return sum(o == "fill" for o in self.origins)

    def summary(self) -> dict[str, Any]:
        """The report's view: the counts, plus how many of the strategies kept for the round came from the
        model and how many from the fill (per strategy origins are on the strategies themselves)."""
        return {**self.model_dump(mode="json", exclude={"origins"}), "kept_from_model": self.kept_from_model,
                "kept_from_fill": self.kept_from_fill}


@runtime_checkable
class Store(Protocol):
    """Durable coordinator state. Every method is safe to call from many threads."""

    # sites
    def upsert_site(self, site_id: str, software_version: str, catalog: Sequence[OperatorSpec],
                    size_bucket: SizeBucket, now: float) -> None:
        """Register a site or refresh what it published; keeps its ``tasks_done``."""
        ...

    def touch_site(self, site_id: str, now: float, tasks_done: int | None = None) -> bool:
        """Note a sign of life; False if the site is unknown."""
        ...

    def get_site(self, site_id: str) -> SiteRecord | None: ...

    def list_sites(self) -> list[SiteRecord]:
        """All sites, ordered by site id."""
        ...

    # searches
    def create_search(self, search_id: str, config_json: str, now: float) -> bool:
        """Start a search in RUNNING state; False (and no change) if the id exists."""
        ...

    def get_search(self, search_id: str) -> SearchRecord | None: ...

    def set_search_state(self, search_id: str, state: SearchState, reason: str) -> None:
        """Raises StoreError for an unknown search."""
        ...

    def add_round(self, search_id: str, round_no: int, strategies: Sequence[Strategy],
                  proposal: RoundProposal | None = None) -> None:
        """Record a round's proposals (and how they were proposed, when known); a round already stored is
        left unchanged. StoreError for an unknown search."""
        ...

    def get_rounds(self, search_id: str) -> list[tuple[int, list[Strategy]]]:
        """Rounds ordered by number, strategies in the order they were added."""
        ...

    def get_round_proposals(self, search_id: str) -> dict[int, RoundProposal]:
        """Round number -> how it was proposed, for the rounds stored with a proposal record."""
        ...

    # tasks
    def enqueue(self, task: Task, site_id: str, round_no: int, now: float, max_attempts: int = 3) -> bool:
        """Queue a task for a site; False (and no change) if its task_id exists."""
        ...

    def lease_next(self, site_id: str, now: float, lease_s: float) -> Task | None:
        """Reclaim expired leases, then take the site's oldest PENDING task until now+lease_s.
        The returned Task carries attempt = attempts so far (1 on first delivery)."""
        ...

    def record_result(self, report: ResultReport, now: float) -> tuple[bool, bool]:
        """(accepted, duplicate). Unknown task or wrong site -> (False, False); first report ->
        (True, False), task DONE; repeat -> (True, True), stored result unchanged."""
        ...

    def get_result(self, task_id: str) -> ResultReport | None: ...

    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def tasks_for_search(self, search_id: str) -> list[tuple[TaskRecord, ResultReport | None]]:
        """Ordered by round, then creation (then insertion)."""
        ...

    def expire_leases(self, now: float) -> int:
        """Fail tasks past their deadline, return expired leases to PENDING (or FAILED at the
        attempt limit). Returns how many tasks changed."""
        ...

    def pending_count(self, site_id: str | None = None) -> int: ...

    def close(self) -> None: ...
