"""A site killed (SIGKILL) right after a commit returns loses nothing: the debit was fsynced first."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from site_agent.privacy import PrivacyLedger, PrivacySettings

REPO = Path(__file__).resolve().parents[4]
SETTINGS = PrivacySettings(budget_scope="search", total_epsilon=3.0, mechanism="laplace", release_epsilon=1.0)

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from site_agent.privacy import PrivacyLedger, PrivacySettings

    settings = PrivacySettings(budget_scope="search", total_epsilon=3.0, mechanism="laplace", release_epsilon=1.0)
    ledger = PrivacyLedger(Path(sys.argv[1]), settings)
    ledger.reserve("t0", "s", 1.0)
    ledger.commit("t0", 1.0)
    print(ledger.release("t0", 0.42), flush=True)
    ledger.reserve("t1", "s", 1.0)
    ledger.commit("t1", 0.5)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
""")


def test_nothing_committed_is_lost_to_a_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    released = float(proc.stdout.strip())
    with PrivacyLedger(path, SETTINGS) as ledger:
        assert ledger.spent("s") == pytest.approx(1.5)
        assert ledger.release_of("t0") == released
        replay = ledger.reserve("t1", "s", 1.0)
        assert replay.ok and replay.replay and ledger.spent("s") == pytest.approx(1.5)
        assert ledger.release("t0", 0.1) == released
