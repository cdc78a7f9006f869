"""deploy/GUIDE.md, performed: its ```bash guide-test blocks run in order, in one bash shell, in an empty folder
on 127.0.0.1, with the real ``autodp`` command line. Then the audit logs the guide's commands produced are
checked again here, independently of the guide's own checks."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from protos.audit import cross_check, load_verify_key, verify

GUIDE = Path(__file__).resolve().parents[2] / "deploy" / "GUIDE.md"
MARK = "guide-test"
BLOCK = re.compile(r"^```bash[ \t]+([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def guide_blocks(text: str) -> list[str]:
    """The guide's shell blocks marked to be run by this test, in order."""
    return [body for info, body in BLOCK.findall(text) if MARK in info.split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_guide_has_marked_blocks() -> None:
    blocks = guide_blocks(GUIDE.read_text(encoding="utf-8"))
    joined = "\n".join(blocks)
    for step in ("autodp certs init", "autodp certs issue site", "autodp site run", "autodp coordinator search",
                 "autodp audit verify", "autodp audit show", "autodp audit cross-check"):
        assert step in joined, f"no marked guide block runs '{step}'"


@pytest.mark.slow
def test_guide_runs_on_localhost(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `autodp` is this interpreter's CLI, whether or not the console script is installed
    shim = bin_dir / "autodp"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m protos.cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    work = tmp_path / "rehearsal"
    work.mkdir()
    script = work / "guide.sh"
    script.write_text("set -euo pipefail\nset -x\n" + "\n".join(guide_blocks(GUIDE.read_text(encoding="utf-8"))),
                      encoding="utf-8")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "COORD_HOST": "localhost", "COORD_LISTEN": "127.0.0.1", "COORD_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # its own process group, so that whatever it left running can be stopped if it fails or hangs
    proc = subprocess.Popen(["bash", str(script)], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("the guide's commands did not finish in 240 s:\n" + out[-6000:])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    logs = "".join(f"\n--- {p.relative_to(work)}\n" + p.read_text(errors="replace")[-3000:]
                   for p in sorted(work.glob("*/*.log")))
    assert proc.returncode == 0, out[-8000:] + logs

    certs = work / "ca"
    coord_log = work / "coordinator" / "state" / "audit.log"
    assert verify(coord_log, load_verify_key(certs / "coordinator.audit.pub")).messages > 0
    for site in ("hospital-a", "hospital-b"):
        site_log = work / site / "state" / "audit.log"
        assert verify(site_log, load_verify_key(certs / f"site-{site}.audit.pub")).messages > 0
        assert cross_check(site_log, coord_log).ok
    assert (work / "coordinator" / "search-report.json").is_file()
    assert (work / "hospital-a" / "processed.jsonl").stat().st_size > 0
