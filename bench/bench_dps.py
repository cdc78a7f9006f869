"""DPS benchmark: our facility location against apricot-select's, on the same embeddings, in one run.

Both select ``round(k_rate * n)`` rows by lazy greedy facility location. apricot runs as the brief
names it, ``FacilityLocationSelection(optimizer='lazy', metric='cosine')`` (its cosine similarity is
squared, a slightly different objective), and, as a like-for-like check, on our clipped cosine matrix
passed as ``metric='precomputed'`` (that matrix's construction is timed with it). Every run is timed
end to end from the embeddings; each method runs once to warm up (numba compiles apricot's kernels),
then ``--repeats`` times interleaved with the others, and the median is reported. Selections are
scored with OUR objective f(S) = sum_i max_{j in S} max(0, cos(x_i, x_j)).

    .venv/bin/python bench/bench_dps.py                       # use-m3 embeddings of the toy set, n=5000
    .venv/bin/python bench/bench_dps.py --n 5000 --k-rate 0.2
    .venv/bin/python bench/bench_dps.py --benchmark DIR       # rows of a built benchmark (train.jsonl files)
    .venv/bin/python bench/bench_dps.py --synthetic           # a seeded Gaussian mixture, no embedding step

Embeddings are cached under the autodp cache dir (``$AUTODP_CACHE``), so only the first run embeds.
Prints sizes, times and ratios only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from protos.bundled_models import autodp_cache_dir
from site_agent.sampling.dps import facility_location, objective

__all__ = ["load_embeddings", "main"]


def _synthetic(n: int, seed: int, dim: int = 512, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim))
    unit: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit


def load_embeddings(n: int, seed: int, benchmark: Path | None, synthetic: bool) -> tuple[np.ndarray, str]:
    if synthetic:
        return _synthetic(n, seed), "Gaussian mixture (50 clusters, 512-d)"
    from site_agent.embeddings import EmbeddingCache, create_embedder, text_for_embedding

    if benchmark is not None:
        from site_agent.data import load_pairs

        texts: list[str] = []
        for path in sorted(benchmark.glob("*/train.jsonl")):
            texts += text_for_embedding(load_pairs(path))
        if not texts:
            raise SystemExit("no */train.jsonl under the benchmark folder; build it first")
        texts, source = texts[:n], "benchmark rows"
    else:
        from site_agent.data import make_toy_dataset

        texts, source = text_for_embedding(make_toy_dataset(n, seed=seed)[0]), "toy rows"
    cache = EmbeddingCache(autodp_cache_dir() / "bench-embeddings")
    start = time.perf_counter()
    emb = cache.get_or_compute(create_embedder("use-m3"), texts)
    how = "cached" if cache.hits else f"embedded in {time.perf_counter() - start:.0f} s"
    return emb, f"use-m3 embeddings of {len(texts)} {source} ({how})"


def _apricot(metric: str) -> Callable[[np.ndarray, int], np.ndarray]:
    from apricot import FacilityLocationSelection

    def run(emb: np.ndarray, k: int) -> np.ndarray:
        if metric == "precomputed":
            sims = np.maximum(emb @ emb.T, 0.0).astype(np.float64)
            sel = FacilityLocationSelection(k, metric="precomputed", optimizer="lazy").fit(sims)
        else:
            sel = FacilityLocationSelection(k, metric=metric, optimizer="lazy").fit(emb)
        return np.asarray(sel.ranking, dtype=np.int64)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="rows (default 5000)")
    ap.add_argument("--k-rate", type=float, default=0.2, help="share of rows to select (default 0.2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method after one warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--benchmark", type=Path, default=None, help="a built benchmark folder")
    ap.add_argument("--synthetic", action="store_true", help="seeded Gaussian mixture instead of embeddings")
    ap.add_argument("--no-precomputed", action="store_true", help="skip apricot on the precomputed matrix")
    args = ap.parse_args()
    if not 0.0 < args.k_rate <= 1.0 or args.n < 2 or args.repeats < 1:
        raise SystemExit("need --n >= 2, 0 < --k-rate <= 1 and --repeats >= 1")

    emb, source = load_embeddings(args.n, args.seed, args.benchmark, args.synthetic)
    n = len(emb)
    k = max(1, round(args.k_rate * n))
    print(f"data: {source}; n={n}, d={emb.shape[1]}, k={k}")
    methods: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
        "DPS": lambda e, kk: facility_location(e, kk, method="lazy"),
        "apricot": _apricot("cosine"),
    }
    if not args.no_precomputed:
        methods["apricot-pre"] = _apricot("precomputed")
    times: dict[str, list[float]] = {m: [] for m in methods}
    picks: dict[str, np.ndarray] = {}
    for rnd in range(args.repeats + 1):  # round 0 is the warm-up
        for name, run in methods.items():
            start = time.perf_counter()
            picks[name] = run(emb, k)
            if rnd:
                times[name].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    score = {m: objective(emb, p) for m, p in picks.items()}
    print(f"DPS: {med['DPS']:.2f} s, apricot: {med['apricot']:.2f} s, speed-up {med['apricot'] / med['DPS']:.1f}x, "
          f"objective ratio {score['DPS'] / score['apricot']:.3f}")
    if "apricot-pre" in med:
        same = len(set(picks["DPS"].tolist()) & set(picks["apricot-pre"].tolist())) / k
        print(f"same objective (apricot on our clipped cosine, precomputed): apricot {med['apricot-pre']:.2f} s, "
              f"speed-up {med['apricot-pre'] / med['DPS']:.1f}x, objective ratio "
              f"{score['DPS'] / score['apricot-pre']:.3f}, same rows {same:.1%}")
    print("timed runs (s): " + "; ".join(f"{m} " + ", ".join(f"{t:.2f}" for t in ts) for m, ts in times.items()))


if __name__ == "__main__":
    main()
