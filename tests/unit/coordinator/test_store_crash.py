"""A coordinator killed with SIGKILL mid-write loses no acknowledged result and leaves a sound file.

The child records results in a tight loop and prints ``ACK <task_id>`` only after ``record_result``
returned; whatever the parent has read before the kill must be in the reopened store exactly once.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from coordinator.sqlite_store import SQLiteStore
from coordinator.store import TaskState

REPO = Path(__file__).resolve().parents[3]
ACKS_PER_ROUND = 25
ROUNDS = 3
READ_TIMEOUT_S = 60.0

CHILD = r"""
import sys
from pathlib import Path
from coordinator.sqlite_store import SQLiteStore
from protos.views import EvalSettings, OperatorCall, ResultReport, Strategy, Task, TaskStatus

path, prefix = Path(sys.argv[1]), sys.argv[2]
store = SQLiteStore(path)
strategy = Strategy(calls=(OperatorCall.of("select_top", k=5),))
for i in range(5000):  # bounded: the parent kills us long before this ends
    tid = f"{prefix}-{i}"
    now = 1000.0 + i
    store.enqueue(Task(task_id=tid, search_id="crash", strategy=strategy, settings=EvalSettings()),
                  "siteA", 0, now)
    leased = store.lease_next("siteA", now, 60.0)
    assert leased is not None and leased.task_id == tid
    ok, dup = store.record_result(ResultReport(task_id=tid, site_id="siteA", status=TaskStatus.OK,
                                               score=i / 1000), now)
    assert ok and not dup
    print("ACK", tid, flush=True)
"""


def _run_and_kill(db: Path, prefix: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), prefix], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    acked: list[str] = []
    try:
        while len(acked) < ACKS_PER_ROUND:
            line = lines.get(timeout=READ_TIMEOUT_S)
            if line is None:
                assert proc.stderr is not None
                raise AssertionError(f"child exited early: {proc.stderr.read()[-2000:]}")
            word, tid = line.split()
            assert word == "ACK"
            acked.append(tid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # Lines that were already in the pipe when the kill landed were acknowledged too.
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            break
        acked.append(line.split()[1])
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_acknowledged_results_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    acked: list[str] = []
    for r in range(ROUNDS):  # each round reopens what the previous kill left behind
        acked += _run_and_kill(db, f"r{r}")

    c = sqlite3.connect(db)
    assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for tid in acked:
        assert c.execute("SELECT COUNT(*) FROM tasks WHERE task_id = ? AND result IS NOT NULL",
                         (tid,)).fetchone() == (1,)
    c.close()

    with SQLiteStore(db) as store:
        rows = store.tasks_for_search("crash")
        ids = [rec.task.task_id for rec, _ in rows]
        assert len(ids) == len(set(ids))
        by_id = {rec.task.task_id: (rec, res) for rec, res in rows}
        for tid in acked:
            rec, res = by_id[tid]
            assert rec.state is TaskState.DONE and res is not None
            assert res.score == int(tid.split("-")[1]) / 1000
        # The store still works after the crashes.
        assert store.pending_count("siteA") <= ROUNDS  # at most one half-done task per kill
