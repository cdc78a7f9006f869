"""Audit-log benchmark: how long verifying a 10,000-entry log takes (issue #7 asks for under 5 s).

Writes a site log of ``--entries`` entries of real protocol messages (polls, tasks, results, acks,
heartbeats) and the coordinator's log of the same conversation, then times, ``--repeat`` times each:
``verify`` of the site log (wall and CPU seconds, entries/s) and the site/coordinator ``cross_check``
(which verifies both logs). Also times durable appends (each one fsynced, head re-signed) on a short
log. The bulk is written without fsync (not what is measured here); the last entry of each log is written
by the real code, so both logs are complete and signed. Prints times only.

    .venv/bin/python bench/bench_audit.py                 # 10,000 entries, best of 3
    .venv/bin/python bench/bench_audit.py --entries 50000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from protos.audit import AuditLog, cross_check, verify
from protos.serde import to_pb
from protos.views import (
    EvalSettings,
    Heartbeat,
    HeartbeatReply,
    OperatorCall,
    Poll,
    PollReply,
    ResultAck,
    ResultReport,
    Strategy,
    Task,
    TaskStatus,
)

__all__ = ["main", "write_logs"]

SITE, COORD = "hospital-a", "coordinator"


def _exchange(k: int) -> tuple[Message, Message]:
    poll = to_pb(Poll(site_id=SITE, wait_ms=1000))
    if k % 50 == 0:
        return to_pb(Heartbeat(site_id=SITE, tasks_done=k // 3)), to_pb(HeartbeatReply(known=True))
    if k % 3 == 1:
        strategy = Strategy(calls=(OperatorCall.of("length_filter", min_answer_chars=20),
                                   OperatorCall.of("exact_dedup")))
        return poll, to_pb(PollReply(task=Task(task_id=f"t-{k}", search_id="bench", strategy=strategy,
                                               settings=EvalSettings(seed=k))))
    if k % 3 == 2:
        return (to_pb(ResultReport(task_id=f"t-{k - 1}", site_id=SITE, status=TaskStatus.OK, score=0.01 * (k % 7),
                                   epsilon_remaining=1.0)), to_pb(ResultAck(accepted=True)))
    return poll, to_pb(PollReply())


def write_logs(folder: Path, entries: int) -> tuple[Path, Path]:
    """A site log of exactly ``entries`` entries and the coordinator log of the same conversation."""
    key_s, key_c = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    site_path, coord_path = folder / "site.log", folder / "coord.log"
    real_fsync, real_head = os.fsync, AuditLog._write_head
    os.fsync = lambda fd: None
    AuditLog._write_head = lambda self: None  # type: ignore[method-assign]
    try:
        site = AuditLog.open(site_path, key_s, "site", SITE)
        coord = AuditLog.open(coord_path, key_c, "coordinator", COORD)
        k = 0
        while site.entries < entries - 1 - (entries % 2 == 0):
            request, reply = _exchange(k)
            site.record("out", COORD, request)
            coord.record("in", SITE, request)
            coord.record("out", SITE, reply)
            site.record("in", COORD, reply)
            k += 1
    finally:
        os.fsync, AuditLog._write_head = real_fsync, real_head  # type: ignore[method-assign]
    last = [to_pb(Heartbeat(site_id=SITE, tasks_done=k)), to_pb(HeartbeatReply(known=True))]
    for i, msg in enumerate(last[:entries - site.entries]):
        site.record("out" if i == 0 else "in", COORD, msg)
        coord.record("in" if i == 0 else "out", SITE, msg)
    site.close()
    coord.close()
    return site_path, coord_path


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--durable", type=int, default=200, help="fsynced appends to time (0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        site, coord = write_logs(folder, args.entries)
        n = verify(site).entries
        print(f"wrote a {n}-entry site log ({site.stat().st_size / 1e6:.1f} MB) and a "
              f"{verify(coord).entries}-entry coordinator log in {time.perf_counter() - t0:.1f} s (bulk unsynced)")
        wall, cpu = _timed(lambda: verify(site), args.repeat)
        best = min(wall)
        print(f"verify {n} entries: best {best:.2f} s wall ({n / best:,.0f} entries/s), "
              f"median {statistics.median(wall):.2f} s; CPU {min(cpu):.2f} s; "
              f"target < 5 s: {'met' if best < 5 else 'NOT met'}")
        wall, cpu = _timed(lambda: cross_check(site, coord), args.repeat)
        print(f"cross_check (verifies both logs, then matches them 1:1): best {min(wall):.2f} s wall, "
              f"CPU {min(cpu):.2f} s")
        if args.durable:
            key = Ed25519PrivateKey.generate()
            msg = to_pb(Poll(site_id=SITE, wait_ms=1000))
            with AuditLog.open(folder / "durable.log", key, "site", SITE) as log:
                t0 = time.perf_counter()
                for _ in range(args.durable):
                    log.record("out", COORD, msg)
                dt = time.perf_counter() - t0
            print(f"durable appends (fsync + signed head each): {args.durable / dt:,.0f} entries/s "
                  f"({dt / args.durable * 1000:.1f} ms each)")


if __name__ == "__main__":
    main()
