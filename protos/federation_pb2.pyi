from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Team(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEAM_UNSPECIFIED: _ClassVar[Team]
    TEAM_CLEANING: _ClassVar[Team]
    TEAM_GENERATION: _ClassVar[Team]
    TEAM_OPTIMIZATION: _ClassVar[Team]
    TEAM_SELECTION: _ClassVar[Team]

class ParamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAM_TYPE_UNSPECIFIED: _ClassVar[ParamType]
    PARAM_TYPE_INT: _ClassVar[ParamType]
    PARAM_TYPE_FLOAT: _ClassVar[ParamType]
    PARAM_TYPE_BOOL: _ClassVar[ParamType]
    PARAM_TYPE_ENUM: _ClassVar[ParamType]

class SizeBucket(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_BUCKET_UNSPECIFIED: _ClassVar[SizeBucket]
    SIZE_BUCKET_UNDER_1K: _ClassVar[SizeBucket]
    SIZE_BUCKET_1K_10K: _ClassVar[SizeBucket]
    SIZE_BUCKET_10K_100K: _ClassVar[SizeBucket]
    SIZE_BUCKET_OVER_100K: _ClassVar[SizeBucket]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_NEG_TOKEN_LOSS: _ClassVar[Metric]
    METRIC_PAIRWISE_WIN_RATE: _ClassVar[Metric]
    METRIC_JUDGE_WIN_RATE: _ClassVar[Metric]
    METRIC_QUALITY_PROXY: _ClassVar[Metric]

class Evaluator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATOR_UNSPECIFIED: _ClassVar[Evaluator]
    EVALUATOR_QUALITY_PROXY: _ClassVar[Evaluator]
    EVALUATOR_LORA: _ClassVar[Evaluator]

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_OK: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_MALFORMED: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_UNKNOWN_OPERATOR: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_OPERATOR_NOT_ALLOWED: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_BAD_PARAMETER: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_UNEXPECTED_FIELD: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_SETTINGS: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_BUDGET: _ClassVar[TaskStatus]
    TASK_STATUS_REJECTED_COHORT: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED_INTERNAL: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED_TIMEOUT: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED_WORKER_CRASH: _ClassVar[TaskStatus]
TEAM_UNSPECIFIED: Team
TEAM_CLEANING: Team
TEAM_GENERATION: Team
TEAM_OPTIMIZATION: Team
TEAM_SELECTION: Team
PARAM_TYPE_UNSPECIFIED: ParamType
PARAM_TYPE_INT: ParamType
PARAM_TYPE_FLOAT: ParamType
PARAM_TYPE_BOOL: ParamType
PARAM_TYPE_ENUM: ParamType
SIZE_BUCKET_UNSPECIFIED: SizeBucket
SIZE_BUCKET_UNDER_1K: SizeBucket
SIZE_BUCKET_1K_10K: SizeBucket
SIZE_BUCKET_10K_100K: SizeBucket
SIZE_BUCKET_OVER_100K: SizeBucket
METRIC_UNSPECIFIED: Metric
METRIC_NEG_TOKEN_LOSS: Metric
METRIC_PAIRWISE_WIN_RATE: Metric
METRIC_JUDGE_WIN_RATE: Metric
METRIC_QUALITY_PROXY: Metric
EVALUATOR_UNSPECIFIED: Evaluator
EVALUATOR_QUALITY_PROXY: Evaluator
EVALUATOR_LORA: Evaluator
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_OK: TaskStatus
TASK_STATUS_REJECTED_MALFORMED: TaskStatus
TASK_STATUS_REJECTED_UNKNOWN_OPERATOR: TaskStatus
TASK_STATUS_REJECTED_OPERATOR_NOT_ALLOWED: TaskStatus
TASK_STATUS_REJECTED_BAD_PARAMETER: TaskStatus
TASK_STATUS_REJECTED_UNEXPECTED_FIELD: TaskStatus
TASK_STATUS_REJECTED_SETTINGS: TaskStatus
TASK_STATUS_REJECTED_BUDGET: TaskStatus
TASK_STATUS_REJECTED_COHORT: TaskStatus
TASK_STATUS_FAILED_INTERNAL: TaskStatus
TASK_STATUS_FAILED_TIMEOUT: TaskStatus
TASK_STATUS_FAILED_WORKER_CRASH: TaskStatus

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "int_min", "int_max", "int_default", "float_min", "float_max", "float_default", "bool_default", "choices", "enum_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INT_MIN_FIELD_NUMBER: _ClassVar[int]
    INT_MAX_FIELD_NUMBER: _ClassVar[int]
    INT_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FLOAT_MIN_FIELD_NUMBER: _ClassVar[int]
    FLOAT_MAX_FIELD_NUMBER: _ClassVar[int]
    FLOAT_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    BOOL_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    ENUM_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParamType
    int_min: int
    int_max: int
    int_default: int
    float_min: float
    float_max: float
    float_default: float
    bool_default: bool
    choices: _containers.RepeatedScalarFieldContainer[str]
    enum_default: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParamType, str]] = ..., int_min: _Optional[int] = ..., int_max: _Optional[int] = ..., int_default: _Optional[int] = ..., float_min: _Optional[float] = ..., float_max: _Optional[float] = ..., float_default: _Optional[float] = ..., bool_default: _Optional[bool] = ..., choices: _Optional[_Iterable[str]] = ..., enum_default: _Optional[str] = ...) -> None: ...

class OperatorSpec(_message.Message):
    __slots__ = ("name", "team", "version", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    team: Team
    version: str
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    def __init__(self, name: _Optional[str] = ..., team: _Optional[_Union[Team, str]] = ..., version: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ...) -> None: ...

class ParamValue(_message.Message):
    __slots__ = ("name", "int_value", "float_value", "bool_value", "enum_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    ENUM_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    int_value: int
    float_value: float
    bool_value: bool
    enum_value: str
    def __init__(self, name: _Optional[str] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., enum_value: _Optional[str] = ...) -> None: ...

class OperatorCall(_message.Message):
    __slots__ = ("op", "params")
    OP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    op: str
    params: _containers.RepeatedCompositeFieldContainer[ParamValue]
    def __init__(self, op: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ...) -> None: ...

class Strategy(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[OperatorCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[OperatorCall, _Mapping]]] = ...) -> None: ...

class EvalSettings(_message.Message):
    __slots__ = ("evaluator", "metric", "seed", "train_steps", "sample_rate_permille", "use_screening", "use_cache")
    EVALUATOR_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    USE_SCREENING_FIELD_NUMBER: _ClassVar[int]
    USE_CACHE_FIELD_NUMBER: _ClassVar[int]
    evaluator: Evaluator
    metric: Metric
    seed: int
    train_steps: int
    sample_rate_permille: int
    use_screening: bool
    use_cache: bool
    def __init__(self, evaluator: _Optional[_Union[Evaluator, str]] = ..., metric: _Optional[_Union[Metric, str]] = ..., seed: _Optional[int] = ..., train_steps: _Optional[int] = ..., sample_rate_permille: _Optional[int] = ..., use_screening: _Optional[bool] = ..., use_cache: _Optional[bool] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("site_id", "software_version", "protocol_version", "catalog", "size_bucket")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    SIZE_BUCKET_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    software_version: str
    protocol_version: int
    catalog: _containers.RepeatedCompositeFieldContainer[OperatorSpec]
    size_bucket: SizeBucket
    def __init__(self, site_id: _Optional[str] = ..., software_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., catalog: _Optional[_Iterable[_Union[OperatorSpec, _Mapping]]] = ..., size_bucket: _Optional[_Union[SizeBucket, str]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("accepted", "protocol_version", "heartbeat_interval_ms", "poll_wait_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    POLL_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    protocol_version: int
    heartbeat_interval_ms: int
    poll_wait_ms: int
    def __init__(self, accepted: _Optional[bool] = ..., protocol_version: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., poll_wait_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("site_id", "tasks_done")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    tasks_done: int
    def __init__(self, site_id: _Optional[str] = ..., tasks_done: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("site_id", "wait_ms")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    wait_ms: int
    def __init__(self, site_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "search_id", "strategy", "settings", "deadline_s", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    search_id: str
    strategy: Strategy
    settings: EvalSettings
    deadline_s: int
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., search_id: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, _Mapping]] = ..., settings: _Optional[_Union[EvalSettings, _Mapping]] = ..., deadline_s: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class PollReply(_message.Message):
    __slots__ = ("has_task", "task")
    HAS_TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    has_task: bool
    task: Task
    def __init__(self, has_task: _Optional[bool] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ResultReport(_message.Message):
    __slots__ = ("task_id", "site_id", "status", "score", "epsilon_spent", "epsilon_remaining", "eval_ms", "processing_ms", "cache_hits", "operators_run", "cache_saved_ms", "sampled_permille", "targets_permille")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    EVAL_MS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    OPERATORS_RUN_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    site_id: str
    status: TaskStatus
    score: float
    epsilon_spent: float
    epsilon_remaining: float
    eval_ms: int
    processing_ms: int
    cache_hits: int
    operators_run: int
    cache_saved_ms: int
    sampled_permille: int
    targets_permille: int
    def __init__(self, task_id: _Optional[str] = ..., site_id: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., score: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., eval_ms: _Optional[int] = ..., processing_ms: _Optional[int] = ..., cache_hits: _Optional[int] = ..., operators_run: _Optional[int] = ..., cache_saved_ms: _Optional[int] = ..., sampled_permille: _Optional[int] = ..., targets_permille: _Optional[int] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...
