"""Typed Python views of the v1 messages.

Everything outside ``protos.serde`` and the gRPC servicers/clients works with these frozen pydantic
models, never with ``*_pb2`` classes. Every string field is an identifier (``IDENT_PATTERN``): the
protocol carries no free text.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

__all__ = [
    "IDENT_PATTERN",
    "MAX_CATALOG_OPERATORS",
    "MAX_ENUM_CHOICES",
    "MAX_OPERATOR_PARAMS",
    "PROTOCOL_VERSION",
    "EvalSettings",
    "EvaluatorKind",
    "Heartbeat",
    "HeartbeatReply",
    "Hello",
    "HelloReply",
    "Ident",
    "Metric",
    "OperatorCall",
    "OperatorSpec",
    "ParamSpec",
    "ParamType",
    "ParamValue",
    "Poll",
    "PollReply",
    "ResultAck",
    "ResultReport",
    "SizeBucket",
    "Strategy",
    "Task",
    "TaskStatus",
    "Team",
    "coarse_ms",
    "permille",
    "size_bucket_for",
]

PROTOCOL_VERSION = 1
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# What one site may publish: far above any real catalog, low enough that a hostile site cannot fill the
# coordinator's store and the meta-agent's prompt with a megabyte of operators.
MAX_CATALOG_OPERATORS = 256
MAX_OPERATOR_PARAMS = 64
MAX_ENUM_CHOICES = 64
Ident = Annotated[str, StringConstraints(pattern=IDENT_PATTERN)]
ParamValue = bool | int | float | Ident  # a string is always an enum choice, an identifier


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Team(enum.StrEnum):
    CLEANING = "cleaning"
    GENERATION = "generation"
    OPTIMIZATION = "optimization"
    SELECTION = "selection"


class ParamType(enum.StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    ENUM = "enum"


class SizeBucket(enum.StrEnum):
    UNDER_1K = "under_1k"
    FROM_1K_TO_10K = "1k_10k"
    FROM_10K_TO_100K = "10k_100k"
    OVER_100K = "over_100k"

    @property
    def weight(self) -> float:
        """A representative size for weighting scores across sites (geometric middle of the bucket)."""
        return {"under_1k": 300.0, "1k_10k": 3_000.0, "10k_100k": 30_000.0, "over_100k": 300_000.0}[
            self.value
        ]


def size_bucket_for(n: int) -> SizeBucket:
    if n < 1_000:
        return SizeBucket.UNDER_1K
    if n < 10_000:
        return SizeBucket.FROM_1K_TO_10K
    if n < 100_000:
        return SizeBucket.FROM_10K_TO_100K
    return SizeBucket.OVER_100K


class Metric(enum.StrEnum):
    NEG_TOKEN_LOSS = "neg_token_loss"
    PAIRWISE_WIN_RATE = "pairwise_win_rate"
    JUDGE_WIN_RATE = "judge_win_rate"
    QUALITY_PROXY = "quality_proxy"


class EvaluatorKind(enum.StrEnum):
    QUALITY_PROXY = "quality_proxy"
    LORA = "lora"


class TaskStatus(enum.StrEnum):
    OK = "ok"
    REJECTED_MALFORMED = "rejected_malformed"
    REJECTED_UNKNOWN_OPERATOR = "rejected_unknown_operator"
    REJECTED_OPERATOR_NOT_ALLOWED = "rejected_operator_not_allowed"
    REJECTED_BAD_PARAMETER = "rejected_bad_parameter"
    REJECTED_UNEXPECTED_FIELD = "rejected_unexpected_field"
    REJECTED_SETTINGS = "rejected_settings"
    REJECTED_BUDGET = "rejected_budget"
    REJECTED_COHORT = "rejected_cohort"
    FAILED_INTERNAL = "failed_internal"
    FAILED_TIMEOUT = "failed_timeout"
    FAILED_WORKER_CRASH = "failed_worker_crash"

    @property
    def is_rejection(self) -> bool:
        return self.value.startswith("rejected_")


class ParamSpec(_Frozen):
    """One typed, bounded operator parameter. Renders to JSON schema with :meth:`json_schema`."""

    name: Ident
    type: ParamType
    int_min: int = 0
    int_max: int = 0
    int_default: int = 0
    float_min: float = 0.0
    float_max: float = 0.0
    float_default: float = 0.0
    bool_default: bool = False
    choices: tuple[Ident, ...] = Field(default=(), max_length=MAX_ENUM_CHOICES)
    enum_default: str = ""

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type is ParamType.INT and not self.int_min <= self.int_default <= self.int_max:
            raise ValueError(f"{self.name}: default outside [{self.int_min}, {self.int_max}]")
        if self.type is ParamType.FLOAT:
            vals = (self.float_min, self.float_max, self.float_default)
            if not all(math.isfinite(v) for v in vals):
                raise ValueError(f"{self.name}: bounds must be finite")
            if not self.float_min <= self.float_default <= self.float_max:
                raise ValueError(f"{self.name}: default outside [{self.float_min}, {self.float_max}]")
        if self.type is ParamType.ENUM and (not self.choices or self.enum_default not in self.choices):
            raise ValueError(f"{self.name}: enum needs choices and a default among them")
        return self

    @property
    def default(self) -> ParamValue:
        if self.type is ParamType.INT:
            return self.int_default
        if self.type is ParamType.FLOAT:
            return self.float_default
        if self.type is ParamType.BOOL:
            return self.bool_default
        return self.enum_default

    def check(self, value: object) -> str | None:
        """Return why ``value`` is not valid for this parameter, or None. Never echoes the value
        for enums (a string could be anything); numbers are safe to name."""
        t = self.type
        if t is ParamType.BOOL:
            return None if isinstance(value, bool) else f"parameter '{self.name}' must be a bool"
        if t is ParamType.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"parameter '{self.name}' must be an int"
            if not self.int_min <= value <= self.int_max:
                return f"parameter '{self.name}'={value} outside [{self.int_min}, {self.int_max}]"
            return None
        if t is ParamType.FLOAT:
            if isinstance(value, bool) or not isinstance(value, float | int):
                return f"parameter '{self.name}' must be a float"
            v = float(value)
            if not math.isfinite(v) or not self.float_min <= v <= self.float_max:
                return f"parameter '{self.name}'={v!r} outside [{self.float_min}, {self.float_max}]"
            return None
        if not isinstance(value, str) or value not in self.choices:
            return f"parameter '{self.name}' must be one of {list(self.choices)}"
        return None

    def json_schema(self) -> dict[str, Any]:
        t = self.type
        if t is ParamType.INT:
            return {"type": "integer", "minimum": self.int_min, "maximum": self.int_max,
                    "default": self.int_default}
        if t is ParamType.FLOAT:
            return {"type": "number", "minimum": self.float_min, "maximum": self.float_max,
                    "default": self.float_default}
        if t is ParamType.BOOL:
            return {"type": "boolean", "default": self.bool_default}
        return {"type": "string", "enum": list(self.choices), "default": self.enum_default}


class OperatorSpec(_Frozen):
    """What a site publishes about one operator: name, team, version and parameter specs."""

    name: Ident
    team: Team
    version: Ident
    params: tuple[ParamSpec, ...] = Field(default=(), max_length=MAX_OPERATOR_PARAMS)

    @model_validator(mode="after")
    def _unique(self) -> OperatorSpec:
        names = [p.name for p in self.params]
        if len(names) != len(set(names)):
            raise ValueError(f"operator {self.name}: duplicate parameter name")
        return self

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def json_schema(self) -> dict[str, Any]:
        return {
            "title": self.name,
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.params},
            "additionalProperties": False,
        }


class OperatorCall(_Frozen):
    op: Ident
    params: tuple[tuple[Ident, ParamValue], ...] = ()

    @classmethod
    def of(cls, op: str, **params: ParamValue) -> OperatorCall:
        return cls(op=op, params=tuple(params.items()))

    @field_validator("params")
    @classmethod
    def _sorted_unique(
        cls, params: tuple[tuple[str, ParamValue], ...]
    ) -> tuple[tuple[str, ParamValue], ...]:
        names = [n for n, _ in params]
        if len(names) != len(set(names)):
            raise ValueError("duplicate parameter in an operator call")
        return tuple(sorted(params, key=lambda p: p[0]))

    @property
    def kwargs(self) -> dict[str, ParamValue]:
        return dict(self.params)


class Strategy(_Frozen):
    """An ordered pipeline of operator calls. ``key`` is its canonical identity."""

    calls: tuple[OperatorCall, ...] = ()

    def canonical(self) -> list[dict[str, Any]]:
        return [{"op": c.op, "params": {n: v for n, v in c.params}} for c in self.calls]

    @property
    def key(self) -> str:
        raw = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def describe(self) -> str:
        if not self.calls:
            return "(no processing)"
        return " -> ".join(
            c.op + ("(" + ", ".join(f"{n}={v}" for n, v in c.params) + ")" if c.params else "")
            for c in self.calls
        )


class EvalSettings(_Frozen):
    evaluator: EvaluatorKind = EvaluatorKind.QUALITY_PROXY
    metric: Metric = Metric.QUALITY_PROXY
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    train_steps: int = Field(default=0, ge=0, le=100_000)
    sample_rate_permille: int = Field(default=200, ge=1, le=1000)
    use_screening: bool = True
    use_cache: bool = True


class Hello(_Frozen):
    site_id: Ident
    software_version: Ident
    protocol_version: int = PROTOCOL_VERSION
    catalog: tuple[OperatorSpec, ...] = Field(default=(), max_length=MAX_CATALOG_OPERATORS)
    size_bucket: SizeBucket = SizeBucket.UNDER_1K

    @field_validator("catalog")
    @classmethod
    def _unique_names(cls, catalog: tuple[OperatorSpec, ...]) -> tuple[OperatorSpec, ...]:
        if len({o.name for o in catalog}) != len(catalog):
            raise ValueError("duplicate operator name in the catalog")
        return catalog


class HelloReply(_Frozen):
    accepted: bool
    protocol_version: int = PROTOCOL_VERSION
    heartbeat_interval_ms: int = 5_000
    poll_wait_ms: int = 2_000


class Heartbeat(_Frozen):
    site_id: Ident
    tasks_done: int = Field(default=0, ge=0)


class HeartbeatReply(_Frozen):
    known: bool


class Poll(_Frozen):
    site_id: Ident
    wait_ms: int = Field(default=2_000, ge=0, le=60_000)


class Task(_Frozen):
    task_id: Ident
    search_id: Ident
    strategy: Strategy
    settings: EvalSettings
    deadline_s: int = Field(default=600, ge=1, le=86_400)
    attempt: int = Field(default=1, ge=1)


class PollReply(_Frozen):
    task: Task | None = None


def coarse_ms(seconds: float) -> int:
    """Seconds as whole milliseconds rounded to 100 ms: timing on the wire stays coarse."""
    return max(0, round(seconds * 10)) * 100 if math.isfinite(seconds) else 0


def permille(part: int, whole: int) -> int:
    """``part / whole`` in thousandths, clamped to [0, 1000]; 1000 when ``whole`` is 0 (nothing left out)."""
    return 1000 if whole <= 0 else min(1000, max(0, round(1000 * part / whole)))


class ResultReport(_Frozen):
    task_id: Ident
    site_id: Ident
    status: TaskStatus
    score: float = 0.0
    epsilon_spent: float = Field(default=0.0, ge=0.0)
    epsilon_remaining: float = Field(default=0.0, ge=0.0)
    eval_ms: int = Field(default=0, ge=0)  # coarse timing, rounded to 100 ms (see coarse_ms)
    processing_ms: int = Field(default=0, ge=0)
    cache_hits: int = Field(default=0, ge=0)
    operators_run: int = Field(default=0, ge=0)
    cache_saved_ms: int = Field(default=0, ge=0)
    sampled_permille: int = Field(default=1000, ge=0, le=1000)
    targets_permille: int = Field(default=1000, ge=0, le=1000)

    @model_validator(mode="after")
    def _finite(self) -> ResultReport:
        for v in (self.score, self.epsilon_spent, self.epsilon_remaining):
            if not math.isfinite(v):
                raise ValueError("score and epsilon fields must be finite")
        return self


class ResultAck(_Frozen):
    accepted: bool
    duplicate: bool = False
