"""A scripted coordinator for site-agent tests: real gRPC with mutual TLS, on a unix socket (no network).

It speaks the federation service by hand, so it can hand a site whatever bytes a test chooses as the reply
to a poll, as a buggy or hostile coordinator would, and it keeps the exact bytes of every result report it
receives. Hello and heartbeat are always accepted.

    with ScriptedCoordinator(certs, sock_dir) as coord:
        agent = SiteAgent(cfg_pointing_at(coord.address)); start agent.run() in a thread
        coord.deliver(poll_reply_bytes)   # returns once the site has handled it (it polled again)
        coord.reports                     # raw ResultReport bytes, in arrival order

``deliver`` knows the site is done with a reply when the site polls again: the agent handles one task at a
time (poll -> handle -> send the result -> poll), so its next poll comes after the result was sent.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from protos import federation_pb2 as pb
from protos.tls import server_credentials

__all__ = ["ScriptedCoordinator"]

_SERVICE = "autodp.v1.Federation"
_EMPTY = pb.PollReply(has_task=False).SerializeToString()


def _raw(data: bytes) -> bytes:
    return data


class ScriptedCoordinator:
    def __init__(self, certs: Path, sock_dir: Path, *, idle_wait_s: float = 0.05) -> None:
        self.address = f"unix:{sock_dir / 'coordinator.sock'}"
        self.reports: list[bytes] = []
        self.polls = 0
        self.hellos = 0
        self._idle_wait_s = idle_wait_s
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._next_seq = 0
        self._inflight: int | None = None  # seq of the reply the site is handling now
        self._done = -1  # highest seq the site has finished with
        self._closing = False
        handlers = {
            "Hello": grpc.unary_unary_rpc_method_handler(
                self._hello, request_deserializer=pb.HelloRequest.FromString, response_serializer=_raw),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                self._heartbeat, request_deserializer=pb.HeartbeatRequest.FromString, response_serializer=_raw),
            "PollTask": grpc.unary_unary_rpc_method_handler(
                self._poll, request_deserializer=pb.PollRequest.FromString, response_serializer=_raw),
            "ReportResult": grpc.unary_unary_rpc_method_handler(
                self._report, request_deserializer=_raw, response_serializer=_raw),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
            ("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)])
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        creds = server_credentials(certs / "coordinator.crt", certs / "coordinator.key", certs / "ca.crt")
        if not self._server.add_secure_port(self.address, creds):
            raise OSError(f"cannot listen on {self.address}")
        self._server.start()

    # ------------------------------------------------------------ the service

    def _hello(self, request: Any, context: grpc.ServicerContext) -> bytes:
        with self._cond:
            self.hellos += 1
        return pb.HelloReply(accepted=True, protocol_version=1, heartbeat_interval_ms=600_000,
                             poll_wait_ms=100).SerializeToString()

    def _heartbeat(self, request: Any, context: grpc.ServicerContext) -> bytes:
        return pb.HeartbeatReply(known=True).SerializeToString()

    def _poll(self, request: Any, context: grpc.ServicerContext) -> bytes:
        with self._cond:
            self.polls += 1
            if self._inflight is not None:  # a new poll: the site is done with the previous reply
                self._done, self._inflight = self._inflight, None
                self._cond.notify_all()
            if not self._queue and not self._closing:
                self._cond.wait(self._idle_wait_s)
            if not self._queue or self._closing:
                return _EMPTY
            seq, data = self._queue.popleft()
            self._inflight = seq
            return data

    def _report(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._cond:
            self.reports.append(request)
        return pb.ResultAck(accepted=True).SerializeToString()

    # ------------------------------------------------------------ the test's side

    def deliver(self, data: bytes, timeout_s: float = 30.0, alive: Callable[[], bool] = lambda: True) -> None:
        """Hand ``data`` to the site as its next poll reply; return once the site has polled again.
        Raises TimeoutError after ``timeout_s``, or RuntimeError as soon as ``alive()`` says the site stopped."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            self._queue.append((seq, data))
            self._cond.notify_all()
            while not self._cond.wait_for(lambda: self._done >= seq, 0.2):
                if not alive():
                    raise RuntimeError("the site agent stopped")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the site did not come back for a new task within {timeout_s} s")

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.stop(0.5).wait(2)

    def __enter__(self) -> ScriptedCoordinator:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
