"""kill -9 the coordinator in the middle of a search, start it again: the search finishes, nothing stored is
lost, no evaluation runs twice, and the audit logs still verify and cross-match."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from coordinator.demo import check_audit_logs, free_port, provision, start_coordinator, start_site, stop_process

SITES = ["hospital-a", "hospital-b"]


def done_tasks(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
        try:
            return int(c.execute("SELECT COUNT(*) FROM tasks WHERE state='done'").fetchone()[0])
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_coordinator_killed_mid_search_resumes(tmp_path: Path) -> None:
    wd = tmp_path / "fed"
    wd.mkdir()
    cfg = provision(wd, SITES, rounds=4, k=4, samples=150, port=free_port(), sample_rate_permille=1000, patience=0)
    logs = wd / "logs"
    logs.mkdir()
    db, report = wd / "coordinator-state" / "store.db", wd / "search-report.json"
    coordinator = start_coordinator(cfg, logs, command="search")
    sites = {s: start_site(wd, s, logs) for s in SITES}
    try:
        wait_for(lambda: done_tasks(db) >= 5, 120, "the first results")
        assert coordinator.poll() is None, "search finished before the kill; make it longer"
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(10)
        before = done_tasks(db)
        coordinator = start_coordinator(cfg, logs, command="search")
        wait_for(lambda: coordinator.poll() is not None, 240, "the search to finish after the restart")
        assert coordinator.returncode == 0, (logs / "coordinator.log").read_text()[-3000:]
        assert done_tasks(db) >= before
    finally:
        codes = {s: stop_process(p) for s, p in sites.items()}
        stop_process(coordinator)
    assert set(codes.values()) == {0}, codes

    result = json.loads(report.read_text())
    assert result["stopped_because"] == "completed all 4 rounds"
    assert len(result["strategies"]) == 16
    assert all(r["status"] == "ok" for s in result["strategies"] for r in s["sites"].values())
    assert all(len(s["sites"]) == 2 for s in result["strategies"])
    for site in SITES:  # each task was executed at most once at the site
        runs = Counter(re.findall(r"task (t-[0-9a-f]+) done:", (logs / f"{site}.log").read_text()))
        assert runs and max(runs.values()) == 1, runs.most_common(3)
        assert len(runs) == 16

    audit = check_audit_logs(wd, SITES)
    assert all(v["ok"] for v in audit["verify"].values()), audit
    assert all(c["ok"] for c in audit["cross_check"].values()), audit
