"""Evaluator fidelity: does the quality proxy rank processing strategies the way a LoRA trained on their output does?

A search scores many strategies with the quality proxy (milliseconds a strategy) because a LoRA per strategy
costs minutes on a CPU; the proxy is worth its speed only if it orders strategies as the LoRA would. This
benchmark measures that on a fixed set of arms (:data:`ARMS`: strategies a search can propose), per site of the
PyCMeKG benchmark built into a temporary folder. Each arm is applied to all of a site's training rows as
``autodp site process`` applies a recipe (no sampling, PTS on: ``bench_quality.processed_rows``), then:

- **proxy scores**, each against the site's unprocessed rows: the default score (recall x precision) and the
  fixed-training-budget score (option ``budget_share`` b = LoRA steps x batch / rows: the share of the rows the
  LoRA below sees; see ``site_agent.evaluation.quality_proxy``);
- **a LoRA** on the arm's rows (the site agent's training loop, ``run_lora``: the same base model, steps, batch and
  seed for every arm) and its per-item loss on the site's held-out items: the arm's mean loss difference against
  the LoRA on the unprocessed rows of the same seed (nats per token averaged over items; negative: better) and
  its pairwise win rate;
- three **references**, shown, not ranked: ``labelled_clean`` (only the rows the generator labelled clean: an
  oracle that reads the labels), ``undamaged`` (every row as the generator made it before damaging any: the
  ceiling of cleaning on this site, what a strategy that repaired every damaged row perfectly would give; the
  generator's ``build_rows(damage=False)``) and ``seed_noise`` (the unprocessed rows with another LoRA seed: how
  far a loss difference moves by chance).

Fidelity, per site and proxy score, over the arms (``unprocessed`` included: score 0, loss difference 0):
Kendall's tau-b between the proxy score and minus the LoRA loss difference, whether both put the same arm first,
the regret of the proxy's pick (its LoRA loss difference minus the best arm's), and the share of *resolved*
pairs the proxy orders as the LoRA does: pairs of arms whose loss differences lie further apart than twice the
seed noise's (a proxy tie counts half). Tau over a handful of arms whose LoRA losses sit within seed noise of
each other measures the noise; the resolved pairs are the part of the ordering the LoRA can vouch for.

    .venv/bin/python bench/bench_proxy.py --mode quick                 # tiny model, every site, ~1 min
    .venv/bin/python bench/bench_proxy.py --mode medium                # SmolLM2-135M on hospital-c, see MODES
    .venv/bin/python bench/bench_proxy.py --mode medium --sites hospital-a --label medium-a

Writes ``proxy_<label>.json`` and ``proxy_<label>.md`` under ``--out`` (default: the mode's name as label).
Prints counts, scores, loss differences and times only: no row text.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the LoRA base loads bundled files only
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_quality and bench_search beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests' tiny model

from bench_common import LOSS_MEAN_HELP, RunInfo, loss_mean_words, provenance  # noqa: E402
from bench_quality import (  # noqa: E402
    labelled_clean_rows,
    lora_base,
    mean_loss_delta,
    pooled_win_rate,
    prepare_sites,
    processed_rows,
    train_losses,
    undamaged_rows,
)
from bench_search import fidelity  # noqa: E402

from protos.views import EvalSettings, EvaluatorKind, OperatorCall, Strategy  # noqa: E402
from site_agent.evaluation.base import Evaluator, create_evaluator  # noqa: E402
from site_agent.operators.base import Batch, batch_size  # noqa: E402
from site_agent.resources import SiteResources  # noqa: E402

__all__ = ["ARMS", "MODES", "Mode", "agreement", "main", "measure_site", "site_fidelity"]

# Strategies a search can propose over the operators that need no site-local LLM, chosen to tell the two proxy
# scores apart: repairs in place (the default score's favourites), drops (the fixed-budget score's), and both.
ARMS: dict[str, tuple[OperatorCall, ...]] = {
    "unprocessed": (),
    "drop_flagged": (OperatorCall.of("screening_threshold"),),
    "drop_confident": (OperatorCall.of("screening_threshold", max_noisy_proba=0.9),),
    "remove_markup": (OperatorCall.of("remove_markup"),),
    "normalize_text": (OperatorCall.of("normalize_text"),),
    "redact_identifiers": (OperatorCall.of("redact_identifiers"),),
    "repair_then_drop": (OperatorCall.of("normalize_text"), OperatorCall.of("remove_markup"),
                         OperatorCall.of("screening_threshold")),
}
ORACLE = "labelled_clean"
CEILING = "undamaged"
PROXIES = ("default", "budget")


@dataclass(frozen=True)
class Mode:
    pairs: int
    sites: int
    eval_per_site: int
    model: str  # "tiny" (built from a config) or "smollm2" (bundled)
    lora_steps: int
    seq_len: int
    batch_size: int
    lr: float
    seeds: int  # LoRA seeds per arm (0..seeds-1); the seed-noise reference uses seed `seeds`
    lora_sites: tuple[str, ...]  # () for every site
    run_time: str


MODES = {
    # bench_quality's quick build (1800 pairs, 3 sites, 50 held-out items each): the same sites as its probes.
    "quick": Mode(pairs=1800, sites=3, eval_per_site=50, model="tiny", lora_steps=30, seq_len=64, batch_size=8,
                  lr=1e-3, seeds=1, lora_sites=(),
                  run_time="~1 min (61-65 s) on the shared 2-core development box (tiny LoRAs: about a second "
                           "each); its random-weight model learns nothing medical, so only the plumbing is checked"),
    # bench_quality medium's LoRA settings, on the site with the most damaged rows.
    "medium": Mode(pairs=1800, sites=3, eval_per_site=50, model="smollm2", lora_steps=40, seq_len=64, batch_size=8,
                   lr=1e-3, seeds=1, lora_sites=("hospital-c",),
                   run_time="57 min (3396 s) for hospital-c on the shared 2-core development box beside two other "
                            "benchmark runs (set-up ~2 min, then 9 SmolLM2 LoRAs of 40 steps: 7 arms, 2 references, "
                            "~360 s each); ~50 min alone (9 x ~330 s, an estimate)"),
}


def _mean(xs: Sequence[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.fmean(got) if got else None


def measure_site(resources: SiteResources, arms: Mapping[str, tuple[OperatorCall, ...]],
                 oracle: Batch | None, budget_share: float,
                 losses: Callable[[Batch, int], list[float] | None], seeds: int,
                 progress: Callable[[str], None] = lambda _: None, ceiling: Batch | None = None) -> dict[str, Any]:
    """One site: every arm's rows kept, both proxy scores, LoRA losses per seed, loss difference and win rate
    against the unprocessed LoRA of the same seed; the oracle's and the ceiling's (when given) and the seed-noise
    reference's."""
    raw = resources.data
    n_raw = batch_size(raw)
    evaluators: dict[str, Evaluator] = {
        "default": create_evaluator(EvaluatorKind.QUALITY_PROXY),
        "budget": create_evaluator(EvaluatorKind.QUALITY_PROXY, budget_share=budget_share)}
    plain = EvalSettings(sample_rate_permille=1000, use_cache=False)
    raw_losses = [losses(raw, seed) for seed in range(seeds)]
    progress("LoRA on the unprocessed rows done")

    def arm_record(calls: tuple[OperatorCall, ...] | None, batch: Batch, name: str,
                   what: str = "(the labelled-clean rows)") -> dict[str, Any]:
        kept = batch_size(batch)
        scores = {p: (e.evaluate(batch, raw, plain).score if kept else None) for p, e in evaluators.items()}
        if calls == ():
            per_seed = raw_losses
        else:
            per_seed = [losses(batch, seed) if kept else None for seed in range(seeds)]
        deltas = [mean_loss_delta({"s": a}, {"s": b}) if a is not None and b is not None else None
                  for a, b in zip(per_seed, raw_losses, strict=True)]
        wins = [pooled_win_rate({"s": a}, {"s": b}) if a is not None and b is not None else None
                for a, b in zip(per_seed, raw_losses, strict=True)]
        progress(f"arm {name}: {kept} rows kept, LoRA loss difference {_fmt(_mean(deltas), 4)}")
        return {"strategy": Strategy(calls=calls).describe() if calls else ("(no processing)" if calls == ()
                                                                              else what),
                "rows": kept, "proxy": scores, "loss_delta": deltas, "loss_delta_mean": _mean(deltas),
                "win_rate": wins, "win_rate_mean": _mean(wins)}

    out: dict[str, Any] = {"raw_rows": n_raw, "budget_share": budget_share, "arms": {}}
    for name, calls in arms.items():
        batch = raw if not calls else processed_rows(resources, Strategy(calls=calls))
        out["arms"][name] = arm_record(calls, batch, name)
    out["oracle"] = arm_record(None, oracle, ORACLE) if oracle is not None and batch_size(oracle) else None
    out["ceiling"] = (arm_record(None, ceiling, CEILING, "(every row before the generator damaged it)")
                      if ceiling is not None and batch_size(ceiling) else None)
    noise, first = losses(raw, seeds), raw_losses[0]
    d = mean_loss_delta({"s": noise}, {"s": first}) if noise is not None and first is not None else None
    out["seed_noise"] = abs(d) if d is not None else None
    progress(f"seed noise: {_fmt(out['seed_noise'], 4)}")
    return out


def agreement(proxy: Sequence[float | None], deltas: Sequence[float | None], noise: float | None) -> dict[str, Any]:
    """Pairs of arms whose LoRA loss differences lie more than 2 x ``noise`` apart (all pairs when the noise is
    unknown): how many, and the share the proxy orders the same way (higher score, lower loss; a proxy tie
    counts half)."""
    margin = 2.0 * noise if noise is not None else 0.0
    points = 0.0
    n = 0
    for i in range(len(proxy)):
        for j in range(i + 1, len(proxy)):
            pi, pj, di, dj = proxy[i], proxy[j], deltas[i], deltas[j]
            if pi is None or pj is None or di is None or dj is None or abs(di - dj) <= margin:
                continue
            n += 1
            points += 0.5 if pi == pj else float((pi > pj) == (di < dj))
    return {"pairs": n, "agree": points / n if n else None, "margin": margin}


def site_fidelity(site: Mapping[str, Any]) -> dict[str, Any]:
    """Per proxy score: tau, top-1 and regret against the LoRA (minus the loss difference), resolved pairs."""
    names = list(site["arms"])
    deltas = [site["arms"][a]["loss_delta_mean"] for a in names]
    lora = [-d if d is not None else None for d in deltas]
    out: dict[str, Any] = {}
    for p in PROXIES:
        scores = [site["arms"][a]["proxy"][p] for a in names]
        f = fidelity(lora, scores)
        out[p] = {"kendall_tau": f["kendall_tau"], "p_value": f["p_value"], "n": f["n"],
                  "same_top1": f["same_top1"], "regret": f["regret"],
                  "top1": names[f["top1"]] if f["top1"] is not None else None,
                  "lora_top1": names[f["reference_top1"]] if f["reference_top1"] is not None else None,
                  "resolved": agreement(scores, deltas, site["seed_noise"])}
    return out


def _say_site(say: Callable[[str], None], site: str, msg: str) -> None:
    say(f"  {site}: {msg}")


# -- reporting -----------------------------------------------------------------------------------------------------

def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def write_markdown(path: Path, report: Mapping[str, Any]) -> None:
    m = report["mode_config"]
    lines = [
        f"# Evaluator fidelity: quality proxy against LoRA ({report['mode']} mode)", "",
        *provenance(report),
        f"- run time: {report['run_s']:.0f} s in all (build and site preparation {report['setup_s']:.0f} s, "
        f"{report['trainings']} LoRA trainings {report['lora_s']:.0f} s); mode: {m['run_time']}",
        f"- LoRA: model {report['model']}, {m['lora_steps']} steps, batch {m['batch_size']}, seq len {m['seq_len']}, "
        f"lr {m['lr']}, seeds {', '.join(str(s) for s in range(m['seeds']))} for every arm (seed {m['seeds']} for the "
        f"seed-noise reference); {m['eval_per_site']} held-out items per site; training loss averaged per "
        + loss_mean_words(report),
        "- arms: each applied to all the site's training rows with PTS on, as `autodp site process` applies a "
        "recipe; proxy scores against the unprocessed rows; loss difference: the arm's LoRA minus the unprocessed "
        "rows' LoRA of the same seed, mean held-out loss (nats per token; negative: better)", ""]
    if report["model"] == "tiny":
        lines += ["**Plumbing check only:** the tiny model is a random-weight 2-layer Llama built from a config; its "
                  "losses say nothing about medical QA, so neither do the fidelity figures below.", ""]
    lines += ["## Fidelity", "",
              "Over the arms (the references, labelled-clean oracle and undamaged ceiling, are not arms). Resolved "
              "pairs: arms whose LoRA loss "
              "differences lie more than twice the seed noise apart; agree: the share of those the proxy orders the "
              "same way (a tie counts half).", "",
              "| site | proxy score | Kendall tau | p | same top-1 | proxy's pick | LoRA's best | regret (nats) | "
              "resolved pairs | agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for site, fid in report["fidelity"].items():
        b = report["sites"][site]["budget_share"]
        for p in PROXIES:
            f = fid[p]
            label = "default" if p == "default" else f"fixed budget (b = {b:.2f})"
            lines.append(f"| {site} | {label} | {_fmt(f['kendall_tau'])} | {_fmt(f['p_value'], 3)} | "
                         f"{'yes' if f['same_top1'] else 'no'} | {f['top1'] or '-'} | {f['lora_top1'] or '-'} | "
                         f"{_fmt(f['regret'], 4)} | {f['resolved']['pairs']} | {_pct(f['resolved']['agree'])} |")
    for site, s in report["sites"].items():
        lines += ["", f"## {site}", "",
                  f"{s['raw_rows']} unprocessed rows; seed noise (|loss difference| of a second LoRA on the "
                  f"unprocessed rows): {_fmt(s['seed_noise'], 4)}; fixed-budget share b = {s['budget_share']:.3f}.",
                  "", "| arm | strategy | rows kept | proxy (default) | proxy (fixed budget) | LoRA loss difference "
                  "| win rate vs unprocessed |", "|---|---|---|---|---|---|---|"]
        rows = list(s["arms"].items()) + ([(ORACLE + " (oracle)", s["oracle"])] if s["oracle"] else []) \
            + ([(CEILING + " (ceiling)", s["ceiling"])] if s.get("ceiling") else [])
        for name, a in rows:
            lines.append(f"| {name} | {a['strategy']} | {a['rows']} | {_fmt(a['proxy']['default'], 4)} | "
                         f"{_fmt(a['proxy']['budget'], 4)} | {_signed(a['loss_delta_mean'])} | "
                         f"{_pct(a['win_rate_mean'])} |")
    lines += ["", "## What limits these results", "",
              f"- {len(report['arms'])} arms and {m['eval_per_site']} held-out items per site, "
              f"{m['seeds']} LoRA seed(s): a loss difference within about twice the seed noise is not resolved, and "
              "a tau over a few arms has a wide spread (see p).",
              "- The arms are single strategies chosen to tell the two scores apart, not a search's proposals: a "
              "search ranks many strategies that differ little, which this does not sample.",
              "- The LoRA is short (the medium mode's: the scale of bench_quality's probes); a longer training that "
              "sees every row several times weighs dropped rows differently, and the right b with it.",
              "- The undamaged ceiling is what a perfect repair of every damaged row gives: no cleaning restores more. "
              "Selecting among the clean rows or generating new ones could still pass it, and one LoRA seed puts it "
              "within the seed noise; a win rate goal well above the ceiling's is out of reach of cleaning on this "
              "site at this LoRA scale, whatever the search.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# -- main -----------------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--label", help="name of the result files, proxy_<label>.* (default: the mode)")
    ap.add_argument("--sites", metavar="NAMES", help="comma-separated sites to measure (default: the mode's)")
    ap.add_argument("--arms", metavar="NAMES", help="comma-separated arms from " + ", ".join(ARMS)
                    + " (unprocessed is always measured); default: all")
    ap.add_argument("--seeds", type=int, help="LoRA seeds per arm (default: the mode's)")
    ap.add_argument("--model", help="override the mode's LoRA model: 'tiny', 'smollm2' or an HF folder")
    ap.add_argument("--loss-mean", choices=("row", "token"), default="row",
                    help=LOSS_MEAN_HELP)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    mode = MODES[args.mode]
    from site_agent.data.benchmark.split import site_ids

    known = site_ids(mode.sites)
    chosen = [s for s in (args.sites or "").split(",") if s] or list(mode.lora_sites) or list(known)
    if any(s not in known for s in chosen):
        print(f"error: --sites takes names from {', '.join(known)}", file=sys.stderr)
        return 2
    wanted = [a for a in (args.arms or "").split(",") if a] or list(ARMS)
    if any(a not in ARMS for a in wanted):
        print(f"error: --arms takes names from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    arms = {a: ARMS[a] for a in ARMS if a == "unprocessed" or a in wanted}
    seeds = args.seeds if args.seeds is not None else mode.seeds
    if seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return 2
    mode_cfg = Mode(**{**asdict(mode), "seeds": seeds})
    run = RunInfo()
    say = run.say
    model_name = args.model or mode.model

    with tempfile.TemporaryDirectory(prefix="autodp-bench-proxy-") as tmp:
        workdir = Path(tmp)
        say(f"building the benchmark ({mode.pairs} pairs, {mode.sites} sites) and preparing every site")
        sites = prepare_sites(workdir, pairs=mode.pairs, sites=mode.sites, eval_per_site=mode.eval_per_site)
        setup_s = run.elapsed()
        from site_agent.evaluation.lora_train import TrainConfig

        folder = lora_base(model_name, sites, workdir)
        trainings = 0
        lora_s = 0.0

        def losses_for(site: str) -> Callable[[Batch, int], list[float] | None]:
            eval_batch = sites[site].eval_data
            assert eval_batch is not None

            def train(batch: Batch, seed: int) -> list[float] | None:
                nonlocal trainings, lora_s
                cfg = TrainConfig(steps=mode.lora_steps, seq_len=mode.seq_len, batch_size=mode.batch_size,
                                  lr=mode.lr, seed=seed, lora_dropout=0.0, loss_mean=args.loss_mean,
                                  dtype="float32" if model_name == "tiny" else "auto")
                t = run.elapsed()
                trainings += 1
                try:
                    return train_losses(folder, cfg, batch, eval_batch, site)
                finally:
                    lora_s += run.elapsed() - t
            return train

        results: dict[str, Any] = {}
        for site in chosen:
            res = sites[site]
            n_raw = batch_size(res.data)
            budget = min(1.0, mode.lora_steps * mode.batch_size / n_raw)
            train_file = workdir / "benchmark" / site / "train.jsonl"
            oracle = labelled_clean_rows(res, train_file)
            ceiling = undamaged_rows(res, site, train_file, pairs=mode.pairs, sites=mode.sites,
                                     eval_per_site=mode.eval_per_site)
            say(f"{site}: {len(arms)} arms, {seeds} seed(s), fixed-budget share {budget:.3f}")
            results[site] = measure_site(res, arms, oracle, budget, losses_for(site), seeds,
                                         progress=functools.partial(_say_site, say, site), ceiling=ceiling)
        for res in sites.values():
            res.close()

    fid = {site: site_fidelity(s) for site, s in results.items()}
    report: dict[str, Any] = {
        "mode": args.mode, "command": run.command, "date": run.date, "machine": run.machine,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "run_s": run.elapsed(), "setup_s": setup_s,
        "lora_s": lora_s, "trainings": trainings, "model": model_name, "mode_config": asdict(mode_cfg),
        "loss_mean": args.loss_mean, "arms": {a: Strategy(calls=c).key for a, c in arms.items()}, "sites": results,
        "fidelity": fid}
    args.out.mkdir(parents=True, exist_ok=True)
    label = args.label or args.mode
    (args.out / f"proxy_{label}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_markdown(args.out / f"proxy_{label}.md", report)
    for site, f in fid.items():
        for p in PROXIES:
            r = f[p]["resolved"]
            print(f"{site} {p:7}: tau {_fmt(f[p]['kendall_tau'])}, same top-1 {'yes' if f[p]['same_top1'] else 'no'} "
                  f"({f[p]['top1']} / {f[p]['lora_top1']}), regret {_fmt(f[p]['regret'], 4)}, resolved pairs "
                  f"{r['pairs']} agree {_pct(r['agree'])}")
    say(f"wrote {args.out}/proxy_{label}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
