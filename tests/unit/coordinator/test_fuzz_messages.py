"""Generated bad results and hellos, through the coordinator's own servicer path (no network).

Each message goes in as bytes and takes the path gRPC gives it: the server's size limit, the method's
registered request deserializer, then the real ``FederationServicer`` (audit, identity, parse, site-id check)
over the real ``CoordinatorService``, SQLite store and audit log. Only the transport is left out: the caller
is hospital-a, as its client certificate would say. For each message the test checks the gRPC status or
the acknowledgement, that nothing was stored, that the audit log holds exactly the entries it should,
and afterwards that good messages are still served. tests/e2e/test_fuzz_wire.py sends a few over real mTLS.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.server import MAX_MESSAGE_BYTES, FederationServicer
from coordinator.service import CoordinatorService, SiteRegistry
from coordinator.sqlite_store import SQLiteStore
from protos import federation_pb2 as pb
from protos import federation_pb2_grpc as pb_grpc
from protos.audit import AuditLog
from protos.audit_format import Entry, parse_entry
from protos.serde import encode, to_pb
from protos.views import (
    MAX_CATALOG_OPERATORS,
    EvalSettings,
    Hello,
    OperatorSpec,
    ParamSpec,
    ParamType,
    Strategy,
    Task,
    Team,
)

SITE = "hospital-a"
OTHER = "hospital-b"
SPECS = (
    OperatorSpec(name="remove_markup", team=Team.CLEANING, version="1",
                 params=(ParamSpec(name="keep_line_breaks", type=ParamType.BOOL, bool_default=True),)),
    OperatorSpec(name="length_filter", team=Team.CLEANING, version="1",
                 params=(ParamSpec(name="min_answer_chars", type=ParamType.INT, int_min=0, int_max=100,
                                   int_default=2),)),
)
GOOD_HELLO = Hello(site_id=SITE, software_version="0.1.0", catalog=SPECS)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """What the servicer reads of a gRPC call: the verified client certificate's CN, a deadline, abort."""

    def __init__(self, cn: str) -> None:
        self.cn = cn

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self.cn.encode()]}

    def time_remaining(self) -> float:
        return 5.0

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class _Capture:
    """Stands in for grpc.Server when the generated code registers the servicer: keeps the handlers."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


@dataclass
class Outcome:
    code: grpc.StatusCode
    reply: Message | None = None
    parsed: Message | None = None  # the request as the servicer got it, when it got that far


@dataclass
class Coordinator:
    store: SQLiteStore
    audit: AuditLog
    handlers: dict[str, Any]
    offset: int = 0
    seen: list[str] = field(default_factory=list)

    def call(self, method: str, data: bytes) -> Outcome:
        """One unary call as gRPC's server runs it: size limit, deserializer, handler, serializer."""
        h = self.handlers[method]
        if len(data) > MAX_MESSAGE_BYTES:
            return Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED)
        try:
            request = h.request_deserializer(data)
        except DecodeError:
            return Outcome(grpc.StatusCode.INTERNAL)  # gRPC: "Exception deserializing request!"
        try:
            reply = h.unary_unary(request, Context(SITE))
        except Aborted as e:
            return Outcome(e.code, parsed=request)
        h.response_serializer(reply)
        return Outcome(grpc.StatusCode.OK, reply, request)

    def new_entries(self) -> list[Entry]:
        with self.audit.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return [parse_entry(line) for line in chunk[:end].splitlines()]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    shm = Path("/dev/shm")  # audit entries are fsynced: on tmpfs that costs nothing
    root = Path(tempfile.mkdtemp(prefix="autodp-cfz-", dir=shm if shm.is_dir() else tmp_path))
    try:
        audit = AuditLog.open(root / "audit.log", Ed25519PrivateKey.generate(), "coordinator", "coordinator")
        store = SQLiteStore(root / "store.db")
        service = CoordinatorService(store, lease_s=60, poll_wait_ms=10, heartbeat_interval_ms=5000)
        capture = _Capture()
        pb_grpc.add_FederationServicer_to_server(  # type: ignore[no-untyped-call]
            FederationServicer(service, SiteRegistry([SITE, OTHER]), audit), capture)
        coord = Coordinator(store, audit, capture.handlers)
        assert coord.call("Hello", encode(to_pb(GOOD_HELLO))).code is grpc.StatusCode.OK
        for task_id, site in (("t-mine", SITE), ("t-theirs", OTHER)):
            store.enqueue(Task(task_id=task_id, search_id="s1", strategy=Strategy(), settings=EvalSettings()),
                          site, 1, 0.0)
        assert store.lease_next(SITE, 1.0, 60) is not None
        coord.new_entries()
        try:
            yield coord
        finally:
            store.close()
            audit.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- building messages

def tag(number: int, wire: int) -> bytes:
    return _VarintBytes((number << 3) | wire)


def len_field(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + _VarintBytes(len(payload)) + payload


def bad_ident() -> st.SearchStrategy[str]:
    return st.sampled_from(["", " ", "a b", "ok\n", "x" * 65, "é", "-x", "t" * 100_000])


OK_REPORT = pb.ResultReport(task_id="t-mine", site_id=SITE, status=pb.TASK_STATUS_OK, score=0.25,
                            epsilon_spent=0.5, epsilon_remaining=9.5, sampled_permille=1000, targets_permille=1000)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class Case:
    method: str
    what: str
    data: bytes = field(repr=False)
    expect: frozenset[grpc.StatusCode]  # OK means: answered, but not accepted
    reaches_servicer: bool = True


def report_case(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from([
        "garbage", "oversized", "unknown field", "non-finite", "negative epsilon", "status", "permille",
        "bad id", "other site id", "unknown task", "other site's task", "wire confusion"]))
    msg = pb.ResultReport()
    msg.CopyFrom(OK_REPORT)
    if kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=2048))
        return Case("ReportResult", kind, data, frozenset({grpc.StatusCode.INTERNAL, INVALID, grpc.StatusCode.OK,
                                                            grpc.StatusCode.PERMISSION_DENIED}))
    if kind == "oversized":
        n = draw(st.integers(MAX_MESSAGE_BYTES, 2 * MAX_MESSAGE_BYTES))
        data = msg.SerializeToString() + len_field(draw(st.integers(20, 9999)), b"\x00" * n)
        return Case("ReportResult", kind, data, frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}), False)
    if kind == "unknown field":
        extra = len_field(draw(st.integers(14, 2**29 - 1)), draw(st.binary(max_size=64)))
        return Case("ReportResult", kind, msg.SerializeToString() + extra, frozenset({INVALID}))
    if kind == "wire confusion":  # a known field with the wrong wire type: an unknown field to the parser
        number = draw(st.integers(1, 13))
        extra = tag(number, 5) + b"\x00" * 4
        return Case("ReportResult", f"field {number} as fixed32", msg.SerializeToString() + extra, frozenset({INVALID}))
    expect = frozenset({INVALID})
    if kind == "non-finite":
        name = draw(st.sampled_from(["score", "epsilon_spent", "epsilon_remaining"]))
        setattr(msg, name, draw(st.sampled_from([math.nan, math.inf, -math.inf])))
    elif kind == "negative epsilon":
        name = draw(st.sampled_from(["epsilon_spent", "epsilon_remaining"]))
        setattr(msg, name, -draw(st.floats(min_value=5e-324, max_value=1e308)))
    elif kind == "status":
        msg.status = draw(st.sampled_from([0]) | st.integers(13, 2**31 - 1) | st.integers(-(2**31), -1))
    elif kind == "permille":
        name = draw(st.sampled_from(["sampled_permille", "targets_permille"]))
        setattr(msg, name, draw(st.integers(1001, 2**32 - 1)))
    elif kind == "bad id":
        setattr(msg, draw(st.sampled_from(["task_id", "site_id"])), draw(bad_ident()))
    elif kind == "other site id":
        msg.site_id = draw(st.sampled_from([OTHER, "hospital-x", "coordinator"]))
        expect = frozenset({grpc.StatusCode.PERMISSION_DENIED})
    elif kind == "unknown task":
        msg.task_id = draw(st.from_regex(r"t-[a-z0-9]{1,20}", fullmatch=True).filter(lambda t: t != "t-mine"))
        expect = frozenset({grpc.StatusCode.OK})
    else:  # the other site's task, reported by this one
        msg.task_id = "t-theirs"
        expect = frozenset({grpc.StatusCode.OK})
    return Case("ReportResult", kind, msg.SerializeToString(), expect)


def spec_pb(name: str) -> pb.OperatorSpec:
    return pb.OperatorSpec(name=name, team=pb.TEAM_CLEANING, version="1", params=[
        pb.ParamSpec(name="k", type=pb.PARAM_TYPE_INT, int_min=0, int_max=10, int_default=1)])


def hello_case(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from([
        "garbage", "oversized", "protocol version", "size bucket", "bad id", "other site id", "bad spec",
        "huge catalog", "duplicate operator", "unknown field in spec"]))
    msg = to_pb(GOOD_HELLO)
    assert isinstance(msg, pb.HelloRequest)
    expect = frozenset({INVALID})
    if kind == "garbage":
        data = draw(st.binary(min_size=1, max_size=2048))
        return Case("Hello", kind, data, frozenset({grpc.StatusCode.INTERNAL, INVALID, grpc.StatusCode.OK,
                                                     grpc.StatusCode.PERMISSION_DENIED}))
    if kind == "oversized":
        n = draw(st.integers(MAX_MESSAGE_BYTES, 2 * MAX_MESSAGE_BYTES))
        spec = msg.catalog[0]
        big = pb.ParamSpec(name="x", choices=["c" * 1000] * (n // 1000))
        spec.MergeFromString(len_field(4, big.SerializeToString()))
        return Case("Hello", kind, msg.SerializeToString(), frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}), False)
    if kind == "protocol version":
        msg.protocol_version = draw(st.sampled_from([0]) | st.integers(2, 2**32 - 1))
        expect = frozenset({grpc.StatusCode.OK})
    elif kind == "size bucket":
        msg.size_bucket = draw(st.sampled_from([0]) | st.integers(5, 2**31 - 1))
    elif kind == "bad id":
        setattr(msg, draw(st.sampled_from(["site_id", "software_version"])), draw(bad_ident()))
    elif kind == "other site id":
        msg.site_id = OTHER
        expect = frozenset({grpc.StatusCode.PERMISSION_DENIED})
    elif kind == "bad spec":
        s = msg.catalog.add()
        s.CopyFrom(spec_pb("new_op"))
        p = s.params[0]
        defect = draw(st.sampled_from(["team", "type", "name", "default", "float bounds", "enum", "dup param",
                                       "many choices", "many params"]))
        if defect == "team":
            s.team = draw(st.sampled_from([0]) | st.integers(5, 2**31 - 1))
        elif defect == "type":
            p.type = draw(st.sampled_from([0]) | st.integers(5, 2**31 - 1))
        elif defect == "name":
            s.name = draw(bad_ident())
        elif defect == "default":
            p.int_default = draw(st.integers(11, 2**63 - 1) | st.integers(-(2**63), -1))
        elif defect == "float bounds":
            p.type, p.float_min, p.float_max = pb.PARAM_TYPE_FLOAT, 0.0, draw(st.sampled_from([math.inf, math.nan]))
        elif defect == "enum":
            p.type = pb.PARAM_TYPE_ENUM
            p.choices[:] = ["a", "b"]
            p.enum_default = draw(st.sampled_from(["", "c", "a b"]))
        elif defect == "dup param":
            s.params.add().CopyFrom(p)
        elif defect == "many choices":
            p.type, p.enum_default = pb.PARAM_TYPE_ENUM, "c0"
            p.choices[:] = [f"c{i}" for i in range(draw(st.integers(65, 2000)))]
        else:
            del s.params[:]
            s.params.extend(pb.ParamSpec(name=f"p{i}", type=pb.PARAM_TYPE_BOOL)
                            for i in range(draw(st.integers(65, 1000))))
        kind = f"bad spec: {defect}"
    elif kind == "huge catalog":
        n = draw(st.integers(MAX_CATALOG_OPERATORS + 1, 2_000))
        del msg.catalog[:]
        msg.catalog.extend(spec_pb(f"op{i}") for i in range(n))
        kind = f"{n} operators"
    elif kind == "duplicate operator":
        msg.catalog.add().CopyFrom(msg.catalog[draw(st.integers(0, len(msg.catalog) - 1))])
    else:
        s = msg.catalog[draw(st.integers(0, len(msg.catalog) - 1))]
        target = s.params[0] if draw(st.booleans()) and s.params else s
        target.MergeFromString(len_field(draw(st.integers(20, 9999)), b"x"))
    return Case("Hello", kind, msg.SerializeToString(), expect)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    return report_case(draw) if draw(st.booleans()) else hello_case(draw)


# ---------------------------------------------------------------- the test

def site_snapshot(c: Coordinator) -> tuple[Any, ...]:
    site = c.store.get_site(SITE)
    assert site is not None
    return site.software_version, site.catalog, site.size_bucket


def test_generated_bad_results_and_hellos_are_refused_and_store_nothing(coordinator: Coordinator) -> None:
    c = coordinator
    before = site_snapshot(c)
    seen: dict[str, int] = {}

    @settings(max_examples=1000, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def check(case: Case) -> None:
        seen[case.what.split(":")[0]] = seen.get(case.what.split(":")[0], 0) + 1
        out = c.call(case.method, case.data)
        assert out.code in case.expect, (out.code, case)
        if out.code is grpc.StatusCode.OK:  # answered, and refused in the answer
            assert out.reply is not None
            assert not getattr(out.reply, "accepted", True), out.reply
        # nothing stored: no result for any task, the site's record as it was
        assert c.store.get_result("t-mine") is None and c.store.get_result("t-theirs") is None
        assert site_snapshot(c) == before
        # audited: the message as received, once, and the reply if one was sent; nothing when gRPC itself
        # refused the bytes (they never reached our code: see SECURITY.md)
        entries = c.new_entries()
        if out.parsed is None:
            assert entries == []
            return
        ins = [e for e in entries if e.direction == "in"]
        outs = [e for e in entries if e.direction == "out"]
        assert len(ins) == 1 and ins[0].payload == encode(out.parsed) and ins[0].peer == SITE
        assert len(outs) == (1 if out.code is grpc.StatusCode.OK else 0)

    check()
    assert len(seen) >= 20, seen

    # still serving: the good hello and the good result are accepted, and stored
    assert c.call("Hello", encode(to_pb(GOOD_HELLO))).code is grpc.StatusCode.OK
    out = c.call("ReportResult", OK_REPORT.SerializeToString())
    assert out.code is grpc.StatusCode.OK and isinstance(out.reply, pb.ResultAck) and out.reply.accepted
    stored = c.store.get_result("t-mine")
    assert stored is not None and stored.score == 0.25


def test_a_flood_of_random_bytes_on_every_method_never_breaks_the_servicer(coordinator: Coordinator) -> None:
    """Random bytes on all four methods: only the statuses a hostile peer should get, never another error."""
    c = coordinator
    rng = random.Random(7)
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
               grpc.StatusCode.PERMISSION_DENIED}
    for i in range(400):
        method = ("Hello", "Heartbeat", "PollTask", "ReportResult")[i % 4]
        data = rng.randbytes(rng.randint(0, 256))
        out = c.call(method, data)
        assert out.code in allowed, (method, out.code)
    assert c.store.get_result("t-mine") is None
    assert c.call("Heartbeat", pb.HeartbeatRequest(site_id=SITE).SerializeToString()).code is grpc.StatusCode.OK
