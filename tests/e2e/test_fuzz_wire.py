"""Malformed results and hellos sent over real mutual TLS to a real coordinator (127.0.0.1).

tests/unit/coordinator/test_fuzz_messages.py sends 1,000 generated ones through the servicer in-process;
this sends one of each kind over the wire, as a registered site's client would, to show what gRPC itself
answers (bytes that do not parse, a message over the size limit) and that the server stays up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import grpc
import pytest

from coordinator.server import MAX_MESSAGE_BYTES
from protos import federation_pb2 as pb
from protos.audit_format import read_log
from protos.serde import to_pb
from protos.tls import channel_credentials
from protos.views import MAX_CATALOG_OPERATORS, EvalSettings, Strategy, Task
from tests.e2e.conftest import Federation

REPORT = pb.ResultReport(task_id="t-a", site_id="hospital-a", status=pb.TASK_STATUS_OK, score=0.1,
                         sampled_permille=1000, targets_permille=1000)
HELLO = pb.HelloRequest(site_id="hospital-a", software_version="0.1.0", protocol_version=1,
                        size_bucket=pb.SIZE_BUCKET_UNDER_1K)


def report(**changes: object) -> bytes:
    msg = pb.ResultReport()
    msg.CopyFrom(REPORT)
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg.SerializeToString()


def hello_with(n_ops: int, dup: bool = False) -> bytes:
    msg = pb.HelloRequest()
    msg.CopyFrom(HELLO)
    for i in range(n_ops):
        msg.catalog.add(name="op" if dup else f"op{i}", team=pb.TEAM_CLEANING, version="1")
    return msg.SerializeToString()


# (method, bytes, expected status, or for OK: the reply must refuse; reaches our servicer)
CASES: list[tuple[str, str, bytes, grpc.StatusCode, bool]] = [
    ("garbage result", "ReportResult", b"\x00\xff\x13garbage", grpc.StatusCode.INTERNAL, False),
    ("oversized result", "ReportResult", report() + b"\xa2\x06" + b"\x80\x80\x48" + bytes(0x120000),
     grpc.StatusCode.RESOURCE_EXHAUSTED, False),
    ("NaN score", "ReportResult", report(score=math.nan), grpc.StatusCode.INVALID_ARGUMENT, True),
    ("negative epsilon", "ReportResult", report(epsilon_spent=-1.0), grpc.StatusCode.INVALID_ARGUMENT, True),
    ("unset status", "ReportResult", report(status=0), grpc.StatusCode.INVALID_ARGUMENT, True),
    ("unknown field", "ReportResult", report() + b"\xa0\x06\x01", grpc.StatusCode.INVALID_ARGUMENT, True),
    ("another site's id", "ReportResult", report(site_id="hospital-b"), grpc.StatusCode.PERMISSION_DENIED, True),
    ("unknown task", "ReportResult", report(task_id="t-nope"), grpc.StatusCode.OK, True),
    ("another site's task", "ReportResult", report(task_id="t-b"), grpc.StatusCode.OK, True),
    ("garbage hello", "Hello", b"\x0a\xff\xff", grpc.StatusCode.INTERNAL, False),
    ("huge catalog", "Hello", hello_with(MAX_CATALOG_OPERATORS + 1), grpc.StatusCode.INVALID_ARGUMENT, True),
    ("duplicate operators", "Hello", hello_with(2, dup=True), grpc.StatusCode.INVALID_ARGUMENT, True),
    ("old protocol", "Hello", HELLO.SerializeToString().replace(b"\x18\x01", b"\x18\x07"), grpc.StatusCode.OK,
     True),
]


RawCall = Callable[[str, bytes], tuple[grpc.StatusCode, bytes]]


def raw_caller(fed: Federation, site: str) -> tuple[grpc.Channel, RawCall]:
    c = fed.certs
    creds = channel_credentials(c / "ca.crt", c / f"site-{site}.crt", c / f"site-{site}.key")
    channel = grpc.secure_channel(fed.address, creds, options=[
        ("grpc.ssl_target_name_override", "localhost"), ("grpc.max_send_message_length", 4 << 20)])

    def call(method: str, data: bytes) -> tuple[grpc.StatusCode, bytes]:
        fn = channel.unary_unary(f"/autodp.v1.Federation/{method}", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
        try:
            return grpc.StatusCode.OK, fn(data, timeout=10)
        except grpc.RpcError as e:
            assert isinstance(e, grpc.Call)
            return e.code(), b""
    return channel, call


def test_malformed_messages_over_the_wire_are_refused_and_the_server_stays_up(federation: Federation) -> None:
    store = federation.server.store
    now = time.time()
    for task_id, site in (("t-a", "hospital-a"), ("t-b", "hospital-b")):
        store.enqueue(Task(task_id=task_id, search_id="s", strategy=Strategy(), settings=EvalSettings()), site, 1, now)
    assert store.lease_next("hospital-a", now, 60) is not None
    channel, call = raw_caller(federation, "hospital-a")
    audit_path = federation.server.audit.path
    try:
        assert len(CASES[1][2]) > MAX_MESSAGE_BYTES
        for what, method, data, expect, reaches in CASES:
            before = read_log(audit_path).entries
            code, reply = call(method, data)
            assert code is expect, (what, code)
            if code is grpc.StatusCode.OK:  # answered, and refused in the answer
                assert not (pb.ResultAck if method == "ReportResult" else pb.HelloReply).FromString(reply).accepted
            ins = [e for e in read_log(audit_path).entries[len(before):] if e.direction == "in"]
            assert len(ins) == (1 if reaches else 0), what
        assert store.get_result("t-a") is None and store.get_result("t-b") is None
        assert store.get_site("hospital-a") is None  # no hello was ever accepted

        # still up: the good hello and result go through
        code, reply = call("Hello", HELLO.SerializeToString())
        assert code is grpc.StatusCode.OK and pb.HelloReply.FromString(reply).accepted
        code, reply = call("ReportResult", report())
        assert code is grpc.StatusCode.OK and pb.ResultAck.FromString(reply).accepted
        stored = store.get_result("t-a")
        assert stored is not None and stored.score == pytest.approx(0.1)
    finally:
        channel.close()
    assert to_pb(stored).SerializeToString(deterministic=True) == report()
