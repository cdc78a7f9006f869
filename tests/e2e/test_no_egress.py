"""No egress: a site agent, its LLM operator included, run in a network namespace whose only way out is a
veth link to the coordinator, completes a real task, and every connection it attempts goes to the
coordinator.

The site runs as a hospital runs it (``autodp site run``), inside a fresh namespace (``ip netns``) with one
veth interface (10.200.N.2/30) whose peer in the test's namespace (10.200.N.1) is where the coordinator
listens; loopback stays down. It runs under ``strace -f`` tracing every ``connect``/``sendto``/``sendmsg``,
so an attempt shows even when the namespace makes it fail. The hub-offline variables (HF_HUB_OFFLINE and
friends) are removed from its environment: the code itself must not try, not merely be told not to.

The task runs ``rewrite_answer`` on the bundled SmolLM2 (``llm: {backend: local}``, converted from its GGUF
file into a fresh cache inside the namespace, as on first use) over a few toy rows, and the quality-proxy
evaluator. The default sentence embedder and the screening model are off (start-up
time); their loaders are covered by tests/unit/test_model_loading_safety.py.

Needs root, iproute2 and strace: skipped otherwise, failed instead when AUTODP_REQUIRE_NETNS=1 (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from coordinator.server import start_server
from protos.views import EvalSettings, OperatorCall, Strategy, Task, TaskStatus
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from tests.e2e.conftest import Federation

pytestmark = pytest.mark.slow

REQUIRED = os.environ.get("AUTODP_REQUIRE_NETNS") == "1"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "strace"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    probe = f"autodp-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()[:200]}"
    _run("ip", "netns", "del", probe)
    return None


@dataclass
class Netns:
    name: str
    host_ip: str
    site_ip: str


@pytest.fixture
def netns() -> Iterator[Netns]:
    why = _unavailable()
    if why is not None:
        if REQUIRED:
            pytest.fail(f"AUTODP_REQUIRE_NETNS=1 but network namespaces are unavailable: {why}")
        pytest.skip(f"network namespaces unavailable: {why}")
    tag = os.getpid() % 250
    ns, host_if, site_if = f"autodp-ne-{os.getpid()}", f"adph{os.getpid()}"[:15], f"adps{os.getpid()}"[:15]
    host_ip, site_ip = f"10.200.{tag}.1", f"10.200.{tag}.2"
    steps = [
        ("ip", "netns", "add", ns),
        ("ip", "link", "add", host_if, "type", "veth", "peer", "name", site_if),
        ("ip", "link", "set", site_if, "netns", ns),
        ("ip", "addr", "add", f"{host_ip}/30", "dev", host_if),
        ("ip", "link", "set", host_if, "up"),
        ("ip", "netns", "exec", ns, "ip", "addr", "add", f"{site_ip}/30", "dev", site_if),
        ("ip", "netns", "exec", ns, "ip", "link", "set", site_if, "up"),
    ]
    try:
        for step in steps:
            done = _run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        links = _run("ip", "netns", "exec", ns, "ip", "-o", "link").stdout
        assert sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M)) == sorted(["lo", site_if]), links
        yield Netns(ns, host_ip, site_ip)
    finally:
        _run("ip", "netns", "del", ns)
        _run("ip", "link", "del", host_if)


SOCKADDR = re.compile(r"\{sa_family=(AF_\w+)([^{}]*)\}")
# A UNIX socket is not confined by a network namespace, so each path is checked too: the name-service cache
# (a passwd lookup for the home folder) is the only one a site may try.
ALLOWED_UNIX = {"/var/run/nscd/socket", "/run/nscd/socket"}


def attempted(trace: str) -> list[tuple[str, str | None, int | None]]:
    """(family, address or path, port) of every socket address in a connect/sendto/sendmsg of an strace log;
    an address the parser cannot read comes back as None (and then counts as elsewhere)."""
    out: list[tuple[str, str | None, int | None]] = []
    for line in trace.splitlines():
        if not re.search(r"\b(connect|sendto|sendmsg|sendmmsg)\(", line):
            continue
        for fam, body in SOCKADDR.findall(line):
            port = re.search(r"sin6?_port=htons\((\d+)\)", body)
            addr = re.search(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)"|sun_path=(@?"[^"]*")', body)
            where = next((g for g in addr.groups() if g), None) if addr else None
            if where is not None and fam == "AF_UNIX":
                where = where.replace('"', "")
            out.append((fam, where, int(port.group(1)) if port else None))
    return out


def test_site_with_llm_talks_only_to_its_coordinator(federation: Federation, netns: Netns, tmp_path: Path) -> None:
    server = start_server(federation.config.model_copy(update={
        "listen": f"{netns.host_ip}:0", "state_dir": tmp_path / "coord"}))
    try:
        site = tmp_path / "site"
        site.mkdir()
        data, _ = make_toy_dataset(6, seed=5)
        save_pairs(data, site / "train.jsonl")
        (site / "policy.yaml").write_text(yaml.safe_dump({"allowed_operators": ["rewrite_answer", "remove_markup"]}))
        certs = federation.certs
        (site / "site.yaml").write_text(yaml.safe_dump({
            "site_id": "hospital-a", "coordinator": f"{netns.host_ip}:{server.port}", "tls_server_name": "localhost",
            "tls": {"cert": str(certs / "site-hospital-a.crt"), "key": str(certs / "site-hospital-a.key"),
                    "ca": str(certs / "ca.crt")},
            "audit_key": str(certs / "site-hospital-a.audit.key"), "state_dir": str(site / "state"),
            "policy": str(site / "policy.yaml"), "data": {"path": str(site / "train.jsonl")},
            "embedder": None, "screening": None, "cache": {"dir": str(site / "cache")},
            "llm": {"backend": "local", "threads": 1, "max_batch": 6},
            "privacy": {"min_cohort": 5}, "poll_wait_ms": 500, "rpc_timeout_s": 5.0}))
        task = Task(task_id="t-no-egress", search_id="egress",
                    settings=EvalSettings(sample_rate_permille=1000, use_screening=False),
                    strategy=Strategy(calls=(OperatorCall.of("remove_markup"),
                                             OperatorCall.of("rewrite_answer", max_new_tokens=32, only_if_short=True,
                                                            short_chars=140))))
        server.store.enqueue(task, "hospital-a", 1, time.time())

        env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
        # a fresh model cache: the site converts the bundled GGUF model on first use, inside the namespace, as
        # on a new hospital machine
        env["AUTODP_CACHE"] = str(tmp_path / "autodp-cache")
        trace = tmp_path / "connect.trace"
        proc = subprocess.run(
            ["ip", "netns", "exec", netns.name, "strace", "-f", "--seccomp-bpf", "-qq", "-s", "0", "-o", str(trace),
             "-e", "trace=connect,sendto,sendmsg,sendmmsg",
             sys.executable, "-m", "protos.cli", "site", "run", "--config", str(site / "site.yaml"),
             "--max-tasks", "1"],
            capture_output=True, text=True, timeout=600, env=env, cwd=site)
        assert proc.returncode == 0, f"site exited {proc.returncode}: {proc.stderr[-3000:]}"
        result = server.store.get_result("t-no-egress")
        assert result is not None and result.status is TaskStatus.OK, result
        assert result.operators_run == 2
        assert "of 2 tried" in proc.stderr  # the LLM operator really ran on the 2 short answers (its log line)

        attempts = attempted(trace.read_text())
        inet = [a for a in attempts if a[0] in ("AF_INET", "AF_INET6")]
        assert inet, "no connection to the coordinator was traced: the trace is not working"
        elsewhere = sorted({a for a in inet if a[1:] != (netns.host_ip, server.port)})
        assert not elsewhere, f"connections attempted to other addresses: {elsewhere}"
        unix = sorted({str(a[1]) for a in attempts if a[0] == "AF_UNIX"} - ALLOWED_UNIX)
        assert not unix, f"UNIX sockets tried (a way out of the namespace): {unix}"
        others = sorted({a[0] for a in attempts} - {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"})
        assert not others, f"unexpected socket families: {others}"
    finally:
        server.stop(grace=0.5)
