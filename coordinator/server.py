"""The coordinator's gRPC server: mutual TLS, a registered-sites allowlist, thin servicers, an audit entry
for every message in and out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from coordinator.config import CoordinatorConfig
from coordinator.errors import UnknownSite
from coordinator.service import CoordinatorService, SiteRegistry
from coordinator.sqlite_store import SQLiteStore
from protos import federation_pb2 as pb
from protos import federation_pb2_grpc as pb_grpc
from protos.audit import AuditLog, load_signing_key
from protos.errors import MalformedMessage
from protos.serde import from_pb, to_pb
from protos.tls import peer_common_name, server_credentials

__all__ = ["CoordinatorServer", "FederationServicer", "start_server"]

log = logging.getLogger("autodp.coordinator")

MAX_MESSAGE_BYTES = 1 << 20  # tasks and results are a few hundred bytes; refuse anything big

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(self, service: CoordinatorService, registry: SiteRegistry, audit: AuditLog) -> None:
        self.service = service
        self.registry = registry
        self.audit = audit

    def _call(self, request: Message, context: grpc.ServicerContext,
              fn: Callable[[str, Any], Any]) -> Message:
        cn = peer_common_name(context)
        self.audit.record("in", cn or "unknown", request)
        try:
            site_id = self.registry.check(cn)
        except UnknownSite as e:
            log.warning("refused %s: %s", request.DESCRIPTOR.name, e)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        try:
            view = from_pb(request)
        except MalformedMessage as e:
            log.warning("malformed %s from %s: %s", request.DESCRIPTOR.name, site_id, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if getattr(view, "site_id", site_id) != site_id:
            log.warning("%s from %s names another site id", request.DESCRIPTOR.name, site_id)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "site_id does not match the client certificate")
        reply = to_pb(fn(site_id, view))
        self.audit.record("out", site_id, reply)
        return reply

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> Message:  # noqa: N802
        reply = self._call(request, context, self.service.hello)
        log.info("hello from %s", peer_common_name(context))
        return reply

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> Message:  # noqa: N802
        return self._call(request, context, self.service.heartbeat)

    def PollTask(self, request: pb.PollRequest, context: grpc.ServicerContext) -> Message:  # noqa: N802
        return self._call(request, context,
                          lambda site, view: self.service.poll(site, view, context.time_remaining))

    def ReportResult(self, request: pb.ResultReport, context: grpc.ServicerContext) -> Message:  # noqa: N802
        return self._call(request, context, self.service.report)


@dataclass
class CoordinatorServer:
    server: grpc.Server
    port: int
    service: CoordinatorService
    store: SQLiteStore
    audit: AuditLog

    def stop(self, grace: float = 2.0) -> None:
        self.service.closing.set()
        self.service.notify()
        self.server.stop(grace).wait(grace + 1)
        self.audit.close()
        self.store.close()


def start_server(cfg: CoordinatorConfig) -> CoordinatorServer:
    """Open state and audit log, bind with mTLS, start serving. Raises CertificateError/AuditError on bad
    files (the CLI turns them into one-line errors)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    creds = server_credentials(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
    audit = AuditLog.open(cfg.state_dir / "audit.log", load_signing_key(cfg.audit_key), "coordinator", cfg.party)
    store = SQLiteStore(cfg.state_dir / "store.db")
    service = CoordinatorService(store, lease_s=cfg.lease_s, poll_wait_ms=cfg.poll_wait_ms,
                                 heartbeat_interval_ms=cfg.heartbeat_interval_ms)
    registry = SiteRegistry(cfg.sites, cfg.revoked_sites)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers), options=SERVER_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(  # type: ignore[no-untyped-call]
        FederationServicer(service, registry, audit), server)
    port = server.add_secure_port(cfg.listen, creds)
    if port == 0:
        audit.close()
        store.close()
        raise OSError(f"cannot listen on {cfg.listen}")
    server.start()
    log.info("listening on %s (port %d), %d registered sites", cfg.listen, port, len(cfg.sites))
    return CoordinatorServer(server, port, service, store, audit)
