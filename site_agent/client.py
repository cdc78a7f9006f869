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

__all__ = ["Backoff", "CoordinatorClient", "CoordinatorRefused", "CoordinatorUnavailable"]

log = logging.getLogger("autodp.site")

# The coordinator is away or slow: retry later. Anything else from it is a refusal we must not retry.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}

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
        self._rng = rng or random.Random()

    def next(self) -> float:
        cap = min(self.max_s, self.initial_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(0.0, cap)

    def reset(self) -> None:
        self.attempt = 0


class CoordinatorClient:
    def __init__(self, cfg: SiteConfig, audit: AuditLog) -> None:
        self.cfg, self.audit = cfg, audit
        creds = channel_credentials(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if cfg.tls_server_name:
            options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
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
            if code in TRANSIENT:
                raise CoordinatorUnavailable(f"coordinator unavailable ({code.name})") from None
            detail = e.details() if isinstance(e, grpc.Call) else ""
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
        return reply.task if reply.has_task else None

    def report(self, msg: ResultReport) -> ResultAck:
        reply: ResultAck = self._call(self.stub.ReportResult, msg, self.cfg.rpc_timeout_s)
        return reply

    def close(self) -> None:
        self.channel.close()
