"""A writer that dies at the worst moment never leaves a visible partial entry, and the cache keeps working."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from site_agent.cache.keys import CacheBase, StepKey
from site_agent.cache.store import CacheError, PrefixCache
from site_agent.operators.base import StepStats

REPO = Path(__file__).resolve().parents[4]
BASE = CacheBase(dataset="f" * 64, seed=1)
A, B = StepKey.of("op_a", "1", {}), StepKey.of("op_b", "1", {})
BATCH = {"instruction": [f"q{i}" for i in range(200)], "answer": [f"a{i}" for i in range(200)]}
STATS = [StepStats(op="op_a", kept=200, dropped=0, changed=0, seconds=0.1)]

# Runs in a child: put one entry, dying by SIGKILL inside the named function of the store module.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from site_agent.cache import store
    from site_agent.cache.keys import CacheBase, StepKey
    from site_agent.operators.base import StepStats

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    cache = store.PrefixCache(Path(sys.argv[1]), 10**7)
    if sys.argv[2] == "replace":
        store.os.replace = die       # temp file written and fsync'ed, not yet renamed
    else:
        store._fsync_dir = die       # renamed into place, index row not yet committed
    batch = {"instruction": [f"q{i}" for i in range(200)], "answer": [f"a{i}" for i in range(200)]}
    cache.put(CacheBase(dataset="f" * 64, seed=1), [StepKey.of("op_a", "1", {})], batch,
              [StepStats(op="op_a", kept=200, dropped=0, changed=0, seconds=0.1)])
    print("survived")
""")


def _crash_child(root: Path, where: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), where], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "survived" not in proc.stdout


def _entry_files(root: Path) -> list[str]:
    return sorted(f.name for f in (root / "entries").iterdir())


@pytest.mark.parametrize("where", ["replace", "fsync_dir"])
def test_a_writer_killed_mid_put_leaves_no_visible_entry(tmp_path: Path, where: str) -> None:
    with PrefixCache(tmp_path, 10**7) as cache:  # an earlier, complete entry must survive the crash
        cache.put(BASE, [B], BATCH, [StepStats(op="op_b", kept=200, dropped=0, changed=0, seconds=0.1)])
    _crash_child(tmp_path, where)
    left = _entry_files(tmp_path)
    if where == "replace":
        assert sum(n.startswith(".tmp-") for n in left) == 1  # the fsync'ed temp file, never renamed
    else:
        assert len([n for n in left if n.endswith(".batch")]) == 2  # renamed, but never indexed
    with PrefixCache(tmp_path, 10**7) as cache:
        assert cache.lookup_longest(BASE, [A]) == (0, None)
        assert cache.lookup_longest(BASE, [B]) == (1, BATCH)
        assert cache.stats().entries == 1
        assert len([n for n in _entry_files(tmp_path) if n.endswith(".batch")]) == 1  # orphan swept
        assert cache.put(BASE, [A], BATCH, STATS) and cache.lookup_longest(BASE, [A]) == (1, BATCH)
    old = time.time() - 2 * 3600
    for f in (tmp_path / "entries").glob(".tmp-*"):
        os.utime(f, (old, old))
    with PrefixCache(tmp_path, 10**7):
        assert not any(n.startswith(".tmp-") for n in _entry_files(tmp_path))  # stale temp files swept


def test_a_failure_between_write_and_rename_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise OSError("injected")

    with PrefixCache(tmp_path, 10**7) as cache:
        with monkeypatch.context() as m:
            m.setattr(os, "replace", boom)  # the very function the store renames with
            with pytest.raises(CacheError, match="write failed: OSError"):
                cache.put(BASE, [A], BATCH, STATS)
        assert _entry_files(tmp_path) == []  # the temp file is removed too
        assert cache.lookup_longest(BASE, [A]) == (0, None) and cache.stats().entries == 0
        assert cache.put(BASE, [A], BATCH, STATS) and cache.lookup_longest(BASE, [A]) == (1, BATCH)
