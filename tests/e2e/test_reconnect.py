"""A site started while the coordinator is away keeps retrying with jittered backoff, connects when the
coordinator comes up, and the failed attempts are explained in its audit log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from coordinator.demo import check_audit_logs, free_port, provision, start_coordinator, start_site, stop_process


@pytest.mark.slow
def test_site_waits_for_the_coordinator(tmp_path: Path) -> None:
    wd = tmp_path / "fed"
    wd.mkdir()
    cfg = provision(wd, ["hospital-a"], rounds=1, k=2, samples=100, port=free_port(), sample_rate_permille=1000)
    logs = wd / "logs"
    logs.mkdir()
    site = start_site(wd, "hospital-a", logs)
    coordinator = None
    try:
        deadline = time.monotonic() + 30
        while (logs / "hospital-a.log").read_text().count("retrying in") < 2:
            assert time.monotonic() < deadline, "the site did not retry"
            assert site.poll() is None, "the site gave up instead of retrying"
            time.sleep(0.1)
        coordinator = start_coordinator(cfg, logs)
        deadline = time.monotonic() + 120
        while not (wd / "search-report.json").exists():
            assert time.monotonic() < deadline, "search did not finish"
            time.sleep(0.2)
    finally:
        assert stop_process(site) == 0
        if coordinator is not None:
            stop_process(coordinator)
    report = json.loads((wd / "search-report.json").read_text())
    assert all(s["sites"]["hospital-a"]["status"] == "ok" for s in report["strategies"])
    audit = check_audit_logs(wd, ["hospital-a"])
    assert audit["cross_check"]["hospital-a"]["ok"], audit
    assert audit["cross_check"]["hospital-a"]["undelivered"] >= 2
