"""1,000 generated bad task messages, fed to a real site agent the way a task reaches it.

A scripted (hostile) coordinator hands each message to a running ``SiteAgent`` as the bytes of a poll reply,
over real gRPC with mutual TLS on a unix socket (in-process, no network). The bytes then take the path
every task takes: gRPC's deserializer -> the client's audit entry -> ``TaskRunner.handle`` (id, parse,
policy, budget) -> the result store -> the report back. For each message the test checks:

- answered with a typed rejection (the status the defect calls for), or, when there is nothing to answer
  (bytes that do not parse, a reply over the size limit, no task, an id that is not an identifier),
  not answered at all;
- nothing executed: no strategy run, the spy operator never built, nothing reserved in the privacy ledger;
- exactly one audit entry for it: the received message, byte for byte (or, for a reply that never parsed,
  one 'undelivered' marker on the poll it answered), plus one for the rejection sent back;
- the agent is still serving: its thread is alive, and a good task before and after the run is executed.
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, cast

import pytest
import yaml
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import Field

from protos import federation_pb2 as pb
from protos.audit_format import Entry, parse_entry, verify
from protos.serde import encode
from protos.tls import init_ca, issue_coordinator, issue_site
from protos.views import IDENT_PATTERN, OperatorSpec, ParamSpec, ParamType, TaskStatus, Team
from site_agent.agent import SiteAgent
from site_agent.config import load_config
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from site_agent.operators import registry
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.policy import load_policy, published_catalog
from tests.fakes.coordinator import ScriptedCoordinator

MAX_REPLY = 1 << 20  # the site client's grpc.max_receive_message_length
ALLOWED = ["remove_markup", "normalize_text", "length_filter", "fuzz_spy"]
REJECTIONS = frozenset(s for s in TaskStatus if s.is_rejection)
S = TaskStatus
_IDENT = re.compile(IDENT_PATTERN)


# ---------------------------------------------------------------- a spy operator the policy allows

class SpyParams(OperatorParams):
    n: int = Field(default=2, ge=0, le=10)
    rate: float = Field(default=0.5, ge=0.0, le=1.0)
    mode: Literal["keep", "drop"] = "keep"
    flag: bool = False


class FuzzSpy(Operator):
    """Counts how often it is built and run; keeps every row."""

    name = "fuzz_spy"
    team = Team.CLEANING
    Params = SpyParams
    built: ClassVar[int] = 0
    applied: ClassVar[int] = 0

    def __init__(self, params: SpyParams) -> None:
        super().__init__(params)
        FuzzSpy.built += 1

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        FuzzSpy.applied += 1
        return dict(batch), [True] * len(batch["answer"])


# ---------------------------------------------------------------- the site under test

def _scratch_root() -> str | None:
    # Every audit entry is fsynced three times: on tmpfs that is free, which keeps 1,000 messages fast.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@dataclass
class Site:
    agent: SiteAgent
    coord: ScriptedCoordinator
    thread: threading.Thread
    errors: list[BaseException]
    audit_path: Path
    catalog: dict[str, OperatorSpec]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    registry.registered_operators()  # built-ins first
    root = Path(tempfile.mkdtemp(prefix="autodp-fz-", dir=_scratch_root() or tmp_path))
    try:
        registry.register_operator(FuzzSpy)
        certs = root / "certs"
        init_ca(certs)
        issue_coordinator(certs)
        issue_site(certs, "hospital-a")
        data, _ = make_toy_dataset(60, seed=3)
        save_pairs(data, root / "train.jsonl")
        (root / "policy.yaml").write_text(yaml.safe_dump({
            "allowed_operators": ALLOWED, "allowed_evaluators": ["quality_proxy"], "max_train_steps": 500,
            "min_sample_rate_permille": 10, "max_strategy_length": 8,
            "parameter_bounds": {"fuzz_spy": {"n": {"max": 5}}, "length_filter": {"min_answer_chars": {"max": 500}}},
        }))
        with ScriptedCoordinator(certs, root) as coord:
            cfg = {"site_id": "hospital-a", "coordinator": coord.address, "tls_server_name": "localhost",
                   "tls": {"cert": str(certs / "site-hospital-a.crt"), "key": str(certs / "site-hospital-a.key"),
                           "ca": str(certs / "ca.crt")},
                   "audit_key": str(certs / "site-hospital-a.audit.key"), "state_dir": str(root / "state"),
                   "policy": "policy.yaml", "data": {"path": "train.jsonl"}, "embedder": None, "screening": None,
                   "poll_wait_ms": 100, "backoff_initial_s": 0.005, "backoff_max_s": 0.02,
                   "privacy": {"min_cohort": 5}, "cache": {"dir": str(root / "cache")}}
            (root / "site.yaml").write_text(yaml.safe_dump(cfg))
            agent = SiteAgent(load_config(root / "site.yaml"))
            errors: list[BaseException] = []

            def serve() -> None:
                try:
                    agent.run()
                except BaseException as e:  # the test asserts there is none
                    errors.append(e)

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            catalog = {s.name: s for s in published_catalog(load_policy(root / "policy.yaml"))}
            try:
                yield Site(agent, coord, thread, errors, root / "state" / "audit.log", catalog)
            finally:
                agent.stop.set()
                thread.join(10)
                agent.close()
    finally:
        registry._REGISTRY.pop("fuzz_spy", None)
        shutil.rmtree(root, ignore_errors=True)


class AuditTail:
    """Reads the entries appended to an audit log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new(self) -> list[Entry]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [parse_entry(line) for line in chunk[:end].splitlines()]


# ---------------------------------------------------------------- building messages

PLACEHOLDER = "fz-placeholder"
Level = Literal["envelope", "task", "strategy", "call", "param", "settings"]
# wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 (3/4 are groups)
DECLARED: dict[Level, dict[int, int]] = {
    "envelope": {1: 0, 2: 2},
    "task": {1: 2, 2: 2, 3: 2, 4: 2, 5: 0, 6: 0},
    "strategy": {1: 2},
    "call": {1: 2, 2: 2},
    "param": {1: 2, 2: 0, 3: 1, 4: 0, 5: 2},
    "settings": {n: 0 for n in range(1, 8)},
}


def tag(number: int, wire: int) -> bytes:
    return _VarintBytes((number << 3) | wire)


def len_field(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + _VarintBytes(len(payload)) + payload


def field_bytes(number: int, wire: int, rng: random.Random, size: int = 8) -> bytes:
    """One field of the given wire type with an arbitrary (well-formed) value."""
    if wire == 0:
        return tag(number, 0) + _VarintBytes(rng.getrandbits(64))
    if wire == 1:
        return tag(number, 1) + rng.randbytes(8)
    if wire == 5:
        return tag(number, 5) + rng.randbytes(4)
    if wire == 3:
        return tag(number, 3) + tag(number, 4)
    return len_field(number, rng.randbytes(size))


def serialize(reply: pb.PollReply, level: Level | None = None, extra: bytes = b"") -> bytes:
    """``reply``'s bytes with ``extra`` appended inside the message at ``level`` (the first call/param)."""
    if level is None or not extra:
        return reply.SerializeToString()
    if level == "envelope":
        return reply.SerializeToString() + extra
    t = reply.task
    if level == "settings":
        inner = len_field(4, t.settings.SerializeToString() + extra)
        rest = pb.Task()
        rest.CopyFrom(t)
        rest.ClearField("settings")
        task = rest.SerializeToString() + inner
    elif level == "task":
        task = t.SerializeToString() + extra
    else:
        s = t.strategy
        if level == "strategy":
            strategy = s.SerializeToString() + extra
        else:
            c0 = s.calls[0] if s.calls else pb.OperatorCall()
            if level == "call":
                call0 = c0.SerializeToString() + extra
            elif not c0.params:  # a parameter value made of nothing but ``extra``
                call0 = c0.SerializeToString() + len_field(2, extra)
            else:
                p0 = c0.params[0].SerializeToString() + extra
                call0 = len_field(1, c0.op.encode()) + len_field(2, p0) + b"".join(
                    len_field(2, p.SerializeToString()) for p in c0.params[1:])
            strategy = len_field(1, call0) + b"".join(len_field(1, c.SerializeToString()) for c in s.calls[1:])
        rest = pb.Task()
        rest.CopyFrom(t)
        rest.ClearField("strategy")
        task = rest.SerializeToString() + len_field(3, strategy)
    head = pb.PollReply(has_task=reply.has_task).SerializeToString()
    return head + len_field(2, task)


def set_value(pv: pb.ParamValue, kind: str, value: object) -> None:
    setattr(pv, kind, value)


def value_kind(p: ParamSpec) -> str:
    return {ParamType.INT: "int_value", ParamType.FLOAT: "float_value", ParamType.BOOL: "bool_value",
            ParamType.ENUM: "enum_value"}[p.type]


def valid_value(rng: random.Random, p: ParamSpec) -> object:
    if p.type is ParamType.INT:
        return rng.randint(p.int_min, p.int_max)
    if p.type is ParamType.FLOAT:
        return rng.choice([p.float_min, p.float_max, rng.uniform(p.float_min, p.float_max)])
    if p.type is ParamType.BOOL:
        return rng.random() < 0.5
    return rng.choice(p.choices)


def rng_of(draw: st.DrawFn) -> random.Random:
    # The valid parts of a message come from one drawn seed: hypothesis draws are kept for the defects.
    return random.Random(draw(st.integers(0, 2**32)))


@functools.cache
def idents(max_size: int = 20) -> st.SearchStrategy[str]:
    return st.from_regex(rf"[a-z][a-z0-9_]{{0,{max_size - 1}}}", fullmatch=True)


@functools.cache
def not_idents() -> st.SearchStrategy[str]:
    fixed = st.sampled_from(["", " ", "a b", "-lead", ".dot", "ok\n", "x" * 65, "é", "a/b", "\x00", "id\r\n"])
    return fixed | st.text(max_size=80).filter(lambda s: _IDENT.fullmatch(s) is None)


def huge(draw: st.DrawFn, lo: int, hi: int) -> str:
    n = draw(st.integers(lo, hi))
    unit = draw(st.sampled_from(["a", "A0", "x.y-z_", "9:"]))
    return (unit * (n // len(unit) + 1))[:n]


@dataclass(frozen=True)
class Mutation:
    """One defect put into an otherwise valid task, and the statuses a site may answer it with."""

    what: str
    expect: frozenset[TaskStatus]
    apply: Callable[[pb.PollReply], None] = field(repr=False, compare=False)
    level: Level | None = None  # where raw ``extra`` bytes go, if any
    extra: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class Case:
    kind: str
    mutations: tuple[Mutation, ...]
    base: Callable[[str], pb.PollReply] = field(repr=False, compare=False)
    raw: bytes | None = field(default=None, repr=False, compare=False)  # whole message, no base

    def make(self, task_id: str) -> bytes:
        if self.raw is not None:
            return self.raw
        reply = self.base(task_id)
        for m in self.mutations:
            m.apply(reply)
        raw = [m for m in self.mutations if m.extra]
        if not raw:
            return reply.SerializeToString()
        return serialize(reply, raw[0].level, raw[0].extra)

    @property
    def expect(self) -> frozenset[TaskStatus]:
        out: frozenset[TaskStatus] = frozenset()
        for m in self.mutations:
            out |= m.expect
        return out or REJECTIONS


def _noop(reply: pb.PollReply) -> None:
    pass


class Gen:
    """Hypothesis strategies for bad task messages against one site's published catalog."""

    def __init__(self, catalog: dict[str, OperatorSpec]) -> None:
        self.catalog = catalog
        self.specs = sorted(catalog.values(), key=lambda s: s.name)
        self.registered = set(registry.registered_operators())
        self.forbidden = sorted(self.registered - set(catalog))
        self.with_params = [s for s in self.specs if s.params]

    # -- a valid task ----------------------------------------------------------------
    def call(self, rng: random.Random, spec: OperatorSpec) -> pb.OperatorCall:
        call = pb.OperatorCall(op=spec.name)
        for p in spec.params:
            if rng.random() < 0.5:
                set_value(call.params.add(name=p.name), value_kind(p), valid_value(rng, p))
        return call

    def base(self, rng: random.Random, min_calls: int = 0) -> Callable[[str], pb.PollReply]:
        calls = [self.call(rng, rng.choice(self.specs)) for _ in range(rng.randint(min_calls, 3))]
        settings_ = pb.EvalSettings(evaluator=pb.EVALUATOR_QUALITY_PROXY, metric=pb.METRIC_QUALITY_PROXY,
                                    seed=rng.randint(0, 2**31 - 1), train_steps=rng.randint(0, 500),
                                    sample_rate_permille=rng.randint(10, 1000),
                                    use_screening=rng.random() < 0.5, use_cache=rng.random() < 0.5)
        search_id = f"s-{rng.getrandbits(40):x}"
        deadline, attempt = rng.randint(1, 86_400), rng.choice([1, 2, rng.randint(1, 2**32 - 1)])

        def make(task_id: str) -> pb.PollReply:
            task = pb.Task(task_id=task_id, search_id=search_id, strategy=pb.Strategy(calls=calls),
                           settings=settings_, deadline_s=deadline, attempt=attempt)
            return pb.PollReply(has_task=True, task=task)
        return make

    # -- one defect each -------------------------------------------------------------
    def insert_call(self, draw: st.DrawFn, call: pb.OperatorCall) -> Callable[[pb.PollReply], None]:
        pos = draw(st.integers(0, 3))

        def apply(reply: pb.PollReply) -> None:
            calls = list(reply.task.strategy.calls)
            calls.insert(min(pos, len(calls)), call)
            del reply.task.strategy.calls[:]
            reply.task.strategy.calls.extend(calls)
        return apply

    def on_param(self, draw: st.DrawFn, spec: OperatorSpec, p: ParamSpec, kind: str,
                 value: object) -> Callable[[pb.PollReply], None]:
        """Insert a call to ``spec`` whose parameter ``p`` is set to ``value`` in oneof field ``kind``."""
        call = self.call(rng_of(draw), spec)
        kept = [q for q in call.params if q.name != p.name]
        del call.params[:]
        call.params.extend(kept)
        set_value(call.params.add(name=p.name), kind, value)
        return self.insert_call(draw, call)

    def unknown_operator(self, draw: st.DrawFn) -> Mutation:
        op = draw(idents(40).filter(lambda n: n not in self.registered))
        return Mutation(f"unknown operator {op}", frozenset({S.REJECTED_UNKNOWN_OPERATOR}),
                        self.insert_call(draw, pb.OperatorCall(op=op)))

    def not_allowed(self, draw: st.DrawFn) -> Mutation:
        op = draw(st.sampled_from(self.forbidden))
        return Mutation(f"not allowed {op}", frozenset({S.REJECTED_OPERATOR_NOT_ALLOWED}),
                        self.insert_call(draw, pb.OperatorCall(op=op)))

    def out_of_range(self, draw: st.DrawFn) -> Mutation:
        numeric = [(s, p) for s in self.specs for p in s.params if p.type in (ParamType.INT, ParamType.FLOAT)]
        spec, p = draw(st.sampled_from(numeric))
        value: object
        if p.type is ParamType.INT:
            value = draw(st.integers(p.int_max + 1, 2**63 - 1) | st.integers(-(2**63), p.int_min - 1))
        else:
            value = draw(st.floats(min_value=p.float_max, exclude_min=True)
                         | st.floats(max_value=p.float_min, exclude_max=True)
                         | st.sampled_from([math.nan, math.inf, -math.inf]))
        return Mutation(f"{spec.name}.{p.name}={value!r}", frozenset({S.REJECTED_BAD_PARAMETER}),
                        self.on_param(draw, spec, p, value_kind(p), value))

    def extra_param(self, draw: st.DrawFn) -> Mutation:
        spec = draw(st.sampled_from(self.specs))
        name = draw(idents(30).filter(lambda n: spec.param(n) is None))
        kind = draw(st.sampled_from(["int_value", "float_value", "bool_value", "enum_value"]))
        value = {"int_value": 1, "float_value": 0.5, "bool_value": True, "enum_value": "keep"}[kind]
        call = self.call(rng_of(draw), spec)
        set_value(call.params.add(name=name), kind, value)
        return Mutation(f"{spec.name} extra {name}", frozenset({S.REJECTED_UNEXPECTED_FIELD}),
                        self.insert_call(draw, call))

    def wrong_type(self, draw: st.DrawFn) -> Mutation:
        spec = draw(st.sampled_from(self.with_params))
        p = draw(st.sampled_from(spec.params))
        wrong = {
            ParamType.INT: ["float_value", "bool_value", "enum_value"],
            ParamType.FLOAT: ["bool_value", "enum_value"],  # an int for a float is a valid number
            ParamType.BOOL: ["int_value", "float_value", "enum_value"],
            ParamType.ENUM: ["int_value", "float_value", "bool_value", "enum_value"],
        }[p.type]
        kind = draw(st.sampled_from(wrong))
        value: object = {
            "int_value": draw(st.integers(-(2**63), 2**63 - 1)), "float_value": draw(st.floats()),
            "bool_value": draw(st.booleans()),
            "enum_value": draw(idents().filter(lambda v: v not in p.choices)),
        }[kind]
        return Mutation(f"{spec.name}.{p.name} as {kind}", frozenset({S.REJECTED_BAD_PARAMETER}),
                        self.on_param(draw, spec, p, kind, value))

    def huge_string(self, draw: st.DrawFn) -> Mutation:
        """A long (up to ~900 KB) string where an enum choice or identifier belongs."""
        where = draw(st.sampled_from(["enum", "op", "param_name", "search_id"]))
        text = huge(draw, 65, 900_000)
        what = f"{len(text)}-char string as {where}"
        if where == "enum":
            spec, p = draw(st.sampled_from([(s, p) for s in self.specs for p in s.params
                                            if p.type is ParamType.ENUM]))
            return Mutation(what, frozenset({S.REJECTED_MALFORMED}), self.on_param(draw, spec, p, "enum_value", text))
        if where == "op":
            return Mutation(what, frozenset({S.REJECTED_MALFORMED}), self.insert_call(draw, pb.OperatorCall(op=text)))
        if where == "param_name":
            call = self.call(rng_of(draw), draw(st.sampled_from(self.specs)))
            call.params.add(name=text, bool_value=True)
            return Mutation(what, frozenset({S.REJECTED_MALFORMED}), self.insert_call(draw, call))

        def apply(reply: pb.PollReply) -> None:
            reply.task.search_id = text
        return Mutation(what, frozenset({S.REJECTED_MALFORMED}), apply)

    def bad_settings(self, draw: st.DrawFn) -> Mutation:
        u32 = 2**32 - 1
        choices: list[tuple[str, frozenset[TaskStatus], dict[str, int]]] = [
            ("evaluator", frozenset({S.REJECTED_MALFORMED}),
             {"evaluator": draw(st.sampled_from([0]) | st.integers(3, 2**31 - 1) | st.integers(-(2**31), -1))}),
            ("metric", frozenset({S.REJECTED_MALFORMED}),
             {"metric": draw(st.sampled_from([0]) | st.integers(5, 2**31 - 1))}),
            ("metric mismatch", frozenset({S.REJECTED_SETTINGS}), {"metric": draw(st.integers(1, 3))}),
            ("lora not allowed", frozenset({S.REJECTED_SETTINGS}),
             {"evaluator": pb.EVALUATOR_LORA, "metric": pb.METRIC_NEG_TOKEN_LOSS}),
            ("train_steps above policy", frozenset({S.REJECTED_SETTINGS}),
             {"train_steps": draw(st.integers(501, 100_000))}),
            ("train_steps", frozenset({S.REJECTED_MALFORMED}), {"train_steps": draw(st.integers(100_001, u32))}),
            ("sample rate", frozenset({S.REJECTED_MALFORMED}),
             {"sample_rate_permille": draw(st.sampled_from([0]) | st.integers(1001, u32))}),
            ("sample rate below policy", frozenset({S.REJECTED_SETTINGS}),
             {"sample_rate_permille": draw(st.integers(1, 9))}),
            ("seed", frozenset({S.REJECTED_MALFORMED}), {"seed": draw(st.integers(2**31, u32))}),
        ]
        what, expect, values = draw(st.sampled_from(choices))

        def apply(reply: pb.PollReply) -> None:
            for k, v in values.items():
                setattr(reply.task.settings, k, v)
        return Mutation(f"settings {what} {values}", expect, apply)

    def bad_task_fields(self, draw: st.DrawFn) -> Mutation:
        what = draw(st.sampled_from(["deadline", "attempt", "no strategy", "no settings", "search_id"]))
        bad_search = draw(not_idents())
        deadline = draw(st.sampled_from([0]) | st.integers(86_401, 2**32 - 1))

        def apply(reply: pb.PollReply) -> None:
            t = reply.task
            if what == "deadline":
                t.deadline_s = deadline
            elif what == "attempt":
                t.attempt = 0
            elif what == "no strategy":
                t.ClearField("strategy")
            elif what == "no settings":
                t.ClearField("settings")
            else:
                t.search_id = bad_search
        return Mutation(f"task {what}", frozenset({S.REJECTED_MALFORMED}), apply)

    def bad_call_structure(self, draw: st.DrawFn) -> Mutation:
        spec = draw(st.sampled_from(self.with_params))
        p = draw(st.sampled_from(spec.params))
        what = draw(st.sampled_from(["duplicate param", "unset value", "bad param name", "bad op name"]))
        call = pb.OperatorCall(op=spec.name)
        if what == "duplicate param":
            for _ in range(2):
                set_value(call.params.add(name=p.name), value_kind(p), valid_value(rng_of(draw), p))
        elif what == "unset value":
            call.params.add(name=p.name)
        elif what == "bad param name":
            call.params.add(name=draw(not_idents()), bool_value=True)
        else:
            call.op = draw(not_idents())
        return Mutation(f"{what} in {spec.name}", frozenset({S.REJECTED_MALFORMED}), self.insert_call(draw, call))

    def too_long(self, draw: st.DrawFn) -> Mutation:
        n, rng = draw(st.integers(9, 600)), rng_of(draw)
        calls = [pb.OperatorCall(op=rng.choice(self.specs).name) for _ in range(n)]

        def apply(reply: pb.PollReply) -> None:
            reply.task.strategy.calls.extend(calls)
        return Mutation(f"{n} calls", frozenset({S.REJECTED_SETTINGS}), apply)

    def unknown_field(self, draw: st.DrawFn) -> Mutation:
        level: Level = draw(st.sampled_from(list(DECLARED)))
        number = draw(st.integers(16, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 3, 5]))
        extra = field_bytes(number, wire, rng_of(draw), draw(st.integers(0, 64)))
        return Mutation(f"unknown field {number}/{wire} in {level}", frozenset({S.REJECTED_UNEXPECTED_FIELD}),
                        _noop, level, extra)

    def wire_confusion(self, draw: st.DrawFn) -> Mutation:
        """A field the contract knows, sent with the wrong wire type (a string as a number and so on)."""
        level: Level = draw(st.sampled_from(list(DECLARED)))
        number = draw(st.sampled_from(sorted(DECLARED[level])))
        wire = draw(st.sampled_from([w for w in (0, 1, 2, 5) if w != DECLARED[level][number]]))
        extra = field_bytes(number, wire, rng_of(draw))
        return Mutation(f"field {number} of {level} as wire type {wire}", frozenset({S.REJECTED_UNEXPECTED_FIELD}),
                        _noop, level, extra)

    def deep_nesting(self, draw: st.DrawFn) -> Mutation:
        level: Level = draw(st.sampled_from(list(DECLARED)))
        depth = draw(st.integers(1, 5000))
        number = draw(st.integers(16, 4000))
        if draw(st.booleans()):  # nested groups: the parser recurses
            extra = tag(number, 3) * depth + tag(number, 4) * depth
        else:  # nested length-delimited payloads: opaque bytes to the parser
            extra = b""
            for _ in range(min(depth, 1000)):
                extra = len_field(number, extra)
        return Mutation(f"{depth}-deep nesting in {level}", frozenset({S.REJECTED_UNEXPECTED_FIELD}),
                        _noop, level, extra)

    def oversized(self, draw: st.DrawFn) -> Mutation:
        """An unknown length-delimited field of 100 KB .. 2 MB: over the client's 1 MiB limit, or not."""
        level: Level = draw(st.sampled_from(list(DECLARED)))
        size = draw(st.integers(100_000, 2_000_000))
        byte = draw(st.integers(0, 255))
        return Mutation(f"{size}-byte field in {level}", frozenset({S.REJECTED_UNEXPECTED_FIELD}), _noop, level,
                        len_field(draw(st.integers(16, 10_000)), bytes([byte]) * size))

    def invalid_utf8(self, draw: st.DrawFn) -> Mutation:
        level: Level = draw(st.sampled_from(["task", "call", "param"]))
        junk = draw(st.binary(min_size=1, max_size=16).filter(lambda b: not _utf8(b)))
        return Mutation(f"invalid UTF-8 string in {level}", frozenset({S.REJECTED_MALFORMED}), _noop, level,
                        len_field(1, junk))

    MUTATIONS: ClassVar[list[str]] = [
        "unknown_operator", "not_allowed", "out_of_range", "extra_param", "wrong_type", "huge_string",
        "bad_settings", "bad_task_fields", "bad_call_structure", "too_long", "unknown_field", "wire_confusion",
        "deep_nesting", "oversized", "invalid_utf8",
    ]
    STRUCTURED: ClassVar[list[str]] = MUTATIONS[:10]

    def mutation(self, draw: st.DrawFn, name: str) -> Mutation:
        return cast(Mutation, getattr(self, name)(draw))

    # -- whole messages ---------------------------------------------------------------
    def cases(self) -> st.SearchStrategy[Case]:
        @st.composite
        def case(draw: st.DrawFn) -> Case:
            kind = draw(st.sampled_from([*self.MUTATIONS, "combo", "bad_task_id", "garbage", "truncated",
                                         "envelope"]))
            base = self.base(rng_of(draw), min_calls=1)
            if kind in self.MUTATIONS:
                return Case(kind, (self.mutation(draw, kind),), base)
            if kind == "combo":
                names = draw(st.lists(st.sampled_from(self.STRUCTURED), min_size=2, max_size=3))
                return Case(kind, tuple(self.mutation(draw, n) for n in names), base)
            if kind == "bad_task_id":
                task_id = draw(not_idents() | st.builds(lambda: "t" * 200_000))

                def rename(reply: pb.PollReply) -> None:
                    reply.task.task_id = task_id
                return Case(kind, (Mutation(f"task id {task_id[:20]!r}", REJECTIONS, rename),), base)
            if kind == "garbage":
                return Case(kind, (), base, raw=draw(st.binary(min_size=1, max_size=4096)))
            if kind == "truncated":
                good = base("fz-truncated").SerializeToString()
                return Case(kind, (), base, raw=good[:draw(st.integers(0, len(good) - 1))])
            # envelope: has_task and task disagree
            which = draw(st.sampled_from(["task without has_task", "has_task without task"]))

            def envelope(reply: pb.PollReply) -> None:
                if which == "task without has_task":
                    reply.has_task = False
                else:
                    reply.ClearField("task")
            return Case(kind, (Mutation(which, REJECTIONS, envelope),), base)
        return case()


def explicit_cases(gen: Gen) -> list[Case]:
    """Defects that once stopped or fooled the agent, always tried first (hypothesis samples unevenly)."""
    base = gen.base(random.Random(0), min_calls=1)

    def rename(reply: pb.PollReply) -> None:
        reply.task.task_id = "ok\n"  # '$' in a plain re.match lets a trailing newline through
    return [
        Case("bad_task_id", (Mutation("task id 'ok\\n'", REJECTIONS, rename),), base),
        Case("unknown_field", (Mutation("unknown field around a valid task", frozenset({S.REJECTED_UNEXPECTED_FIELD}),
                                        _noop, "envelope", field_bytes(99, 0, random.Random(1))),), base),
        Case("garbage", (), base, raw=b"\x00"),
        Case("deep_nesting", (Mutation("5000-deep groups in task", frozenset({S.REJECTED_UNEXPECTED_FIELD}), _noop,
                                       "task", tag(99, 3) * 5000 + tag(99, 4) * 5000),), base),
        Case("oversized", (Mutation("2 MB field in call", frozenset({S.REJECTED_UNEXPECTED_FIELD}), _noop, "call",
                                    len_field(99, bytes(2_000_000))),), base),
    ]


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- the test

GOOD = pb.Task(search_id="s-good", strategy=pb.Strategy(calls=[
    pb.OperatorCall(op="fuzz_spy", params=[pb.ParamValue(name="n", int_value=3)]),
    pb.OperatorCall(op="remove_markup")]),
    settings=pb.EvalSettings(evaluator=pb.EVALUATOR_QUALITY_PROXY, metric=pb.METRIC_QUALITY_PROXY, seed=1,
                             sample_rate_permille=1000), deadline_s=600, attempt=1)


def run_good_task(s: Site, task_id: str) -> None:
    task = pb.Task()
    task.CopyFrom(GOOD)
    task.task_id = task_id
    before, applied = s.agent.runner.executed, FuzzSpy.applied
    s.coord.deliver(pb.PollReply(has_task=True, task=task).SerializeToString())
    report = pb.ResultReport.FromString(s.coord.reports[-1])
    assert report.task_id == task_id and report.status == pb.TASK_STATUS_OK, report
    assert s.agent.runner.executed == before + 1 and FuzzSpy.applied == applied + 1


def check_one(s: Site, tail: AuditTail, case: Case, task_id: str) -> None:
    data = case.make(task_id)
    executed, built, applied, n_reports = s.agent.runner.executed, FuzzSpy.built, FuzzSpy.applied, len(s.coord.reports)
    try:
        s.coord.deliver(data, timeout_s=10, alive=s.thread.is_alive)
    except RuntimeError:
        pass
    assert not s.errors and s.thread.is_alive(), f"the site agent stopped: {s.errors!r}"

    try:
        parsed: pb.PollReply | None = pb.PollReply.FromString(data) if len(data) <= MAX_REPLY else None
    except DecodeError:
        parsed = None
    tid = parsed.task.task_id if parsed is not None and parsed.has_task else None
    answerable = tid is not None and _IDENT.fullmatch(tid) is not None

    # nothing executed, nothing reserved
    assert s.agent.runner.executed == executed and (FuzzSpy.built, FuzzSpy.applied) == (built, applied)
    if answerable:
        assert tid is not None and s.agent.ledger.state(tid) is None

    # a typed rejection, once, or no answer at all
    reports = [pb.ResultReport.FromString(r) for r in s.coord.reports[n_reports:]]
    if answerable:
        assert len(reports) == 1 and reports[0].task_id == tid, reports
        status = TaskStatus[pb.TaskStatus.Name(reports[0].status).removeprefix("TASK_STATUS_")]
        assert status in case.expect, (status, case)
        assert reports[0].score == 0.0 and reports[0].operators_run == 0 and reports[0].epsilon_spent == 0.0
    else:
        assert reports == []

    # exactly one audit entry for what came in (and one for the rejection that went out)
    entries = tail.new()
    if parsed is None:  # never parsed: the poll it answered is marked failed instead
        failed = [e for e in entries if e.kind == "undelivered"]
        assert [e.status for e in failed] in (["INTERNAL"], ["RESOURCE_EXHAUSTED"]), failed
    else:
        canonical = encode(parsed)
        if canonical:  # an empty reply is indistinguishable from the idle polls around it
            got = [e for e in entries if e.kind == "message" and e.direction == "in" and e.payload == canonical]
            assert len(got) == 1 and got[0].msg_type == "autodp.v1.PollReply"
    sent = [e for e in entries if e.kind == "message" and e.direction == "out"
            and e.msg_type == "autodp.v1.ResultReport"]
    assert len(sent) == (1 if answerable else 0)


@pytest.mark.slow  # ~30 s on a loaded 2-core box: hypothesis itself is half of it
def test_a_thousand_bad_task_messages_are_rejected_and_run_nothing(site: Site) -> None:
    run_good_task(site, "fz-good-before")
    tail = AuditTail(site.audit_path)
    tail.new()
    gen = Gen(site.catalog)
    counter = iter(range(10**9))
    kinds: dict[str, int] = {}

    def check(case: Case) -> None:
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        check_one(site, tail, case, f"fz-{next(counter)}")

    test = given(case=gen.cases())(check)
    for case in explicit_cases(gen):
        test = example(case=case)(test)
    settings(max_examples=1000, derandomize=True, deadline=None, database=None, print_blob=False,
             suppress_health_check=list(HealthCheck))(test)()
    assert sum(kinds.values()) >= 1000 and len(kinds) == 20, kinds
    run_good_task(site, "fz-good-after")
    site.agent.stop.set()
    site.thread.join(10)
    report = verify(site.audit_path)  # raises on any broken entry
    assert report.messages > 2000
