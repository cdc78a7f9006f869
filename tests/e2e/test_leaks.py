"""Leak checks (issue #7, item 8): canaries planted in two sites' benchmark data never leave the sites.

Every training and held-out row of both sites gets unique canaries: a ``CANARY-<hex>`` token in the
instruction and another in the answer, a fake patient record number, a made-up name and a mobile number.
A real search then runs (coordinator and sites as subprocesses, mTLS on 127.0.0.1), with a test-only
operator installed at both sites through the real plugin route (an ``autodp.operators`` entry point):
``canary_tripwire`` raises on the first canary row with the row's text in its message (as a plain
ValueError, or as a typed DataError), so some tasks fail on purpose. Then every canary is searched for:

- in every file outside the sites' own data and cache folders: the coordinator's state (task store,
  its WAL, audit log), its log, the JSON/HTML reports and the recipe, each site's state folder (audit log,
  results outbox, privacy ledger) and each site's process log;
- in the decoded message bytes of every audit entry on both sides (the audit log keeps each message's
  canonical bytes, base64-encoded, so a plain file scan would not see them): what went over the wire;
- in the failed tasks' results (the exception's text must not come back) and in what a site prints when
  its data file does not parse.

The raw rows also must not appear: 200 random 12-character windows of the sites' Chinese text are searched
for on the coordinator's side. Size: 2 sites x 100 training rows (+ 100 held-out), 2 rounds x 4 strategies,
quality-proxy evaluator, no sentence embedder (none of the allowed operators needs one).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coordinator.demo import free_port, provision, start_coordinator, start_site, stop_process
from protos.audit import read_log
from tests.e2e.test_coordinator_crash import wait_for

SITES = ["hospital-a", "hospital-b"]
POLICY_OPS = ["canary_tripwire", "canary_tripwire_typed", "redact_identifiers", "length_filter", "exact_dedup"]

PLUGIN = '''
from protos.views import Team
from site_agent.errors import DataError
from site_agent.operators.base import Batch, Operator, OperatorParams


class NoParams(OperatorParams):
    pass


def first_canary_row(batch: Batch) -> str | None:
    for instruction, answer in zip(batch["instruction"], batch["answer"]):
        if "CANARY-" in instruction + answer:
            return f"{instruction} => {answer}"
    return None


class CanaryTripwire(Operator):
    """Test only: fails on the first canary row, quoting it, the worst an operator could do."""

    name = "canary_tripwire"
    team = Team.CLEANING
    Params = NoParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        row = first_canary_row(batch)
        if row is not None:
            raise ValueError(f"bad row: {row}")
        return batch, [True] * len(batch["instruction"])


class CanaryTripwireTyped(CanaryTripwire):
    """The same, with one of the site's own error types (which the operator wrapper passes through)."""

    name = "canary_tripwire_typed"

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        row = first_canary_row(batch)
        if row is not None:
            raise DataError(f"bad row: {row}")
        return batch, [True] * len(batch["instruction"])
'''


def install_plugin(folder: Path) -> Path:
    """A one-module distribution declaring the tripwire under the ``autodp.operators`` entry point."""
    folder.mkdir()
    (folder / "autodp_canary_tripwire.py").write_text(PLUGIN, encoding="utf-8")
    dist = folder / "autodp_canary_tripwire-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autodp-canary-tripwire\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[autodp.operators]\ncanary_tripwire = autodp_canary_tripwire:CanaryTripwire\n"
        "canary_tripwire_typed = autodp_canary_tripwire:CanaryTripwireTyped\n")
    return folder


class Canaries:
    """Unique made-up identifiers, planted in rows and searched for in files."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.tokens: list[str] = []

    def _new(self, token: str) -> str:
        self.tokens.append(token)
        return token

    def row(self, instruction: str, answer: str) -> tuple[str, str]:
        r = self.rng
        hexa = self._new(f"CANARY-{r.getrandbits(64):016x}")
        hexb = self._new(f"CANARY-{r.getrandbits(64):016x}")
        mrn = self._new(f"MRN-Q{r.randrange(10**9):09d}")
        name = self._new("".join(r.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(2)) + "".join(
            r.choice("aeiouxyz") for _ in range(6)) + " Quillfeather")
        phone = self._new(f"139{r.randrange(10**8):08d}")
        return (f"{instruction}（患者{name}，病历号{mrn}，电话{phone}）{hexa}", f"{answer} {hexb}")

    def pattern(self) -> re.Pattern[bytes]:
        # the fixed prefixes catch any canary, even one cut short; the full list catches names and phones
        parts = [b"CANARY-", b"MRN-Q", b"Quillfeather"] + [re.escape(t.encode()) for t in self.tokens]
        return re.compile(b"|".join(parts), re.IGNORECASE)


def plant(path: Path, canaries: Canaries) -> list[str]:
    """Rewrite a benchmark file with canaries in every row; return its original texts."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for row in rows:
        texts += [row["instruction"], row["answer"]]
        row["instruction"], row["answer"] = canaries.row(row["instruction"], row["answer"])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return texts


def text_windows(texts: list[str], n: int, seed: int = 7) -> list[bytes]:
    """``n`` random 12-character windows of mostly Chinese text (not boilerplate shared with any report)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        t = rng.choice(texts)
        if len(t) < 12:
            continue
        start = rng.randrange(len(t) - 11)
        w = t[start:start + 12]
        if sum("\u4e00" <= c <= "\u9fff" for c in w) >= 8:
            out.append(w.encode("utf-8"))
    return out


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_no_canary_leaves_a_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wd = tmp_path / "fed"
    wd.mkdir()
    cfg = provision(wd, SITES, rounds=2, k=4, samples=100, port=free_port(), sample_rate_permille=1000,
                    patience=0)
    canaries = Canaries("leaks")
    originals: list[str] = []
    for site in SITES:
        for name in ("train.jsonl", "eval.jsonl"):
            originals += plant(wd / "benchmark" / site / name, canaries)
        policy = yaml.safe_load((wd / site / "policy.yaml").read_text())
        (wd / site / "policy.yaml").write_text(yaml.safe_dump({**policy, "allowed_operators": POLICY_OPS}))
        # no sentence embedder: the policy's operators do not need one, and it would triple the start-up time
        site_cfg = yaml.safe_load((wd / site / "site.yaml").read_text())
        (wd / site / "site.yaml").write_text(yaml.safe_dump({**site_cfg, "embedder": None}))
    pattern = canaries.pattern()
    plugin = install_plugin(tmp_path / "plugin")
    logs = wd / "logs"
    logs.mkdir()

    coordinator = start_coordinator(cfg, logs, command="search")
    monkeypatch.setenv("PYTHONPATH", str(plugin))  # the sites only: the coordinator has started already
    sites = {s: start_site(wd, s, logs) for s in SITES}
    try:
        wait_for(lambda: coordinator.poll() is not None, 300, "the search to finish")
        assert coordinator.returncode == 0, (logs / "coordinator.log").read_text()[-3000:]
    finally:
        codes = {s: stop_process(p) for s, p in sites.items()}
        stop_process(coordinator)
    assert set(codes.values()) == {0}, codes

    # the search ran, and both tripwires fired at both sites
    report = json.loads((wd / "search-report.json").read_text())
    statuses: dict[str, set[str]] = {s: set() for s in SITES}
    for strategy in report["strategies"]:
        ops = [c["op"] for c in strategy["calls"]]
        first = next((op for op in ops if op.startswith("canary_tripwire")), "plain")
        for site, r in strategy["sites"].items():
            statuses[site].add(f"{first}:{r['status']}")
    for site in SITES:
        assert {"canary_tripwire:failed_internal", "canary_tripwire_typed:failed_internal",
                "plain:ok"} <= statuses[site], statuses
        # the site's own log names the error's type, nothing more
        site_log = (logs / f"{site}.log").read_text()
        assert re.search(r"task t-[0-9a-f]+ failed: OperatorError\n", site_log), site_log[-2000:]
        assert re.search(r"task t-[0-9a-f]+ failed: DataError\n", site_log), site_log[-2000:]

    # the canaries are really in the sites' data (the scanner sees them there) ...
    site_private = [wd / "benchmark"] + [wd / s / d for s in SITES for d in ("cache", "screening")]
    for site in SITES:
        assert pattern.search((wd / "benchmark" / site / "train.jsonl").read_bytes())
    # ... and nowhere else: not in any other file, whatever its format
    scanned = [p for p in files_under(wd) if not any(p.is_relative_to(d) for d in site_private)]
    leaked = [str(p.relative_to(wd)) for p in scanned if pattern.search(p.read_bytes())]
    assert leaked == [], leaked
    names = {str(p.relative_to(wd)) for p in scanned}
    for must in ("coordinator-state/audit.log", "coordinator-state/store.db", "logs/coordinator.log",
                 "search-report.json", "search-report.html", "search-report.recipe.yaml",
                 "hospital-a/state/audit.log", "hospital-a/state/results.db", "hospital-a/state/privacy.db",
                 "logs/hospital-a.log", "logs/hospital-b.log"):
        assert must in names, sorted(names)

    # what went over the wire: the decoded bytes of every message, in both directions, on both sides
    wire = 0
    for log_path in [wd / "coordinator-state" / "audit.log"] + [wd / s / "state" / "audit.log" for s in SITES]:
        reading = read_log(log_path)
        assert reading.error is None, reading.error
        for e in reading.entries:
            if e.kind == "message":
                wire += 1
                assert not pattern.search(e.payload), (log_path, e.index, e.msg_type)
    assert wire > 50

    # no raw text of the sites' rows on the coordinator's side either
    site_side = [wd / s for s in SITES] + [logs / f"{s}.log" for s in SITES]
    blobs = [p.read_bytes() for p in scanned if not any(p.is_relative_to(d) for d in site_side)]
    found = [w.decode() for w in text_windows(originals, 200) if any(w in b for b in blobs)]
    assert found == [], found

    # a data file that does not parse: the site refuses to start, and what it prints quotes no row
    data = wd / "benchmark" / "hospital-a" / "train.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[40] = lines[40][:len(lines[40]) // 2] + "\n"  # a row cut in half, canaries on both sides of the cut
    data.write_text("".join(lines), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "protos.cli", "site", "run", "--config", "site.yaml"],
                         cwd=wd / "hospital-a", capture_output=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 2 and b"could not be parsed" in out, out.decode(errors="replace")[-2000:]
    assert not pattern.search(out), out.decode(errors="replace")[-2000:]
