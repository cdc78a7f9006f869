"""Scaling benchmark: how DPS, screening, the prefix cache and one evaluation grow with the dataset, and
how a search's round time grows with the number of site processes.

1. **Dataset size** (1k and 10k rows; 100k in full mode). Rows: the toy QA set (at most 10,512 distinct
   rows; beyond that it is repeated with a copy number appended to each instruction, so a copy is no
   exact duplicate of its original), 30% noisy. Timed, each the median of ``--repeats`` runs after a warm-up:

   - ``dps``: ``dps_sample`` at 200 permille on the row embeddings and the true noisy mask, as the site
     does: exact lazy greedy for a stratum (clean or noisy rows) of up to ``PARTITION_MIN_ROWS`` (16,384)
     rows, partitioned greedy beyond (exact greedy inside k-means blocks of ~``PARTITION_BLOCK_ROWS`` rows;
     see ``site_agent.sampling.dps``); the method used is recorded per size;
   - ``screening``: the screening classifier's ``noisy_proba`` on every row: hand-crafted features
     (near-duplicate detection included), embeddings from a warm embedding cache, the classifier;
   - ``cache put`` / ``cache lookup``: the prefix cache storing the rows after one step and finding them
     again (fsync on, as in production);
   - ``evaluation``: one quality-proxy evaluation (``exact_dedup`` output against the raw rows) by a fresh
     evaluator, which has checked none of the rows before (a search's later tasks look most rows up).

   Embeddings: the site's embedder (use-m3) costs ~25 ms per row on a 2-core CPU, 40 min for 100k rows,
   and is paid once per dataset (cached by fingerprint). So DPS and screening run on a seeded hashing
   embedder (character trigrams into 256 dimensions, L2-normalised) that is cheap to compute; use-m3's
   own per-row cost is measured on ``--m3-rows`` rows and its cost at each size extrapolated linearly
   (marked "estimate").
2. **Number of sites** (1 and 3 site processes; 8 in full mode) on 127.0.0.1: ``autodp coordinator
   search`` and ``autodp site run`` as separate processes (``coordinator.demo``: certificates, benchmark
   rows, mTLS, quality proxy, random proposer), the mode's ``site_rows`` rows per site (``--site-rows``
   overrides it). Recorded: wall time from
   start to the first finished round (sites preparing: model load, embeddings, screener) and the wall
   time of every later round (from when the report shows one round to when it shows the next).

    .venv/bin/python bench/bench_scaling.py --mode quick   # make bench-quick; a few minutes on 2 cores
    .venv/bin/python bench/bench_scaling.py --mode full    # make bench-scaling; see MODES for its run time

Writes ``scaling_<mode>.json``, ``scaling_<mode>.md`` and ``scaling_<mode>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_search beside this file

from bench_common import RunInfo, provenance  # noqa: E402

from protos.views import EvalSettings, OperatorCall, Strategy  # noqa: E402
from site_agent.operators.base import Batch  # noqa: E402

__all__ = ["MODES", "HashEmbedder", "dps_method", "growth_exponent", "main", "median_time", "scaled_rows",
           "time_sizes"]


@dataclass(frozen=True)
class Mode:
    sizes: tuple[int, ...]
    repeats: int
    site_counts: tuple[int, ...]
    site_rows: int
    rounds: int
    k: int
    run_time: str


MODES = {
    "quick": Mode(sizes=(1000, 10_000), repeats=3, site_counts=(1, 3), site_rows=200, rounds=3, k=4,
                  run_time="3-5 min on the shared 2-core development box (172 s at load average ~3, 286 s "
                           "at 3.5-7)"),
    "full": Mode(sizes=(1000, 10_000, 100_000), repeats=3, site_counts=(1, 3, 8), site_rows=500, rounds=4, k=6,
                 run_time="about 24 min (1459 s: sizes 741 s, sites 700 s) on the shared 2-core development box, load "
                          "average 3-18 from other jobs meanwhile"),
}
class HashEmbedder:
    """Character trigrams hashed (CRC-32) into ``dim`` buckets, L2-normalised: a cheap, deterministic
    stand-in with the Embedder interface, so DPS and screening are timed without the embedding model."""

    name = "hash-trigram"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            raw = text.encode("utf-8")
            grams = [raw[j:j + 3] for j in range(len(raw) - 2)] or ([raw] if raw else [])
            np.add.at(out[i], [zlib.crc32(g) % self.dim for g in grams], 1.0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        unit: np.ndarray = out / norms
        return unit


def scaled_rows(n: int, seed: int = 0, noise_rate: float = 0.3) -> tuple[Batch, np.ndarray]:
    """``n`` distinct toy rows and their noisy flags; past the toy set's size, copies are numbered."""
    from site_agent.data.toy import TOY_MAX_ROWS, make_toy_dataset

    base, labels = make_toy_dataset(min(n, TOY_MAX_ROWS), seed=seed, noise_rate=noise_rate)
    batch: Batch = {"instruction": [], "answer": []}
    flags: list[bool] = []
    copy = 0
    while len(flags) < n:
        take = min(n - len(flags), len(labels))
        suffix = f" (#{copy})" if copy else ""
        batch["instruction"] += [q + suffix for q in base["instruction"][:take]]
        batch["answer"] += base["answer"][:take]
        flags += [lab != "clean" for lab in labels[:take]]
        copy += 1
    return batch, np.asarray(flags, dtype=bool)


def dps_method(noisy: np.ndarray) -> str:
    """The facility-location method ``dps_sample`` picks (``method="auto"``) for each stratum, clean first."""
    from site_agent.sampling.dps import PARTITION_MIN_ROWS

    counts = (int((~noisy).sum()), int(noisy.sum()))
    return " + ".join(("partitioned" if c > PARTITION_MIN_ROWS else "exact") for c in counts if c)


def median_time(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_sizes(sizes: Sequence[int], repeats: int, workdir: Path, say: Callable[[str], None] = lambda _: None,
               train_rows: int = 1000) -> list[dict[str, Any]]:
    """Seconds of DPS, screening (a screener trained on ``train_rows`` other rows), cache put/lookup and one
    evaluation at each size."""
    from site_agent.screening.classifier import train_screener

    embedder = HashEmbedder()
    train, train_flags = scaled_rows(train_rows, seed=1)
    screener, _ = train_screener(train, train_flags.tolist(), embedder)
    out = []
    for n in sizes:
        out.append(_one_size(n, repeats, workdir, embedder, screener))
        say(f"{n} rows: " + ", ".join(f"{k} {v:.3f}" for k, v in out[-1].items() if k.endswith("_s")))
    return out


def _one_size(n: int, repeats: int, workdir: Path, embedder: HashEmbedder, screener: Any) -> dict[str, Any]:
    from site_agent.cache.keys import CacheBase, StepKey, dataset_fingerprint
    from site_agent.cache.store import PrefixCache
    from site_agent.embeddings.cache import EmbeddingCache, text_for_embedding
    from site_agent.evaluation.base import create_evaluator
    from site_agent.operators.base import StepStats
    from site_agent.operators.context import RunContext
    from site_agent.pipeline import execute
    from site_agent.sampling.dps import dps_sample

    settings = EvalSettings(sample_rate_permille=1000, use_screening=False, use_cache=False)
    batch, flags = scaled_rows(n)
    emb_cache = EmbeddingCache(workdir / f"emb-{n}")
    t0 = time.perf_counter()
    emb = emb_cache.get_or_compute(embedder, text_for_embedding(batch))
    embed_s = time.perf_counter() - t0
    screener.cache = emb_cache
    dps_s = median_time(lambda: dps_sample(emb, flags, 0.2, seed=0), repeats)
    screen_s = median_time(lambda: screener.noisy_proba(batch), repeats)
    processed = execute(batch, Strategy(calls=(OperatorCall.of("exact_dedup"),)), settings,
                        context=RunContext()).batch
    # a fresh evaluator each time: the rows' first scoring, not the look-ups of the rows an evaluator checked before
    eval_s = median_time(lambda: create_evaluator(settings.evaluator).evaluate(processed, batch, settings), repeats)
    base = CacheBase(dataset=dataset_fingerprint(batch))
    stats = [StepStats(op="exact_dedup", kept=len(processed["answer"]), dropped=0, changed=0, seconds=1.0)]
    puts, looks = [], []
    with PrefixCache(workdir / f"prefix-{n}", 4 << 30) as cache:
        for i in range(repeats + 1):  # run 0 is the warm-up
            steps = [StepKey.of("exact_dedup", "1", {"run": i})]
            t0 = time.perf_counter()
            cache.put(base, steps, processed, stats)
            t1 = time.perf_counter()
            hit = cache.lookup(base, steps)
            t2 = time.perf_counter()
            if hit is None or hit.batch != processed:
                raise RuntimeError("the prefix cache lost an entry")
            if i:
                puts.append(t1 - t0)
                looks.append(t2 - t1)
    return {"rows": n, "noisy_rows": int(flags.sum()), "dps_method": dps_method(flags), "hash_embed_s": embed_s,
            "dps_s": dps_s,
            "screening_s": screen_s, "cache_put_s": statistics.median(puts),
            "cache_lookup_s": statistics.median(looks), "eval_s": eval_s}


def use_m3_seconds_per_row(rows: int) -> float | None:
    """use-m3's encoding time per row on ``rows`` toy rows (model load not counted); None without it."""
    from site_agent.embeddings import create_embedder, text_for_embedding

    try:
        embedder = create_embedder("use-m3")
        texts = text_for_embedding(scaled_rows(rows, seed=2)[0])
        embedder.encode(texts[:16])
        t0 = time.perf_counter()
        embedder.encode(texts)
        return (time.perf_counter() - t0) / rows
    except Exception as e:  # noqa: BLE001 - the bench reports a missing model instead of failing
        print(f"use-m3 not measured: {type(e).__name__}", file=sys.stderr)
        return None


# -- number of sites -----------------------------------------------------------------------------------------

def _rounds_in(report: Path) -> int:
    try:
        return len(json.loads(report.read_text(encoding="utf-8")).get("rounds", []))
    except (OSError, ValueError):
        return 0


def time_sites(n_sites: int, rows: int, rounds: int, k: int, workdir: Path, timeout_s: float = 900.0,
               ) -> dict[str, Any]:
    from coordinator.demo import free_port, provision, start_coordinator, start_site, stop_process

    workdir.mkdir(parents=True)
    site_ids = [f"hospital-{chr(ord('a') + i)}" for i in range(n_sites)]
    port = free_port()
    config = provision(workdir, site_ids, rounds, k, rows, port, proposer="random", patience=rounds)
    logs = workdir / "logs"
    logs.mkdir()
    report = workdir / "search-report.json"
    t0 = time.perf_counter()
    coordinator = start_coordinator(config, logs, command="search")
    procs = [start_site(workdir, s, logs) for s in site_ids]
    marks: list[float] = []
    try:
        while coordinator.poll() is None:
            if time.perf_counter() - t0 > timeout_s or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{n_sites}-site search failed or timed out; logs in {logs}")
            while _rounds_in(report) > len(marks):
                marks.append(time.perf_counter() - t0)
            time.sleep(0.1)
        total = time.perf_counter() - t0
        while _rounds_in(report) > len(marks):
            marks.append(total)
    finally:
        for p in procs:
            stop_process(p)
        stop_process(coordinator)
    per_round = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {"sites": n_sites, "rows_per_site": rows, "rounds": len(marks), "k": k, "total_s": total,
            "first_round_s": marks[0] if marks else None, "round_s": per_round,
            "round_median_s": statistics.median(per_round) if per_round else None,
            "exit_code": coordinator.returncode}


# -- reporting -----------------------------------------------------------------------------------------------

_COLS = (("dps_s", "DPS"), ("screening_s", "screening"), ("cache_put_s", "cache put"),
         ("cache_lookup_s", "cache lookup"), ("eval_s", "evaluation"))


def _plot(path: Path, sizes: Sequence[dict[str, Any]], sites: Sequence[dict[str, Any]], m3: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["rows"] for r in sizes]
    for key, label in _COLS:
        a.plot(xs, [max(r[key], 1e-4) for r in sizes], marker="o", label=label)
    if m3:
        a.plot(xs, [m3 * x for x in xs], ls="--", color="grey", label="use-m3 embedding (estimate)")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("rows")
    a.set_ylabel("seconds (median)")
    a.set_title("per dataset size")
    a.legend(fontsize=8)
    a.grid(alpha=0.3, which="both")
    ns = [s["sites"] for s in sites]
    b.plot(ns, [s["round_median_s"] or 0 for s in sites], marker="o", label="wall per round (median)")
    b.plot(ns, [s["first_round_s"] or 0 for s in sites], marker="s", label="start to first round (incl. set-up)")
    b.set_xlabel("site processes on 127.0.0.1")
    b.set_ylabel("seconds")
    b.set_xticks(ns)
    b.set_title("per number of sites")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m3 = report["use_m3_s_per_row"]
    sizes, sites = report["sizes"], report["sites"]
    lines = [
        f"# Scaling benchmark ({report['mode']} mode)", "",
        *provenance(report),
        f"- run time: {report['run_s']:.0f} s in all (sizes {report['sizes_s']:.0f} s, sites "
        f"{report['sites_s']:.0f} s)",
        "- modes: " + "; ".join(f"{n}: sizes {', '.join(str(s) for s in c.sizes)}, sites "
                                f"{', '.join(str(s) for s in c.site_counts)}; {c.run_time}" for n, c in MODES.items()),
        "", "## Per dataset size", "",
        f"Median of {report['repeats']} runs after a warm-up, seconds. DPS and screening on hashing embeddings "
        "(see the module doc); the use-m3 column is its measured per-row cost "
        f"({'-' if m3 is None else format(m3 * 1000, '.1f') + ' ms'} per row) times the rows: an estimate, "
        "paid once per dataset and cached.", "",
        "| rows | DPS method (clean + noisy) | DPS s | screening s | cache put s | cache lookup s | evaluation s "
        "| use-m3 embedding s (estimate) | x rows vs previous | x DPS | x screening | x evaluation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    prev: dict[str, Any] | None = None
    for r in sizes:
        ratios = ["-"] * 4 if prev is None else [
            f"{r['rows'] / prev['rows']:.0f}", *(f"{r[k] / prev[k]:.1f}" if prev[k] > 0 else "-"
                                                 for k in ("dps_s", "screening_s", "eval_s"))]
        lines.append(f"| {r['rows']} | {r.get('dps_method', '-')} | {r['dps_s']:.3f} | {r['screening_s']:.3f} | "
                     f"{r['cache_put_s']:.3f} | {r['cache_lookup_s']:.3f} | {r['eval_s']:.3f} | "
                     f"{'-' if m3 is None else format(m3 * r['rows'], '.0f')} | " + " | ".join(ratios) + " |")
        prev = r
    if 100_000 not in [r["rows"] for r in sizes]:
        lines += ["", "100k rows: full mode only (`scaling_full.md`)."]
    lines += ["", "## Per number of sites", "",
              f"Random proposer, {sites[0]['rounds'] if sites else '-'} rounds x {sites[0]['k'] if sites else '-'} "
              "strategies, quality proxy, DPS 200 permille, PTS, cache; every site and the coordinator a separate "
              "process on 127.0.0.1 (mTLS). Per-round wall: from one round's result to the next's.", "",
              "| site processes | rows per site | start to first round s | wall per round s (median) | rounds s "
              "| total s |", "|---|---|---|---|---|---|"]
    for s in sites:
        lines.append(f"| {s['sites']} | {s['rows_per_site']} | {s['first_round_s']:.1f} | "
                     f"{'-' if s['round_median_s'] is None else format(s['round_median_s'], '.2f')} | "
                     + ", ".join(f"{x:.2f}" for x in s["round_s"]) + f" | {s['total_s']:.1f} |")
    if 8 not in [s["sites"] for s in sites]:
        lines += ["", "8 site processes: not run in this mode (full mode only)."]
    lines += ["", f"Plot: `{report['plot']}`.", "", "## Reading", "", *_reading(report), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def growth_exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    """b in t ~ n^b between two sizes (1: linear, 2: quadratic); None when undefined."""
    if n1 <= 0 or n2 <= n1 or t1 <= 0 or t2 <= 0:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def _reading(report: dict[str, Any]) -> list[str]:
    sizes, sites, mode = report["sizes"], report["sites"], report["mode"]
    out = []
    if len(sizes) >= 2:
        for a, b in zip(sizes, sizes[1:], strict=False):
            exps = {label: growth_exponent(a["rows"], a[key], b["rows"], b[key]) for key, label in _COLS}
            out.append(f"- growth from {a['rows']} to {b['rows']} rows, as t ~ n^b: " + ", ".join(
                f"{k} b={'-' if v is None else format(v, '.2f')}" for k, v in exps.items()) + ".")
        out.append("- DPS per stratum: exact lazy greedy up to 16,384 rows, whose first gains are one O(n^2 d) "
                   "pass (b > 1 expected); beyond, partitioned greedy: spherical k-means blocks of about 4,096 "
                   "rows, exact greedy inside each, O(n * block * d), so b is 1 or below past the switch. The "
                   "cache's fixed costs (index, fsync) hide its O(n) part at small sizes.")
        big = sizes[-1]
        slowest = max(_COLS, key=lambda c: big[c[0]])
        out.append(f"- at {big['rows']} rows the slowest stage timed is {slowest[1]} ({big[slowest[0]]:.2f} s); "
                   "all of them are paid once per site and setting (SelectionMemo) except the evaluation (per task) "
                   "and the cache (per step); the embedding model, paid once per dataset, costs more than all of "
                   "them together" + (" (estimate above)." if report["use_m3_s_per_row"] else "."))
    if len(sites) >= 2 and sites[0]["round_median_s"] and sites[-1]["round_median_s"]:
        r = sites[-1]["round_median_s"] / sites[0]["round_median_s"]
        out.append(f"- {sites[-1]['sites']} site processes vs 1: {r:.1f}x the wall time per round, "
                   f"{sites[-1]['first_round_s'] / sites[0]['first_round_s']:.1f}x to the first round, on "
                   f"{report['machine']['cpu_count']} CPUs shared by all processes: every site does its work on the "
                   "same cores, so this measures CPU contention on one box, not the protocol; separate machines "
                   "run their sites in parallel.")
    limit = 600.0
    if mode == "quick":
        out.append(f"- quick mode under 10 minutes: {report['run_s']:.0f} s -> "
                   f"**{'met' if report['run_s'] < limit else 'not met'}**")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--m3-rows", type=int, default=256, help="rows to time use-m3 on (0: skip)")
    ap.add_argument("--no-sites", action="store_true", help="skip the multi-process part")
    ap.add_argument("--site-rows", type=int, default=None, help="rows per site in the site sweep (default: the mode's)")
    args = ap.parse_args(argv)
    mode = MODES[args.mode]
    if args.site_rows is not None:
        if args.site_rows < 50:
            ap.error("--site-rows must be at least 50")
        mode = replace(mode, site_rows=args.site_rows)
    run = RunInfo()
    machine, date, say = run.machine, run.date, run.say

    with tempfile.TemporaryDirectory(prefix="autodp-bench-scaling-") as tmp:
        workdir = Path(tmp)
        sizes = time_sizes(mode.sizes, mode.repeats, workdir / "sizes", say)
        sizes_s = run.elapsed()
        m3 = use_m3_seconds_per_row(args.m3_rows) if args.m3_rows else None
        t0 = time.perf_counter()
        sites = []
        if not args.no_sites:
            for n in mode.site_counts:
                sites.append(time_sites(n, mode.site_rows, mode.rounds, mode.k, workdir / f"sites-{n}"))
                say(f"{n} sites: first round {sites[-1]['first_round_s']:.1f} s, per round "
                    f"{sites[-1]['round_median_s']}")
        sites_s = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    plot = args.out / f"scaling_{args.mode}.png"
    _plot(plot, sizes, sites, m3)
    report = {"mode": args.mode, "command": run.command, "date": date, "machine": machine,
              "run_s": run.elapsed(), "sizes_s": sizes_s, "sites_s": sites_s,
              "mode_config": asdict(mode), "repeats": mode.repeats, "use_m3_s_per_row": m3, "sizes": sizes,
              "sites": sites, "plot": str(plot)}
    (args.out / f"scaling_{args.mode}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_markdown(args.out / f"scaling_{args.mode}.md", report)
    print((args.out / f"scaling_{args.mode}.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
