"""The whole system as separate processes on 127.0.0.1: `autodp demo run` provisions fresh certificates,
starts a coordinator and two site agents, runs a small search to completion, stops them; then the audit
logs are checked here again through the public CLI, as an auditor would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def autodp(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protos.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_sites_search_and_audit(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    # the default demo: the offline SmolLM2 meta-agent, then a random search on the same budget
    run = autodp("demo", "run", "--workdir", str(wd), "--sites", "2", "--rounds", "2", "--k", "3",
                 "--samples", "300", "--timeout", "900", timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((wd / "demo-summary.json").read_text())
    assert all(code == 0 for code in summary["exit_codes"].values()), summary["exit_codes"]

    report = json.loads((wd / "search-report.json").read_text())
    assert report["proposer"] == "llm"
    assert report["stopped_because"].startswith(("completed all 2 rounds", "converged")), report["stopped_because"]
    assert len(report["strategies"]) == 3 * len(report["rounds"])
    baseline = report["baselines"]["random"]
    assert baseline["evaluations"] == len(report["strategies"])
    assert json.loads((wd / "search-report-random.json").read_text())["proposer"] == "random"
    html = (wd / "search-report.html").read_text()
    assert "<svg" in html and "random" in html
    assert report["recipe"] and Path(report["recipe"]).exists()
    assert summary["process"]["ok"] and summary["process"]["rows"] > 0
    assert set(report["per_site"]) == {"hospital-a", "hospital-b"}
    for s in report["strategies"]:
        assert set(s["sites"]) == {"hospital-a", "hospital-b"}
        # a strategy that filters the sample below the site's minimum cohort is refused, by design
        assert all(r["status"] in ("ok", "rejected_cohort") for r in s["sites"].values())
    assert sum(r["status"] == "ok" for s in report["strategies"] for r in s["sites"].values()) >= 6
    assert report["best"] is not None and report["best"]["aggregate_score"] == max(
        s["aggregate_score"] for s in report["strategies"])

    coord_log = wd / "coordinator-state" / "audit.log"
    for party, log in [("coordinator", coord_log), ("site-hospital-a", wd / "hospital-a/state/audit.log"),
                       ("site-hospital-b", wd / "hospital-b/state/audit.log")]:
        v = autodp("audit", "verify", str(log), "--key", str(wd / "certs" / f"{party}.audit.pub"))
        assert v.returncode == 0, v.stdout + v.stderr
    for site in ("hospital-a", "hospital-b"):
        cc = autodp("audit", "cross-check", str(wd / site / "state/audit.log"), str(coord_log))
        assert cc.returncode == 0, cc.stdout + cc.stderr
    shown = autodp("audit", "show", str(wd / "hospital-a/state/audit.log"))
    assert shown.returncode == 0 and "score" in shown.stdout

    # the coordinator's side holds no training text: none of the site's rows appear in anything it wrote
    rows = [json.loads(line) for line in (wd / "benchmark" / "hospital-a" / "train.jsonl").read_text().splitlines()]
    coordinator_bytes = b"".join(p.read_bytes() for p in (wd / "coordinator-state").iterdir() if p.is_file())
    for name in ("search-report.json", "search-report.html", "search-report.recipe.yaml", "logs/coordinator.log"):
        coordinator_bytes += (wd / name).read_bytes()
    for row in rows[:50]:
        for text in (row["instruction"], row["answer"]):
            if len(text) >= 12:
                assert text.encode() not in coordinator_bytes
