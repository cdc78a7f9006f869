"""The contract's typed views round-trip through protobuf, and anything outside the contract is refused."""

import pytest

from protos import federation_pb2 as pb
from protos.errors import MalformedMessage
from protos.serde import UnexpectedField, decode, encode, from_pb, to_pb
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

SPEC = OperatorSpec(name="length_filter", team=Team.CLEANING, version="1", params=(
    ParamSpec(name="min_chars", type=ParamType.INT, int_min=0, int_max=100, int_default=2),
    ParamSpec(name="ratio", type=ParamType.FLOAT, float_min=0.0, float_max=1.0, float_default=0.5),
    ParamSpec(name="strict", type=ParamType.BOOL, bool_default=True),
    ParamSpec(name="mode", type=ParamType.ENUM, choices=("drop", "trim"), enum_default="drop"),
))
STRATEGY = Strategy(calls=(OperatorCall.of("length_filter", min_chars=3, ratio=0.25, strict=False, mode="trim"),
                           OperatorCall.of("exact_dedup")))
TASK = Task(task_id="t-1", search_id="s-1", strategy=STRATEGY,
            settings=EvalSettings(evaluator=EvaluatorKind.LORA, metric=Metric.NEG_TOKEN_LOSS, seed=7))

VIEWS = [
    Hello(site_id="hospital-a", software_version="0.1.0", catalog=(SPEC,), size_bucket=SizeBucket.FROM_10K_TO_100K),
    HelloReply(accepted=True), Heartbeat(site_id="hospital-a", tasks_done=3), HeartbeatReply(known=True),
    Poll(site_id="hospital-a", wait_ms=500), PollReply(task=None), PollReply(task=TASK), TASK, STRATEGY,
    ResultReport(task_id="t-1", site_id="hospital-a", status=TaskStatus.REJECTED_BUDGET, epsilon_remaining=0.5),
    ResultReport(task_id="t-1", site_id="hospital-a", status=TaskStatus.OK, score=-0.0125, eval_ms=4000,
                 cache_saved_ms=200, sampled_permille=200, targets_permille=350),
    ResultAck(accepted=True, duplicate=True),
]


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: type(v).__name__)
def test_round_trip(view: object) -> None:
    msg = to_pb(view)
    assert from_pb(decode(type(msg), encode(msg))) == view


def test_encoding_is_canonical() -> None:
    assert encode(to_pb(TASK)) == encode(to_pb(Task.model_validate(TASK.model_dump())))


def test_param_order_does_not_change_identity() -> None:
    a = OperatorCall(op="x", params=(("b", 1), ("a", 2)))
    b = OperatorCall(op="x", params=(("a", 2), ("b", 1)))
    assert a == b and Strategy(calls=(a,)).key == Strategy(calls=(b,)).key


def test_unknown_field_is_refused_anywhere() -> None:
    msg = to_pb(TASK)
    # field 99 (varint) appended inside the nested strategy's first call
    msg.strategy.calls[0].MergeFromString(bytes([0x98, 0x06, 0x01]))
    with pytest.raises(UnexpectedField):
        from_pb(decode(pb.Task, encode(msg)))


@pytest.mark.parametrize("mutate", [
    lambda m: setattr(m, "task_id", "has spaces"),
    lambda m: setattr(m, "task_id", "x" * 65),
    lambda m: setattr(m.settings, "evaluator", 0),
    lambda m: setattr(m.settings, "sample_rate_permille", 5000),
    lambda m: m.strategy.calls[0].params[0].ClearField("int_value"),
    lambda m: setattr(m.strategy.calls[0].params[0], "enum_value", "<script>"),
])
def test_malformed_is_refused_without_echoing(mutate) -> None:  # type: ignore[no-untyped-def]
    msg = to_pb(TASK)
    mutate(msg)
    with pytest.raises(MalformedMessage) as info:
        from_pb(msg)
    assert "has spaces" not in str(info.value) and "<script>" not in str(info.value)


def test_garbage_bytes() -> None:
    with pytest.raises(MalformedMessage):
        decode(pb.Task, b"\xff\xff\xff\xff")


def test_nan_score_refused() -> None:
    msg = pb.ResultReport(task_id="t", site_id="s", status=pb.TASK_STATUS_OK, score=float("nan"))
    with pytest.raises(MalformedMessage):
        from_pb(msg)


def test_param_spec_json_schema_and_checks() -> None:
    schema = SPEC.json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["min_chars"] == {"type": "integer", "minimum": 0, "maximum": 100, "default": 2}
    p = SPEC.param("min_chars")
    assert p is not None and p.check(5) is None and p.check(101) and p.check(True) and p.check(1.5)
    m = SPEC.param("mode")
    assert m is not None and m.check("trim") is None and m.check("other")
