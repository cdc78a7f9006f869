"""A slow, lossy, cut or blackholed link between a site and the coordinator (a TCP fault proxy on
127.0.0.1, tests/e2e/faultproxy.py): every call ends by its deadline, retries back off, and the work either
completes or the search says which site failed.

The deadlines are checked on the site's own audit log, not on a wrapper: every message the site sends is an
entry with a time, followed by the reply or by an 'undelivered' marker with the gRPC status, so the time each
call took is on record.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import SearchConfig
from coordinator.search import run_search
from coordinator.server import CoordinatorServer, start_server
from protos.audit import cross_check, read_log
from protos.views import EvalSettings, OperatorCall, Strategy, Task, TaskStatus
from site_agent.agent import SiteAgent
from site_agent.config import SiteConfig, load_config
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from tests.e2e.conftest import Federation
from tests.e2e.faultproxy import FaultProxy

ALLOWED = ["remove_markup", "normalize_text", "length_filter"]
MARGIN_S = 1.5  # scheduling and fsync of the audit entries on a busy 2-core machine


def write_site_config(folder: Path, certs: Path, site: str, address: str, **overrides: Any) -> Path:
    """A quick site: 60 toy rows, three cheap operators, no embedder or screening model (start-up in
    seconds), short deadlines and backoff."""
    folder.mkdir(parents=True, exist_ok=True)
    data, _ = make_toy_dataset(60, seed=3)
    save_pairs(data, folder / "train.jsonl")
    (folder / "policy.yaml").write_text(yaml.safe_dump({"allowed_operators": ALLOWED}))
    cfg: dict[str, Any] = {
        "site_id": site, "coordinator": address, "tls_server_name": "localhost",
        "tls": {"cert": str(certs / f"site-{site}.crt"), "key": str(certs / f"site-{site}.key"),
                "ca": str(certs / "ca.crt")},
        "audit_key": str(certs / f"site-{site}.audit.key"), "state_dir": str(folder / "state"),
        "policy": str(folder / "policy.yaml"), "data": {"path": str(folder / "train.jsonl")},
        "embedder": None, "screening": None, "cache": {"dir": str(folder / "cache")},
        "privacy": {"min_cohort": 5}, "poll_wait_ms": 300, "rpc_timeout_s": 1.0,
        "backoff_initial_s": 0.2, "backoff_max_s": 2.0}
    cfg.update(overrides)
    (folder / "site.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "site.yaml"


@contextmanager
def running(cfg_path: Path) -> Iterator[SiteAgent]:
    agent = SiteAgent(load_config(cfg_path), threading.Event())
    thread = threading.Thread(target=agent.run, daemon=True, name=f"site-{agent.cfg.site_id}")
    thread.start()
    try:
        yield agent
    finally:
        agent.stop.set()
        thread.join(15)
        agent.close()
        assert not thread.is_alive(), "the site did not stop"


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def call_times(cfg: SiteConfig) -> list[tuple[str, float, float, str]]:
    """Per call the site made, from its audit log: (message type, seconds taken, deadline, outcome), where
    outcome is 'ok' or the gRPC status of the failure."""
    entries = read_log(cfg.state_dir / "audit.log").entries
    calls = []
    for out, nxt in zip(entries, entries[1:], strict=False):
        if out.kind != "message" or out.direction != "out":
            continue
        msg = out.msg_type.rsplit(".", 1)[-1]
        deadline = cfg.rpc_timeout_s + (cfg.poll_wait_ms / 1000.0 if msg == "PollRequest" else 0.0)
        if nxt.kind == "undelivered" and nxt.ref == out.index:
            calls.append((msg, (nxt.time_ms - out.time_ms) / 1000.0, deadline, nxt.status))
        elif nxt.kind == "message" and nxt.direction == "in":
            calls.append((msg, (nxt.time_ms - out.time_ms) / 1000.0, deadline, "ok"))
    return calls


def assert_deadlines_kept(cfg: SiteConfig) -> list[tuple[str, float, float, str]]:
    calls = call_times(cfg)
    late = [c for c in calls if c[1] > c[2] + MARGIN_S]
    assert not late, f"calls that outlived their deadline: {late}"
    return calls


def assert_logs_cross_match(cfg: SiteConfig, server: CoordinatorServer) -> None:
    """Every message is in both signed logs, or its absence is explained by the site's 'undelivered' marker
    (a failed call whose message or reply the link lost)."""
    cc = cross_check(cfg.state_dir / "audit.log", server.audit.path)
    assert cc.ok, cc.unmatched


def enqueue(server: CoordinatorServer, task_id: str, site: str, max_attempts: int = 10) -> None:
    task = Task(task_id=task_id, search_id="net", settings=EvalSettings(sample_rate_permille=1000),
                strategy=Strategy(calls=(OperatorCall.of("remove_markup"),)))
    server.store.enqueue(task, site, 1, time.time(), max_attempts)
    server.service.notify()


def result_ok(server: CoordinatorServer, task_id: str) -> bool:
    r = server.store.get_result(task_id)
    return r is not None and r.status is TaskStatus.OK


@pytest.fixture
def short_leases(federation: Federation, tmp_path: Path) -> Iterator[CoordinatorServer]:
    """The federation's coordinator with 2 s leases: a task whose delivery was lost is offered again soon."""
    server = start_server(federation.config.model_copy(update={"lease_s": 2.0, "state_dir": tmp_path / "coord"}))
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def test_slow_link_every_call_keeps_its_deadline(federation: Federation, short_leases: CoordinatorServer,
                                                 tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "autodp.site")
    server = short_leases
    with FaultProxy(server.port) as proxy:
        cfg_path = write_site_config(tmp_path / "a", federation.certs, "hospital-a", proxy.address)
        with running(cfg_path) as agent:
            wait_until(lambda: server.store.get_site("hospital-a") is not None, 20, "hello")
            proxy.delay_s = 2.5  # every chunk, each way: longer than any call's deadline
            wait_until(lambda: caplog.text.count("DEADLINE_EXCEEDED") >= 2, 20, "calls to hit their deadline")
            enqueue(server, "t-slow", "hospital-a")
            proxy.delay_s = 0.1  # still slow, now within the deadlines
            wait_until(lambda: result_ok(server, "t-slow"), 40, "the task's result")
        cfg = agent.cfg
    calls = assert_deadlines_kept(cfg)
    assert sum(c[3] == "DEADLINE_EXCEEDED" for c in calls) >= 2
    assert_logs_cross_match(cfg, server)
    assert agent.runner.executed == 1


def test_cut_link_backs_off_then_completes(federation: Federation, short_leases: CoordinatorServer,
                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "autodp.site")
    server = short_leases
    cut_s = 4.0
    with FaultProxy(server.port) as proxy:
        cfg_path = write_site_config(tmp_path / "a", federation.certs, "hospital-a", proxy.address)
        with running(cfg_path) as agent:
            wait_until(lambda: server.store.get_site("hospital-a") is not None, 20, "hello")
            proxy.cut(cut_s)
            enqueue(server, "t-cut", "hospital-a")
            wait_until(lambda: not proxy.is_cut, cut_s + 1, "the end of the cut")
            retries = [(float(d), int(n), float(cap)) for d, n, cap in re.findall(
                r"retrying in ([\d.]+) s \(attempt (\d+), backoff cap ([\d.]+) s\)", caplog.text)]
            wait_until(lambda: result_ok(server, "t-cut"), 40, "the task's result after the cut")
    assert proxy.stats.dropped >= 1 and proxy.stats.refused >= 1
    # backoff: the n-th retry waits at most min(max, initial * 2^(n-1)), the bound doubles, and a 4 s cut costs
    # a handful of attempts, not a hot loop
    assert len(retries) >= 3, caplog.text[-3000:]
    assert [n for _, n, _ in retries] == list(range(1, len(retries) + 1))
    for delay, n, cap in retries:
        assert cap == pytest.approx(min(2.0, 0.2 * 2 ** (n - 1)), abs=0.06) and delay <= cap + 0.05
    assert [cap for _, _, cap in retries] == sorted(cap for _, _, cap in retries)
    assert len(retries) <= 15
    assert_deadlines_kept(agent.cfg)
    assert_logs_cross_match(agent.cfg, server)
    assert agent.runner.executed == 1


def test_lossy_link_every_task_answered_once(federation: Federation, short_leases: CoordinatorServer,
                                             tmp_path: Path) -> None:
    server = short_leases
    tasks = [f"t-lossy-{i}" for i in range(4)]
    with FaultProxy(server.port, seed=7) as proxy:
        cfg_path = write_site_config(tmp_path / "a", federation.certs, "hospital-a", proxy.address)
        proxy.drop_rate = 0.06  # per forwarded chunk: connections die in handshakes, in calls, in replies
        with running(cfg_path) as agent:
            for t in tasks:
                enqueue(server, t, "hospital-a")
            wait_until(lambda: all(result_ok(server, t) for t in tasks), 60, "every task's result")
    assert proxy.stats.dropped >= 3, f"the link lost little: the test proved little ({proxy.stats})"
    assert_deadlines_kept(agent.cfg)
    assert_logs_cross_match(agent.cfg, server)
    # a lost task delivery is offered again after its lease; a lost ack makes the site resend its stored
    # result; a task seen twice is answered from the result store: either way each task ran once at the site
    assert agent.runner.executed == len(tasks)


def test_blackholed_site_is_reported_and_the_search_completes(federation: Federation, tmp_path: Path) -> None:
    server = federation.server
    with FaultProxy(server.port) as proxy:
        a_cfg = write_site_config(tmp_path / "a", federation.certs, "hospital-a", federation.address)
        b_cfg = write_site_config(tmp_path / "b", federation.certs, "hospital-b", proxy.address)
        with running(a_cfg), running(b_cfg) as b:
            wait_until(lambda: all(server.store.get_site(s) for s in ("hospital-a", "hospital-b")), 30, "hellos")
            proxy.blackhole = True  # hospital-b's packets vanish; nothing is closed
            started = time.monotonic()
            cfg = SearchConfig(search_id="s-blackhole", rounds=1, strategies_per_round=1, min_sites=2,
                               wait_for_sites_s=5, round_deadline_s=6, patience=0,
                               settings=EvalSettings(sample_rate_permille=1000))
            outcome = run_search(server.service, cfg, threading.Event())
            took = time.monotonic() - started
    assert outcome.reason == "completed all 1 rounds"
    assert took < 6 + 5, f"the round deadline did not end the round ({took:.1f} s)"
    (strategy,) = outcome.strategies
    by_site = {s.site_id: s for s in strategy.sites}
    assert by_site["hospital-a"].ok and by_site["hospital-a"].score is not None
    assert by_site["hospital-b"].status is None
    assert any("site hospital-b did not answer" in n for n in outcome.notes), outcome.notes
    calls = assert_deadlines_kept(b.cfg)
    assert sum(c[3] == "DEADLINE_EXCEEDED" for c in calls) >= 1
    assert proxy.stats.swallowed_bytes > 0
