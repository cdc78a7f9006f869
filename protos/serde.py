"""Conversion between ``*_pb2`` messages and the typed views; the only module besides the gRPC
servicer/client that touches generated code.

``from_pb`` validates: a message with unknown fields, a bad identifier, an unset enum or an out-of-range
number raises :class:`MalformedMessage` (or :class:`UnexpectedField`) naming the field, never echoing
string content (it could be anything a peer chose to send).
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from pydantic import ValidationError

from protos import federation_pb2 as pb
from protos.errors import MalformedMessage
from protos.views import (
    EvalSettings,
    EvaluatorKind,
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    Metric,
    OperatorCall,
    OperatorSpec,
    ParamSpec,
    ParamType,
    ParamValue,
    Poll,
    PollReply,
    ResultAck,
    ResultReport,
    SizeBucket,
    Strategy,
    Task,
    TaskStatus,
    Team,
)

__all__ = [
    "UnexpectedField",
    "decode",
    "encode",
    "from_pb",
    "message_type",
    "to_pb",
]

M = TypeVar("M", bound=Message)


class UnexpectedField(MalformedMessage):
    """The message carries a field this version of the contract does not define."""


# enum <-> proto enum numbers, by name convention: Team.CLEANING <-> TEAM_CLEANING.
def _enum_to_pb(prefix: str, value: Any) -> Any:  # a pb enum number
    return int(pb.DESCRIPTOR.enum_types_by_name[_ENUM_PB[prefix]].values_by_name[
        f"{prefix}_{value.name}"].number)


def _enum_from_pb(prefix: str, cls: Any, number: int, field: str) -> Any:
    desc = pb.DESCRIPTOR.enum_types_by_name[_ENUM_PB[prefix]]
    v = desc.values_by_number.get(number)
    if v is None or v.number == 0:
        raise MalformedMessage(f"field '{field}' is unset or not a known {_ENUM_PB[prefix]}")
    try:
        return cls[v.name[len(prefix) + 1:]]
    except KeyError:
        raise MalformedMessage(f"field '{field}' has an enum value this version does not use") from None


_ENUM_PB = {
    "TEAM": "Team",
    "PARAM_TYPE": "ParamType",
    "SIZE_BUCKET": "SizeBucket",
    "METRIC": "Metric",
    "EVALUATOR": "Evaluator",
    "TASK_STATUS": "TaskStatus",
}
_SIZE_NAMES = {
    SizeBucket.UNDER_1K: "UNDER_1K",
    SizeBucket.FROM_1K_TO_10K: "1K_10K",
    SizeBucket.FROM_10K_TO_100K: "10K_100K",
    SizeBucket.OVER_100K: "OVER_100K",
}


def _size_to_pb(b: SizeBucket) -> Any:
    return (pb.SizeBucket.Value(f"SIZE_BUCKET_{_SIZE_NAMES[b]}"))


def _size_from_pb(n: int) -> SizeBucket:
    for b, name in _SIZE_NAMES.items():
        if n == pb.SizeBucket.Value(f"SIZE_BUCKET_{name}"):
            return b
    raise MalformedMessage("field 'size_bucket' is unset or unknown")


def _check_no_unknown(msg: Message, path: str = "") -> None:
    if len(UnknownFieldSet(msg)):
        raise UnexpectedField(f"message {path or msg.DESCRIPTOR.name} carries a field not in the v1 contract")
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        items = value if fd.is_repeated else [value]
        for i, sub in enumerate(items):
            _check_no_unknown(sub, f"{path or msg.DESCRIPTOR.name}.{fd.name}[{i}]")


# ---------------------------------------------------------------- to_pb

def _param_spec_pb(p: ParamSpec) -> pb.ParamSpec:
    return pb.ParamSpec(
        name=p.name, type=_enum_to_pb("PARAM_TYPE", p.type), int_min=p.int_min, int_max=p.int_max,
        int_default=p.int_default, float_min=p.float_min, float_max=p.float_max,
        float_default=p.float_default, bool_default=p.bool_default, choices=list(p.choices),
        enum_default=p.enum_default,
    )


def _op_spec_pb(o: OperatorSpec) -> pb.OperatorSpec:
    return pb.OperatorSpec(name=o.name, team=_enum_to_pb("TEAM", o.team), version=o.version,
                           params=[_param_spec_pb(p) for p in o.params])


def _value_pb(name: str, v: ParamValue) -> pb.ParamValue:
    if isinstance(v, bool):
        return pb.ParamValue(name=name, bool_value=v)
    if isinstance(v, int):
        return pb.ParamValue(name=name, int_value=v)
    if isinstance(v, float):
        return pb.ParamValue(name=name, float_value=v)
    return pb.ParamValue(name=name, enum_value=v)


def _strategy_pb(s: Strategy) -> pb.Strategy:
    return pb.Strategy(calls=[pb.OperatorCall(op=c.op, params=[_value_pb(n, v) for n, v in c.params])
                              for c in s.calls])


def _settings_pb(s: EvalSettings) -> pb.EvalSettings:
    return pb.EvalSettings(
        evaluator=_enum_to_pb("EVALUATOR", s.evaluator), metric=_enum_to_pb("METRIC", s.metric),
        seed=s.seed, train_steps=s.train_steps, sample_rate_permille=s.sample_rate_permille,
        use_screening=s.use_screening, use_cache=s.use_cache,
    )


def _task_pb(t: Task) -> pb.Task:
    return pb.Task(task_id=t.task_id, search_id=t.search_id, strategy=_strategy_pb(t.strategy),
                   settings=_settings_pb(t.settings), deadline_s=t.deadline_s, attempt=t.attempt)


def to_pb(view: Any) -> Message:
    """Convert a typed view into its protobuf message."""
    if isinstance(view, Hello):
        return pb.HelloRequest(site_id=view.site_id, software_version=view.software_version,
                               protocol_version=view.protocol_version,
                               catalog=[_op_spec_pb(o) for o in view.catalog],
                               size_bucket=_size_to_pb(view.size_bucket))
    if isinstance(view, HelloReply):
        return pb.HelloReply(accepted=view.accepted, protocol_version=view.protocol_version,
                             heartbeat_interval_ms=view.heartbeat_interval_ms,
                             poll_wait_ms=view.poll_wait_ms)
    if isinstance(view, Heartbeat):
        return pb.HeartbeatRequest(site_id=view.site_id, tasks_done=view.tasks_done)
    if isinstance(view, HeartbeatReply):
        return pb.HeartbeatReply(known=view.known)
    if isinstance(view, Poll):
        return pb.PollRequest(site_id=view.site_id, wait_ms=view.wait_ms)
    if isinstance(view, PollReply):
        if view.task is None:
            return pb.PollReply(has_task=False)
        return pb.PollReply(has_task=True, task=_task_pb(view.task))
    if isinstance(view, Task):
        return _task_pb(view)
    if isinstance(view, Strategy):
        return _strategy_pb(view)
    if isinstance(view, ResultReport):
        return pb.ResultReport(
            task_id=view.task_id, site_id=view.site_id, status=_enum_to_pb("TASK_STATUS", view.status),
            score=view.score, epsilon_spent=view.epsilon_spent, epsilon_remaining=view.epsilon_remaining,
            eval_ms=view.eval_ms, processing_ms=view.processing_ms, cache_hits=view.cache_hits,
            operators_run=view.operators_run, cache_saved_ms=view.cache_saved_ms,
            sampled_permille=view.sampled_permille, targets_permille=view.targets_permille)
    if isinstance(view, ResultAck):
        return pb.ResultAck(accepted=view.accepted, duplicate=view.duplicate)
    raise TypeError(f"no protobuf message for {type(view).__name__}")


# ---------------------------------------------------------------- from_pb

def _param_spec(p: pb.ParamSpec) -> ParamSpec:
    return ParamSpec(
        name=p.name, type=_enum_from_pb("PARAM_TYPE", ParamType, p.type, "type"), int_min=p.int_min,
        int_max=p.int_max, int_default=p.int_default, float_min=p.float_min, float_max=p.float_max,
        float_default=p.float_default, bool_default=p.bool_default, choices=tuple(p.choices),
        enum_default=p.enum_default)


def _op_spec(o: pb.OperatorSpec) -> OperatorSpec:
    return OperatorSpec(name=o.name, team=_enum_from_pb("TEAM", Team, o.team, "team"), version=o.version,
                        params=tuple(_param_spec(p) for p in o.params))


def _value(v: pb.ParamValue) -> ParamValue:
    kind = v.WhichOneof("value")
    if kind is None:
        raise MalformedMessage("a parameter value is unset")
    out: ParamValue = getattr(v, kind)
    return out


def _strategy(s: pb.Strategy) -> Strategy:
    return Strategy(calls=tuple(
        OperatorCall(op=c.op, params=tuple((p.name, _value(p)) for p in c.params)) for c in s.calls))


def _settings(s: pb.EvalSettings) -> EvalSettings:
    return EvalSettings(
        evaluator=_enum_from_pb("EVALUATOR", EvaluatorKind, s.evaluator, "settings.evaluator"),
        metric=_enum_from_pb("METRIC", Metric, s.metric, "settings.metric"), seed=s.seed,
        train_steps=s.train_steps, sample_rate_permille=s.sample_rate_permille,
        use_screening=s.use_screening, use_cache=s.use_cache)


def _task(t: pb.Task) -> Task:
    if not t.HasField("strategy") or not t.HasField("settings"):
        raise MalformedMessage("task without strategy or settings")
    return Task(task_id=t.task_id, search_id=t.search_id, strategy=_strategy(t.strategy),
                settings=_settings(t.settings), deadline_s=t.deadline_s, attempt=t.attempt)


def _convert(msg: Message) -> Any:
    if isinstance(msg, pb.HelloRequest):
        return Hello(site_id=msg.site_id, software_version=msg.software_version,
                     protocol_version=msg.protocol_version,
                     catalog=tuple(_op_spec(o) for o in msg.catalog),
                     size_bucket=_size_from_pb(msg.size_bucket))
    if isinstance(msg, pb.HelloReply):
        return HelloReply(accepted=msg.accepted, protocol_version=msg.protocol_version,
                          heartbeat_interval_ms=msg.heartbeat_interval_ms, poll_wait_ms=msg.poll_wait_ms)
    if isinstance(msg, pb.HeartbeatRequest):
        return Heartbeat(site_id=msg.site_id, tasks_done=msg.tasks_done)
    if isinstance(msg, pb.HeartbeatReply):
        return HeartbeatReply(known=msg.known)
    if isinstance(msg, pb.PollRequest):
        return Poll(site_id=msg.site_id, wait_ms=msg.wait_ms)
    if isinstance(msg, pb.PollReply):
        return PollReply(task=_task(msg.task) if msg.has_task else None)
    if isinstance(msg, pb.Task):
        return _task(msg)
    if isinstance(msg, pb.Strategy):
        return _strategy(msg)
    if isinstance(msg, pb.ResultReport):
        return ResultReport(
            task_id=msg.task_id, site_id=msg.site_id,
            status=_enum_from_pb("TASK_STATUS", TaskStatus, msg.status, "status"), score=msg.score,
            epsilon_spent=msg.epsilon_spent, epsilon_remaining=msg.epsilon_remaining,
            eval_ms=msg.eval_ms, processing_ms=msg.processing_ms, cache_hits=msg.cache_hits,
            operators_run=msg.operators_run, cache_saved_ms=msg.cache_saved_ms,
            sampled_permille=msg.sampled_permille, targets_permille=msg.targets_permille)
    if isinstance(msg, pb.ResultAck):
        return ResultAck(accepted=msg.accepted, duplicate=msg.duplicate)
    raise TypeError(f"no typed view for {type(msg).__name__}")


def from_pb(msg: Message) -> Any:
    """Validate a protobuf message and convert it to its typed view.

    Raises UnexpectedField for fields outside the contract, MalformedMessage for anything else invalid.
    Error texts name fields and constraints only, never the offending string content.
    """
    _check_no_unknown(msg)
    try:
        return _convert(msg)
    except ValidationError as e:
        where = "; ".join(
            ".".join(str(p) for p in err["loc"]) + ": " + err["type"] for err in e.errors()[:5])
        raise MalformedMessage(f"invalid {msg.DESCRIPTOR.name}: {where}") from None


def encode(msg: Message) -> bytes:
    """Canonical bytes of a message: deterministic serialization (what the audit log hashes)."""
    return msg.SerializeToString(deterministic=True)


def decode(cls: type[M], data: bytes) -> M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        raise MalformedMessage(f"bytes do not parse as {cls.DESCRIPTOR.name}") from None
    return msg


def message_type(msg: Message) -> str:
    return str(msg.DESCRIPTOR.full_name)
