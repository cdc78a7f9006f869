"""What the coordinator does for each call, as plain functions over typed views (no gRPC here).

The servicer (coordinator/server.py) converts messages, checks identity, audits, and calls these.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from coordinator.errors import UnknownSite
from coordinator.store import Store
from protos.views import (
    PROTOCOL_VERSION,
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    Poll,
    PollReply,
    ResultAck,
    ResultReport,
)

__all__ = ["CoordinatorService", "SiteRegistry"]


class SiteRegistry:
    """Which certificate CNs may talk to us: registered and not revoked."""

    def __init__(self, registered: Iterable[str], revoked: Iterable[str] = ()) -> None:
        self._registered = frozenset(registered)
        self._revoked = frozenset(revoked)

    def check(self, common_name: str | None) -> str:
        if common_name is None:
            raise UnknownSite("no client certificate common name")
        if common_name in self._revoked:
            raise UnknownSite(f"site '{common_name}' is revoked")
        if common_name not in self._registered:
            raise UnknownSite(f"site '{common_name}' is not registered")
        return common_name


class CoordinatorService:
    """Thread-safe: gRPC calls arrive on many threads; ``changed`` wakes long polls and the search loop."""

    def __init__(self, store: Store, *, lease_s: float, poll_wait_ms: int, heartbeat_interval_ms: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lease_s = lease_s
        self.poll_wait_ms = poll_wait_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.clock = clock
        self.changed = threading.Condition()
        self.closing = threading.Event()  # set on shutdown: long polls return at once

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def hello(self, site_id: str, msg: Hello) -> HelloReply:
        if msg.protocol_version != PROTOCOL_VERSION:
            return HelloReply(accepted=False)
        self.store.upsert_site(site_id, msg.software_version, msg.catalog, msg.size_bucket, self.clock())
        self.notify()
        return HelloReply(accepted=True, heartbeat_interval_ms=self.heartbeat_interval_ms,
                          poll_wait_ms=self.poll_wait_ms)

    def heartbeat(self, site_id: str, msg: Heartbeat) -> HeartbeatReply:
        return HeartbeatReply(known=self.store.touch_site(site_id, self.clock(), msg.tasks_done))

    def poll(self, site_id: str, msg: Poll, time_left: Callable[[], float | None]) -> PollReply:
        """Long poll, bounded by the site's wait, our own cap and the call's deadline."""
        self.store.touch_site(site_id, self.clock())
        wait_s = min(msg.wait_ms, self.poll_wait_ms) / 1000.0
        deadline = time.monotonic() + wait_s
        for _ in range(10_000):  # bounded: at most wait_s / 0.05 s of sleeping in practice
            task = self.store.lease_next(site_id, self.clock(), self.lease_s)
            if task is not None:
                return PollReply(task=task)
            remaining = deadline - time.monotonic()
            rpc_left = time_left()
            if rpc_left is not None:
                remaining = min(remaining, rpc_left - 0.5)
            if remaining <= 0 or self.closing.is_set():
                break
            with self.changed:
                self.changed.wait(timeout=min(remaining, 0.5))
        return PollReply(task=None)

    def report(self, site_id: str, msg: ResultReport) -> ResultAck:
        if msg.site_id != site_id:
            return ResultAck(accepted=False)
        accepted, duplicate = self.store.record_result(msg, self.clock())
        if accepted and not duplicate:
            self.notify()
        return ResultAck(accepted=accepted, duplicate=duplicate)
