"""Cache-and-Reuse benchmark: the same strategies, once without and once with the prefix cache.

Twelve strategies built from the four cleaning operators share prefixes the way a search's proposals do
(same first steps, different tails). Both passes run in one process on the same rows, interleaved
strategy by strategy; the cached pass starts from an empty cache, so its figures include the cost of
writing every new prefix (fsync'ed, as in production, unless --no-fsync). Outputs are checked to be
identical. Prints counts and times only.

    .venv/bin/python bench/bench_cache.py                 # toy set, 3000 rows
    .venv/bin/python bench/bench_cache.py --rows 10000 --rounds 2
    .venv/bin/python bench/bench_cache.py --data site.jsonl   # a local data file instead of the toy set
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from protos.views import EvalSettings, OperatorCall, Strategy
from site_agent.cache.codec import decode_batch, encode_batch
from site_agent.cache.store import PrefixCache
from site_agent.data import load_pairs, make_toy_dataset
from site_agent.operators.base import Batch
from site_agent.operators.context import RunContext
from site_agent.pipeline import ExecutionResult, execute

__all__ = ["STRATEGIES", "main"]

_RM, _RM_FLAT = OperatorCall.of("remove_markup"), OperatorCall.of("remove_markup", keep_line_breaks=False)
_NT, _NT_NFC = OperatorCall.of("normalize_text"), OperatorCall.of("normalize_text", form="NFC")
_LF, _LF_WIDE = (OperatorCall.of("length_filter", min_answer_chars=20, max_answer_chars=400),
                 OperatorCall.of("length_filter", min_answer_chars=10, max_answer_chars=1000))
_DD, _DD_Q = OperatorCall.of("exact_dedup"), OperatorCall.of("exact_dedup", key="instruction")

STRATEGIES = [Strategy(calls=c) for c in (
    (_RM,), (_RM, _NT), (_RM, _NT, _LF), (_RM, _NT, _LF, _DD), (_RM, _NT, _LF, _DD_Q), (_RM, _NT, _LF_WIDE, _DD),
    (_RM, _NT, _DD), (_RM, _NT, _DD, _LF), (_RM, _NT_NFC, _LF, _DD), (_RM_FLAT, _NT, _LF, _DD),
    (_NT, _RM, _LF, _DD), (_NT, _RM, _DD),
)]


def _both(data: Batch, settings: EvalSettings, cache: PrefixCache,
          rounds: int) -> tuple[float, float, list[ExecutionResult], list[ExecutionResult]]:
    """Each strategy without, then with the cache, interleaved: load from other processes on a shared
    machine then slows both passes alike instead of whichever ran second."""
    plain_s = cached_s = 0.0
    plain, cached = [], []
    off = settings.model_copy(update={"use_cache": False})
    for _ in range(rounds):
        for strategy in STRATEGIES:
            t0 = time.perf_counter()
            plain.append(execute(data, strategy, off, context=RunContext(seed=settings.seed)))
            t1 = time.perf_counter()
            cached.append(execute(data, strategy, settings, context=RunContext(seed=settings.seed), cache=cache))
            plain_s, cached_s = plain_s + t1 - t0, cached_s + time.perf_counter() - t1
    return plain_s, cached_s, plain, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000, help="toy set size (ignored with --data)")
    ap.add_argument("--data", type=Path, help="a local JSONL/CSV/Parquet file of instruction/answer pairs")
    ap.add_argument("--rounds", type=int, default=1, help="times the 12 strategies are proposed (search revisits)")
    ap.add_argument("--budget-mb", type=int, default=1024)
    ap.add_argument("--no-fsync", action="store_true", help="skip fsync on cache writes (not crash safe)")
    args = ap.parse_args()
    data = load_pairs(args.data) if args.data else make_toy_dataset(args.rows, seed=0)[0]
    settings = EvalSettings(sample_rate_permille=1000, use_screening=False, use_cache=True)
    # Warm-up, so that neither pass pays one-time costs (imports, regex compilation, pyarrow loading).
    execute(data, STRATEGIES[3], settings.model_copy(update={"use_cache": False}), context=RunContext())
    decode_batch(encode_batch({"instruction": ["q"], "answer": ["a"]}))

    with tempfile.TemporaryDirectory() as tmp, PrefixCache(Path(tmp), args.budget_mb << 20,
                                                           durable=not args.no_fsync) as cache:
        plain_s, cached_s, plain, cached = _both(data, settings, cache, args.rounds)
        stats = cache.stats()
    assert all(a.batch == b.batch for a, b in zip(plain, cached, strict=True)), "cached output differs"

    steps = sum(len(r.steps) for r in cached)
    compute = sum(s.seconds for r in plain for s in r.steps)
    print(f"rows {len(data['answer'])}, {len(STRATEGIES)} strategies x {args.rounds} round(s), {steps} steps, "
          f"fsync {'off' if args.no_fsync else 'on'}")
    print(f"{'':24}{'no cache':>12}{'cache':>12}")
    print(f"{'total seconds':24}{plain_s:12.3f}{cached_s:12.3f}")
    print(f"{'operators run':24}{sum(r.operators_run for r in plain):12d}{sum(r.operators_run for r in cached):12d}")
    print(f"{'operator seconds':24}{compute:12.3f}"
          f"{sum(s.seconds for r in cached for s, c in zip(r.steps, r.cached, strict=True) if not c):12.3f}")
    print(f"speed-up (no cache / cache): {plain_s / cached_s:.2f}x")
    print(f"hit rate {stats.hit_rate:.2f} ({stats.hits} hits, {stats.misses} misses), steps reused "
          f"{stats.steps_reused}/{steps}, seconds saved {stats.seconds_saved:.3f}, "
          f"{stats.entries} entries, {stats.bytes_stored / 2**20:.1f} MiB stored")


if __name__ == "__main__":
    main()
