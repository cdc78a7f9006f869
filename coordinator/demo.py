"""``autodp demo run``: a real multi-site search on localhost.

It provisions a fresh federation (CA, coordinator and site certificates, audit keys), gives each site its
own part of the PyCMeKG medical QA benchmark, starts the coordinator and the sites as separate processes
talking gRPC over mutual TLS on 127.0.0.1, waits for the search, stops everything cleanly, then verifies
every audit log and cross-checks each site's log against the coordinator's. Each process is started through
the public CLI, exactly as a hospital would run it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from protos.audit import cross_check, load_verify_key, verify
from protos.errors import AuditError
from protos.tls import init_ca, issue_coordinator, issue_site

app = typer.Typer(help="Run the end-to-end demo on localhost.", no_args_is_help=True)
console = Console(stderr=False)

DEMO_OPERATORS = ["remove_markup", "normalize_text", "length_filter", "exact_dedup", "redact_identifiers",
                  "special_char_filter", "ngram_repetition_filter", "minhash_dedup", "qa_mismatch_filter",
                  "screening_threshold", "diversity_select", "length_balanced_topk"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "protos.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def provision(workdir: Path, site_ids: list[str], rounds: int, k: int, samples: int, port: int,
              sample_rate_permille: int = 200, proposer: str = "random", baselines: list[str] | None = None,
              patience: int = 1) -> Path:
    """Create certificates, data, policy and configs; return the coordinator's config path."""
    certs = workdir / "certs"
    init_ca(certs)
    issue_coordinator(certs)
    # Every site's private data: its part of the PyCMeKG medical QA benchmark (built here for the demo; a real
    # hospital points its config at its own files).
    subprocess.run(_cli("data", "build-benchmark", "--out", str(workdir / "benchmark"), "--sites",
                        str(len(site_ids)), "--pairs", str(samples * len(site_ids)), "--eval-per-site", "100"),
                   check=True, stdout=subprocess.DEVNULL)
    for site in site_ids:
        issue_site(certs, site)
        (workdir / site).mkdir(parents=True, exist_ok=True)
        policy = _write_yaml(workdir / site / "policy.yaml", {
            "allowed_operators": DEMO_OPERATORS, "max_strategy_length": 4,
            "allowed_evaluators": ["quality_proxy"]})
        _write_yaml(workdir / site / "site.yaml", {
            "site_id": site, "coordinator": f"127.0.0.1:{port}", "tls_server_name": "localhost",
            "tls": {"cert": f"../certs/site-{site}.crt", "key": f"../certs/site-{site}.key",
                    "ca": "../certs/ca.crt"},
            "audit_key": f"../certs/site-{site}.audit.key", "state_dir": "state", "policy": policy.name,
            "data": {"path": f"../benchmark/{site}/train.jsonl"},
            "eval_data": {"path": f"../benchmark/{site}/eval.jsonl"},
            "privacy": {"min_cohort": 20}, "poll_wait_ms": 1000, "backoff_max_s": 2.0})
    return _write_yaml(workdir / "coordinator.yaml", {
        "listen": f"127.0.0.1:{port}", "state_dir": "coordinator-state",
        "tls": {"cert": "certs/coordinator.crt", "key": "certs/coordinator.key", "ca": "certs/ca.crt"},
        "audit_key": "certs/coordinator.audit.key", "sites": site_ids, "poll_wait_ms": 1000,
        "lease_s": 60,
        "search": {"search_id": "demo-search", "proposer": proposer, "rounds": rounds, "strategies_per_round": k,
                   "min_sites": len(site_ids), "wait_for_sites_s": 900, "round_deadline_s": 300,
                   "report": "search-report.json", "baselines": list(baselines or []), "patience": patience,
                   "settings": {"sample_rate_permille": sample_rate_permille},
                   # the bundled SmolLM2 on the CPU; one torch thread answers faster beside busy site processes
                   **({"agent": {"backend": "local", "threads": 1, "max_reasks": 1}} if proposer == "llm" else {})}})


def start_coordinator(config: Path, logs: Path, command: str = "serve") -> subprocess.Popen[bytes]:
    """``serve`` keeps serving after the search; ``search`` exits when it and its reports are done."""
    extra = ["--no-live"] if command == "search" else []
    with (logs / "coordinator.log").open("ab") as out:
        return subprocess.Popen(_cli("coordinator", command, "--config", str(config), *extra),
                                stdout=out, stderr=subprocess.STDOUT)


def start_site(workdir: Path, site: str, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"{site}.log").open("ab") as out:
        return subprocess.Popen(_cli("site", "run", "--config", str(workdir / site / "site.yaml")),
                                stdout=out, stderr=subprocess.STDOUT, cwd=workdir / site)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(5)


DEMO_MARKER = ".autodp-demo"


class DemoFolderRefused(ValueError):
    """The demo's folder holds something the demo did not make: it is not wiped."""


def is_demo_folder(folder: Path) -> bool:
    """Whether the demo may wipe ``folder``: empty, or made by a demo run (its marker, or for runs from before the
    marker, the layout one leaves: certs/ca.crt, logs/ and search-report.json or a coordinator config)."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()) or (folder / DEMO_MARKER).is_file():
        return True
    return ((folder / "certs" / "ca.crt").is_file() and (folder / "logs").is_dir()
            and ((folder / "search-report.json").is_file() or (folder / "coordinator.yaml").is_file()))


def run_demo(workdir: Path, sites: int, rounds: int, k: int, samples: int, timeout_s: float,
             proposer: str = "llm", baselines: list[str] | None = None) -> dict[str, Any]:
    """Run the whole demo; return a summary (the e2e test reads it)."""
    if workdir.exists():
        if not is_demo_folder(workdir):
            raise DemoFolderRefused(f"{workdir} is not empty and not a demo folder: the demo wipes its folder first, "
                                    "so give it a new or empty one (--workdir)")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / DEMO_MARKER).write_text("a folder autodp demo run made; the next run wipes it\n", encoding="utf-8")
    site_ids = [f"hospital-{chr(ord('a') + i)}" for i in range(sites)]
    port = free_port()
    coord_cfg = provision(workdir, site_ids, rounds, k, samples, port, proposer=proposer, baselines=baselines)
    console.print(f"[bold]1.[/bold] Provisioned a federation CA and certificates for the coordinator and "
                  f"{', '.join(site_ids)} (mutual TLS, Ed25519 audit keys) in {workdir / 'certs'}")
    console.print(f"[bold]2.[/bold] Built the PyCMeKG medical QA benchmark: each site holds {samples} private "
                  "training pairs (non-IID departments, its own noise mix) and a clean held-out set; they never "
                  "leave the site's folder")
    report = workdir / "search-report.json"
    logs = workdir / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    agent = ("the bundled SmolLM2-135M meta-agent on this CPU (it picks each round's strategies among candidates "
             "bred from the best so far)" if proposer == "llm" else f"proposer '{proposer}'")
    console.print(f"[bold]3.[/bold] Starting the coordinator and {len(site_ids)} site agents as separate "
                  f"processes on 127.0.0.1:{port}: up to {rounds} rounds x {k} strategies by {agent}"
                  + (f", then {', '.join(baselines)} on the same budget" if baselines else "")
                  + f"; process logs in {logs}")
    deadline = time.monotonic() + timeout_s
    coordinator = start_coordinator(coord_cfg, logs, command="search")
    try:
        procs.update((site, start_site(workdir, site, logs)) for site in site_ids)
        with console.status("sites preparing (embeddings, screening classifier), then the search runs ...") as status:
            while coordinator.poll() is None:
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    why = f"{', '.join(dead)} exited early" if dead else "timed out"
                    raise RuntimeError(f"demo failed: {why}; see {logs}")
                status.update(f"search running ({time.monotonic() - deadline + timeout_s:.0f} s): "
                              + _round_line(report))
                time.sleep(0.5)
        if coordinator.returncode != 0 or not report.exists():
            raise RuntimeError(f"demo failed: the coordinator exited with code {coordinator.returncode}; see "
                               f"{logs / 'coordinator.log'}")
    finally:
        # sites first, so that nothing is in flight when the coordinator stops and the logs cross-match
        codes = {n: stop_process(p) for n, p in procs.items()}
        codes["coordinator"] = stop_process(coordinator)
    console.print("[bold]4.[/bold] Search finished; stopped all processes; checking the audit logs\n")
    summary = {"workdir": str(workdir), "sites": site_ids, "exit_codes": codes,
               "report": json.loads(report.read_text()), "audit": check_audit_logs(workdir, site_ids)}
    summary["process"] = _process_recipe(workdir, site_ids[0], summary["report"].get("recipe"), logs)
    return summary


def _round_line(report: Path) -> str:
    try:
        rep = json.loads(report.read_text())
        rounds = rep.get("rounds") or []
        best = rounds[-1]["best_so_far"] if rounds else None
        return f"round {len(rounds)} done, best so far {best:+.4f}" if best is not None else "round 1 ..."
    except (OSError, ValueError, KeyError, TypeError):
        return "round 1 ..."


def _process_recipe(workdir: Path, site: str, recipe: str | None, logs: Path) -> dict[str, Any]:
    """What a hospital does next: re-run the winning recipe on the site's full data, locally."""
    if not recipe:
        return {"ok": False, "why": "no recipe (nothing scored)"}
    out = workdir / site / "processed.jsonl"
    with (logs / f"{site}-process.log").open("ab") as log_file:
        code = subprocess.run(_cli("site", "process", "--config", "site.yaml", "--recipe", str(workdir / recipe),
                                   "--output", str(out)), cwd=workdir / site, stdout=log_file,
                              stderr=subprocess.STDOUT, timeout=900).returncode
    rows = sum(1 for _ in out.open(encoding="utf-8")) if code == 0 and out.exists() else 0
    return {"ok": code == 0, "site": site, "output": str(out), "rows": rows, "exit_code": code}


def check_audit_logs(workdir: Path, site_ids: list[str]) -> dict[str, Any]:
    coord_log = workdir / "coordinator-state" / "audit.log"
    out: dict[str, Any] = {"verify": {}, "cross_check": {}}
    for name, path, key in [("coordinator", coord_log, workdir / "certs" / "coordinator.audit.pub")] + [
            (s, workdir / s / "state" / "audit.log", workdir / "certs" / f"site-{s}.audit.pub") for s in site_ids]:
        try:
            rep = verify(path, load_verify_key(key))
            out["verify"][name] = {"ok": True, "entries": rep.entries}
        except AuditError as e:
            out["verify"][name] = {"ok": False, "error": str(e)}
    for s in site_ids:
        try:
            cc = cross_check(workdir / s / "state" / "audit.log", coord_log)
            out["cross_check"][s] = {"ok": cc.ok, "matched": cc.site_to_coordinator + cc.coordinator_to_site,
                                     "unmatched": len(cc.unmatched), "undelivered": cc.undelivered}
        except AuditError as e:
            out["cross_check"][s] = {"ok": False, "error": str(e)}
    return out


def print_summary(summary: dict[str, Any]) -> None:
    rep = summary["report"]
    table = Table(title=f"Search {rep['search_id']}: {rep['stopped_because']}")
    table.add_column("round")
    table.add_column("strategy (operators; parameters in the JSON report)", overflow="fold")
    table.add_column("score (all sites)", justify="right")
    for site in summary["sites"]:
        table.add_column(site, justify="right")
    for s in rep["strategies"]:
        agg = "-" if s["aggregate_score"] is None else f"{s['aggregate_score']:+.4f}"
        cells = []
        for site in summary["sites"]:
            r = s["sites"].get(site)
            cells.append("-" if r is None else (f"{r['score']:+.4f}" if r["score"] is not None
                                               else str(r["status"] or r["state"])))
        ops = " -> ".join(c["op"] for c in s["calls"]) or "(no processing)"
        table.add_row(str(s["round"]), ops, agg, *cells)
    console.print(table)
    if rep["best"]:
        console.print(f"[bold]Best strategy overall[/bold] ({rep['best']['key']}, score "
                      f"{rep['best']['aggregate_score']:+.4f} vs. no processing, mean over sites weighted by size):")
        for call in rep["best"]["calls"]:
            params = ", ".join(f"{k}={v}" for k, v in call["params"].items())
            console.print(f"  {call['op']}({params})")
    for site, best in rep["best_per_site"].items():
        console.print(f"  best at {site}: " + ("none" if best is None else
                                                f"strategy {best['key']} ({best['score']:+.4f})"))
    for name, b in (rep.get("baselines") or {}).items():
        score = "-" if b["best_score"] is None else f"{b['best_score']:+.4f}"
        console.print(f"  baseline {name}, same budget ({b['evaluations']} strategies): best {score}")
    for site, t in (rep.get("per_site") or {}).items():
        console.print(f"  {site}: evaluation {t['eval_ms'] / 1000:.1f} s, "
                      f"processing {t['processing_ms'] / 1000:.1f} s; "
                      f"saved ~{t['est_saved_by_sampling_ms'] / 1000:.1f} s by sampling + screening (estimate) and "
                      f"{t['cache_saved_ms'] / 1000:.1f} s by the cache (hit rate {t['cache_hit_rate']:.0%}); "
                      f"epsilon spent {t['epsilon_spent']:g}")
    proc = summary.get("process") or {}
    if rep.get("recipe"):
        console.print(f"\n[bold]Winning recipe[/bold]: {rep['recipe']}")
        if proc.get("ok"):
            console.print(f"  re-run locally at {proc['site']} on its full data with `autodp site process`: "
                          f"{proc['rows']} rows written to {proc['output']}")
        else:
            console.print(f"  re-running it with `autodp site process` FAILED: {proc}")
    console.print("\n[bold]Audit logs[/bold] (signed, hash-chained, one per party):")
    for name, v in summary["audit"]["verify"].items():
        console.print(f"  {name}: " + (f"verified, {v['entries']} entries" if v["ok"] else f"FAILED: {v['error']}"))
    for site, c in summary["audit"]["cross_check"].items():
        console.print(f"  {site} vs coordinator: " + (
            f"cross-check ok, {c['matched']} messages matched 1:1" if c.get("ok") else f"MISMATCH {c}"))
    wd = summary["workdir"]
    console.print(f"\nEverything is under {wd}/ (search report: {wd}/search-report.json and, with plots, "
                  f"{wd}/search-report.html).")
    console.print(f"See what left a site: autodp audit show {wd}/{summary['sites'][0]}/state/audit.log")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command("run")
def run(workdir: Path = typer.Option(Path("demo-run"), help="folder for the demo: new, empty or an earlier "
                                             "demo's (wiped first)"),
        sites: int = typer.Option(2, min=1, max=8), rounds: int = typer.Option(3, min=1, max=20),
        k: int = typer.Option(4, min=1, max=16, help="strategies per round"),
        samples: int = typer.Option(1000, min=100, max=50_000, help="training pairs per site"),
        timeout: float = typer.Option(1800.0, help="give up after this many seconds"),
        proposer: str = typer.Option("llm", help="llm (the bundled SmolLM2 meta-agent, offline on the CPU) | tpe | "
                                     "evolutionary | random"),
        baseline: list[str] = typer.Option(["random"], "--baseline",
                                           help="run this proposer too, on the same budget (repeatable)")) -> None:
    """Provision a federation on localhost and run a real multi-site strategy search."""
    known = ("llm", "random", "evolutionary", "tpe")
    for name in [proposer, *baseline]:
        if name not in known or (name == "llm" and name != proposer):
            typer.echo(f"error: unknown demo proposer or baseline '{name}': use {', '.join(known)} "
                       "(baselines: all but llm)", err=True)
            raise typer.Exit(2)
    # a SIGTERM ends the demo as Ctrl-C does: the site and coordinator processes are stopped, not left behind
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_demo(workdir.resolve(), sites, rounds, k, samples, timeout, proposer,
                           [b for b in baseline if b != proposer])
    except DemoFolderRefused as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(4) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_summary(summary)
    (workdir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    ok = all(v["ok"] for v in summary["audit"]["verify"].values()) and all(
        c.get("ok") for c in summary["audit"]["cross_check"].values()) and summary["process"].get("ok", False)
    raise typer.Exit(0 if ok else 1)
