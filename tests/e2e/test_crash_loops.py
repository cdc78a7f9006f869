"""Crash loops (issue #7, item 4): ``kill -9`` the coordinator again and again during a search, and each site in
the middle of a LoRA evaluation; restart each one every time. The search still finishes, and:

- every result a site saw acknowledged (an accepted ResultAck in its audit log) is in the coordinator's store,
  byte for byte what the site sent;
- nothing is counted twice: one stored result per task, at most one first (non-duplicate) acknowledgement per
  task, no task completed twice at a site, each task debited once in the site's privacy ledger;
- no evaluation worker outlives its killed site (nor leaves its job folder, with the rows, behind);
- every audit log verifies, and each site's log cross-matches the coordinator's (calls cut by a kill are
  explained by the site's 'undelivered' markers).

Size: 2 sites x 100 rows, 2 rounds x 2 strategies = 8 tasks, each a LoRA evaluation of a 2-layer Llama built
here (3 training steps, in an isolated worker process); 3 coordinator kills (after 1, 3 and 5 stored
results) and 2 site kills (one per site, while its worker runs). No sentence embedder (none of the allowed
operators needs one). Leases are 15 s, so a task lost with a kill is handed out again soon.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from coordinator.demo import check_audit_logs, free_port, provision, start_coordinator, start_site, stop_process
from coordinator.sqlite_store import SQLiteStore
from protos import federation_pb2 as pb
from protos.audit import read_log
from protos.serde import decode, from_pb
from protos.views import ResultReport
from tests.e2e.test_coordinator_crash import done_tasks, wait_for

SITES = ["hospital-a", "hospital-b"]
WORKER = "site_agent.evaluation.worker"


# ---------------------------------------------------------------- processes, from /proc

def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None when it is gone (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]))


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[1] == pid:
            out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def is_worker(pid: int) -> bool:
    try:
        return WORKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if _stat(p) is not None]


def kill_and_check_no_orphans(proc: subprocess.Popen[bytes], job_root: Path) -> list[int]:
    """kill -9 ``proc`` (whose descendants include an evaluation worker); within 10 s every descendant must be
    gone and no job folder left (the worker checks every 0.2 s; the rest is slack for a loaded machine). Returns the
    descendants it had."""
    below = descendants(proc.pid)
    assert any(is_worker(p) for p in below), "no evaluation worker was running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not alive(below) and not list(job_root.glob("autodp-eval-*")), 10,
             f"the killed process {proc.pid}'s descendants {below} to end and its job folders to go")
    return below


def wait_for_worker(site: subprocess.Popen[bytes], timeout: float) -> None:
    wait_for(lambda: any(is_worker(p) for p in children(site.pid)), timeout, "an evaluation to start")
    time.sleep(0.5)  # into the evaluation: the worker is importing torch or training


# ---------------------------------------------------------------- a fast check of the worker alone

PARENT = """
import os, sys
from pathlib import Path
from site_agent.evaluation.worker import FAULT_ENV, Job, run_in_worker
os.environ[FAULT_ENV] = "hang"  # the worker starts a child of its own, then sleeps
run_in_worker(Job(model_path="m", train={}, runs=("processed",)),
              {"processed": {"instruction": ["row"], "answer": ["text"]}}, 600, work_dir=Path(sys.argv[1]))
"""


def test_a_killed_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)])
    try:
        # the worker and the worker's own child are up
        wait_for(lambda: any(is_worker(p) and children(p) for p in children(parent.pid)), 60, "the worker")
        assert list(tmp_path.glob("autodp-eval-*"))  # the job folder, with the rows
        kill_and_check_no_orphans(parent, tmp_path)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ---------------------------------------------------------------- the crash loop

def acknowledged(site_log: Path) -> dict[str, ResultReport]:
    """Task id -> the report a site sent and saw accepted (the ResultAck that answered it)."""
    out: dict[str, ResultReport] = {}
    sent: ResultReport | None = None
    for e in read_log(site_log).entries:
        if e.kind == "message" and e.direction == "out":
            sent = from_pb(decode(pb.ResultReport, e.payload)) if e.msg_type == "autodp.v1.ResultReport" else None
        elif e.kind == "message" and e.msg_type == "autodp.v1.ResultAck":
            ack = decode(pb.ResultAck, e.payload)
            if sent is not None and ack.accepted:
                out[sent.task_id] = sent
            sent = None
        elif e.kind == "undelivered":
            sent = None
    return out


def first_acks(coord_log: Path) -> Counter[str]:
    """Task id -> how many times the coordinator acknowledged it as new (not a duplicate)."""
    firsts: Counter[str] = Counter()
    pending: dict[str, str] = {}  # peer -> task id of its report awaiting our reply
    for e in read_log(coord_log).entries:
        if e.kind != "message":
            continue
        if e.direction == "in":
            pending.pop(e.peer, None)
            if e.msg_type == "autodp.v1.ResultReport":
                pending[e.peer] = decode(pb.ResultReport, e.payload).task_id
        elif e.msg_type == "autodp.v1.ResultAck" and e.peer in pending:
            ack = decode(pb.ResultAck, e.payload)
            if ack.accepted and not ack.duplicate:
                firsts[pending[e.peer]] += 1
            pending.pop(e.peer)
    return firsts


def configure(wd: Path, cfg: Path, model: Path) -> None:
    doc = yaml.safe_load(cfg.read_text())
    doc["lease_s"] = 15
    doc["search"]["settings"] = {"sample_rate_permille": 1000, "evaluator": "lora", "metric": "neg_token_loss",
                                 "train_steps": 3}
    cfg.write_text(yaml.safe_dump(doc))
    for site in SITES:
        policy = yaml.safe_load((wd / site / "policy.yaml").read_text())
        policy["allowed_evaluators"] = ["quality_proxy", "lora"]
        # operators whose parameters keep most rows, so that tasks reach the evaluator
        policy["allowed_operators"] = ["remove_markup", "normalize_text", "exact_dedup", "redact_identifiers"]
        (wd / site / "policy.yaml").write_text(yaml.safe_dump(policy))
        site_cfg = yaml.safe_load((wd / site / "site.yaml").read_text())
        site_cfg["embedder"] = None
        site_cfg["evaluator_options"] = {"lora": {
            "model_path": str(model), "steps": 3, "seq_len": 48, "batch_size": 4, "eval_batch_size": 25,
            "threads": 1, "work_dir": str(wd / site / "eval-jobs")}}
        site_cfg["privacy"] = {**site_cfg["privacy"], "mechanism": "laplace", "release_epsilon": 0.5,
                               "total_epsilon": 100.0}
        (wd / site / "eval-jobs").mkdir()
        (wd / site / "site.yaml").write_text(yaml.safe_dump(site_cfg))


@pytest.mark.slow
def test_kill_coordinator_and_sites_repeatedly(tmp_path: Path) -> None:
    from site_agent.data.toy import make_toy_dataset
    from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

    wd = tmp_path / "fed"
    wd.mkdir()
    cfg = provision(wd, SITES, rounds=2, k=2, samples=100, port=free_port(), sample_rate_permille=1000, patience=0)
    clean, _ = make_toy_dataset(200, seed=7, noise_rate=0.0)
    configure(wd, cfg, build_tiny_model(tmp_path / "tiny-llama", clean["instruction"] + clean["answer"]))
    logs = wd / "logs"
    logs.mkdir()
    db = wd / "coordinator-state" / "store.db"

    coordinator = start_coordinator(cfg, logs, command="search")
    sites = {s: start_site(wd, s, logs) for s in SITES}
    workers: list[int] = []
    coordinator_kills = 0

    def kill_coordinator_after(done: int) -> None:
        nonlocal coordinator, coordinator_kills
        wait_for(lambda: done_tasks(db) >= done, 150, f"{done} stored results")
        assert coordinator.poll() is None, "the search finished before the kill; make it longer"
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        coordinator_kills += 1
        coordinator = start_coordinator(cfg, logs, command="search")

    def kill_site_mid_evaluation(site: str) -> None:
        wait_for_worker(sites[site], 150)
        workers.extend(kill_and_check_no_orphans(sites[site], wd / site / "eval-jobs"))
        sites[site] = start_site(wd, site, logs)

    try:
        kill_site_mid_evaluation("hospital-a")
        kill_coordinator_after(1)
        kill_site_mid_evaluation("hospital-b")
        kill_coordinator_after(3)
        kill_coordinator_after(5)
        wait_for(lambda: coordinator.poll() is not None, 240, "the search to finish after the last restart")
        assert coordinator.returncode == 0, (logs / "coordinator.log").read_text()[-3000:]
    finally:
        codes = {s: stop_process(p) for s, p in sites.items()}
        stop_process(coordinator)
    assert set(codes.values()) == {0}, codes
    assert coordinator_kills == 3 and not alive(workers)

    # the search finished, every task answered (a strategy that filters below the cohort floor is refused)
    with SQLiteStore(db) as store:
        tasks = store.tasks_for_search("demo-search")
        stored = {rec.task.task_id: res for rec, res in tasks}
    assert len(tasks) == 8 and all(r is not None for r in stored.values()), [rec.state for rec, _ in tasks]
    statuses = Counter(str(r.status) for r in stored.values() if r is not None)
    assert set(statuses) <= {"ok", "rejected_cohort"} and statuses["ok"] >= 4, statuses

    for site in SITES:
        # every acknowledged result is stored, exactly as the site sent it
        acked = acknowledged(wd / site / "state" / "audit.log")
        assert acked and all(stored.get(t) == r for t, r in acked.items())
        # the site's outbox holds the same answers: nothing acknowledged was lost, nothing answered twice
        mine = {t: r for t, r in stored.items() if r is not None and r.site_id == site}
        assert set(acked) == set(mine)
        done_lines = Counter(line.split()[5] for line in (logs / f"{site}.log").read_text().splitlines()
                             if " done: " in line)
        assert done_lines and max(done_lines.values()) == 1, done_lines.most_common(3)
        # one debit per task: 0.5 per released score, even for a task re-run after its site was killed
        with sqlite3.connect(f"file:{wd / site / 'state' / 'privacy.db'}?mode=ro", uri=True) as c:
            rows = c.execute("SELECT task_id, spent FROM entries").fetchall()
        assert {t for t, _ in rows} == set(mine)
        released = sum(r.status == "ok" for r in mine.values())
        assert abs(sum(s for _, s in rows) - 0.5 * released) < 1e-9
    firsts = first_acks(wd / "coordinator-state" / "audit.log")
    assert firsts and max(firsts.values()) == 1, firsts.most_common(3)

    audit = check_audit_logs(wd, SITES)
    assert all(v["ok"] for v in audit["verify"].values()), audit
    assert all(c["ok"] for c in audit["cross_check"].values()), audit
