"""The site's gRPC client: dials out with its certificate, audits every message it sends and receives.

A message is written to the audit log before it is sent; when the call then fails, an 'undelivered'
marker follows it, so a cross-check knows the coordinator never saw it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from protos import federation_pb2 as pb
from protos import federation_pb2_grpc as pb_grpc
from protos.audit import AuditLog
from protos.serde import from_pb, to_pb
from protos.tls import channel_credentials
from protos.views import (
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    Poll,
    ResultAck,
    ResultReport,
)
from site_agent.config import SiteConfig
from site_agent.errors import SiteError

__all__ = ["Backoff", "CoordinatorClient", "CoordinatorRefused", "CoordinatorUnavailable", "tls_problem"]

log = logging.getLogger("autodp.site")

# The coordinator is away or slow: retry later. INTERNAL is also what gRPC raises here when a reply does not
# parse (corrupted or hostile bytes): it is dropped, never acted on, and the site keeps serving. Anything
# else from the coordinator is a refusal we must not retry.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL}
# An unknown field (number 2**29 - 1, varint 0) put into a task whose envelope broke the contract, so that
# the runner answers it REJECTED_UNEXPECTED_FIELD instead of running it.
_OUTSIDE_CONTRACT = bytes.fromhex("f8ffffff0f00")

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_send_message_length", 1 << 20),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
]


class CoordinatorUnavailable(SiteError):
    """The coordinator could not be reached or did not answer in time (retry with backoff)."""


class CoordinatorRefused(SiteError):
    """The coordinator refused us (unknown or revoked site, a message it calls invalid): do not retry."""


class Backoff:
    """Exponential backoff with full jitter: sleep uniformly in [0, min(max, initial * 2^n)]."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s, self.max_s, self.attempt = initial_s, max_s, 0
        self.cap_s = 0.0  # the bound the last delay was drawn under (logged, so the backoff is visible)
        self._rng = rng or random.Random()

    def next(self) -> float:
        cap = self.cap_s = min(self.max_s, self.initial_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(0.0, cap)

    def reset(self) -> None:
        self.attempt = 0


def tls_problem(details: str, server_name: str) -> str | None:
    """A clear line for a failed TLS handshake with the coordinator, read from gRPC's status details (the
    handshake itself runs in gRPC core, out of Python's sight); None when the failure is not about TLS."""
    if "Hostname Verification Check failed" in details or "No match found for server name" in details:
        return f"TLS: the coordinator's certificate does not match '{server_name}'; not talking to it"
    marker = "CERTIFICATE_VERIFY_FAILED:"
    if marker in details:
        why = details.split(marker, 1)[1].split(":", 1)[0].strip()[:80]
        return f"TLS: the coordinator's certificate was refused ({why}); not talking to it"
    return None


class CoordinatorClient:
    def __init__(self, cfg: SiteConfig, audit: AuditLog) -> None:
        self.cfg, self.audit = cfg, audit
        creds = channel_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if cfg.tls_server_name:
            options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
        self.server_name = cfg.tls_server_name or cfg.coordinator.rsplit(":", 1)[0].strip("[]")
        self.channel = grpc.secure_channel(cfg.coordinator, creds, options=options)
        self.stub = pb_grpc.FederationStub(self.channel)  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Message], view: Any, timeout_s: float, parse: bool = True) -> Any:
        request = to_pb(view)
        digest = self.audit.record("out", self.cfg.coordinator_party, request)
        try:
            reply = method(request, timeout=timeout_s, wait_for_ready=False)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
            self.audit.record_undelivered(digest, code.name)
            detail = (e.details() or "") if isinstance(e, grpc.Call) else ""
            if code in TRANSIENT:
                tls = tls_problem(detail, self.server_name)
                if tls is not None:
                    log.error("%s", tls)  # retried all the same: a man in the middle must not make us exit
                raise CoordinatorUnavailable(tls or f"coordinator unavailable ({code.name})") from None
            raise CoordinatorRefused(f"coordinator refused {request.DESCRIPTOR.name}: {code.name}: {detail}") from None
        self.audit.record("in", self.cfg.coordinator_party, reply)
        return from_pb(reply) if parse else reply

    def hello(self, msg: Hello) -> HelloReply:
        reply: HelloReply = self._call(self.stub.Hello, msg, self.cfg.rpc_timeout_s)
        return reply

    def heartbeat(self, msg: Heartbeat) -> HeartbeatReply:
        reply: HeartbeatReply = self._call(self.stub.Heartbeat, msg, self.cfg.rpc_timeout_s)
        return reply

    def poll(self, wait_ms: int) -> pb.Task | None:
        """Long poll. The task comes back unparsed: the agent validates it, because a malformed task must
        still be answered with a typed rejection rather than dropped."""
        msg = Poll(site_id=self.cfg.site_id, wait_ms=wait_ms)
        reply: pb.PollReply = self._call(self.stub.PollTask, msg, self.cfg.rpc_timeout_s + wait_ms / 1000.0,
                                         parse=False)
        if not reply.has_task:
            return None
        if len(UnknownFieldSet(reply)):  # a field outside the contract around the task: reject, never run
            log.warning("poll reply carries a field outside the v1 contract; its task will be rejected")
            task = pb.Task()
            task.CopyFrom(reply.task)
            task.MergeFromString(_OUTSIDE_CONTRACT)
            return task
        return reply.task

    def report(self, msg: ResultReport) -> ResultAck:
        reply: ResultAck = self._call(self.stub.ReportResult, msg, self.cfg.rpc_timeout_s)
        return reply

    def close(self) -> None:
        self.channel.close()
