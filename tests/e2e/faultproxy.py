"""A TCP proxy on 127.0.0.1 that puts a bad network between a site and the coordinator.

The site's ``coordinator:`` points at the proxy; the proxy forwards to the real coordinator. Faults are
switched at run time, from the test, while connections are open:

- ``delay_s``: every chunk read from either side waits this long before it is forwarded (a slow link);
- ``drop_rate``: each forwarded chunk cuts its connection with this probability (a lossy link);
- ``cut(seconds)``: every open connection is closed now, and new ones are closed as soon as they are
  accepted, for that long (a cable pulled out, then plugged back);
- ``blackhole``: bytes are accepted and swallowed, never forwarded, and nothing is closed (a firewall that
  drops packets silently: only a deadline can notice).

Threads, not asyncio: the code around it (gRPC, the site agent) is threaded, and two pump threads per
connection are plenty for a test. Counters tell the test what the proxy actually did.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["FaultProxy", "ProxyStats"]

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0      # connections forwarded (or swallowed, when blackholed)
    refused: int = 0       # connections closed on arrival during a cut
    dropped: int = 0       # connections cut by the lossy link or by cut()
    forwarded_bytes: int = 0
    swallowed_bytes: int = 0


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = 0.0
        self.drop_rate = 0.0
        self.blackhole = False
        self.stats = ProxyStats()
        self._cut_until = 0.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -------------------------------------------------------------------------------- faults

    def cut(self, seconds: float) -> None:
        """Close every open connection and refuse new ones for ``seconds``."""
        with self._lock:
            self._cut_until = time.monotonic() + seconds
            conns = list(self._conns)
        for s in conns:
            self._kill(s, counted=True)

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    def heal(self) -> None:
        """No delay, no loss, no cut, no blackhole."""
        self.delay_s, self.drop_rate, self.blackhole, self._cut_until = 0.0, 0.0, False, 0.0

    # -------------------------------------------------------------------------------- plumbing

    def _kill(self, s: socket.socket, counted: bool = False) -> None:
        with self._lock:
            present = s in self._conns
            self._conns.discard(s)
            if counted and present:
                self.stats.dropped += 1
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv()
        except OSError:
            pass
        s.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.is_cut:
                self.stats.refused += 1
                client.close()
                continue
            self.stats.accepted += 1
            upstream: socket.socket | None = None
            if not self.blackhole:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            with self._lock:
                self._conns.add(client)
                if upstream is not None:
                    self._conns.add(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                if src is not None:
                    threading.Thread(target=self._pump, args=(src, dst, client, upstream), daemon=True,
                                     name="faultproxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket | None, a: socket.socket,
              b: socket.socket | None) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                if self.blackhole or dst is None:
                    self.stats.swallowed_bytes += len(data)
                    continue
                if self.delay_s > 0:
                    time.sleep(self.delay_s)
                if self.is_cut:
                    break
                with self._lock:
                    lost = self.drop_rate > 0 and self._rng.random() < self.drop_rate
                if lost:
                    self._kill(a, counted=True)
                    if b is not None:
                        self._kill(b)
                    return
                dst.sendall(data)
                self.stats.forwarded_bytes += len(data)
        except OSError:
            pass
        # one side ended: end the other, so the peer sees the connection go
        self._kill(a)
        if b is not None:
            self._kill(b)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._kill(s)
        self._thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
