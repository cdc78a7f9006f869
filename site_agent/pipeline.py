"""The method's executor: sample (DPS), screen (PTS), reuse cached prefixes (CRM), run the rest, merge.

One call of :func:`execute` does, in order:

1. **Screening** (``settings.use_screening`` and a screener given): the screener marks every input row
   noisy or clean, once. With screening off the screener is never called and every row counts as a
   target.
2. **Sampling** (``settings.sample_rate_permille < 1000``): with an embedder, Diversity-aware
   Proportional Sampling (``site_agent.sampling.dps.dps_sample``) on the rows' embeddings, stratified by
   the noisy mask; without one, a seeded uniform sample drawn separately from the noisy and the clean
   rows (each stratum keeps its share, at least one row when it has any). At 1000 permille every row
   is used.
3. **Processing Target Selection**: only the sampled *noisy* rows (the targets) go through the
   strategy; the sampled clean rows are never touched by it. A selection operator that drops rows
   therefore drops targets only, and a rewrite never reaches a clean row: that is what PTS means.
4. **Cache-and-Reuse** (``settings.use_cache`` and a cache given): the longest cached prefix of the
   strategy for exactly these targets is loaded, only the remaining operators run, and a new prefix result
   is stored when it is worth its write: when the operator seconds of the steps since the longest prefix
   already stored or reused (a hit counts as stored) reach the cache's ``min_store_seconds``. With that
   shorter prefix in the cache, the alternative to storing this one is a hit on it plus recomputing those
   steps, so cheap rule-based steps (a write takes ~10 ms) are not stored and model-bound ones are. A cache
   that fails to write is logged and skipped; the task still runs.
5. **Merge**: surviving targets and clean rows, in the original relative order of the input.

Steps 1 and 2 depend only on the batch and the settings, not on the strategy; a :class:`SelectionMemo`
for the batch keeps their result, so a site screens and samples its (fixed) data once per setting rather
than twice per task (the strategy's run and the unprocessed baseline's).

The result carries the processed batch and counts, times and cache figures only, never row text (the
batch is left out of its repr). Errors: OperatorError (bad call, missing capability, failing step),
DataError (malformed batch); a task must pass ``site_agent.policy.check_task`` before it gets here.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from protos.views import EvalSettings, Strategy
from site_agent.cache.keys import CacheBase, StepKey, dataset_fingerprint
from site_agent.cache.store import CacheError, PrefixCache
from site_agent.errors import DataError, OperatorError
from site_agent.operators.base import Batch, Operator, StepStats, batch_size
from site_agent.operators.context import RunContext
from site_agent.operators.registry import create_operator

if TYPE_CHECKING:
    from site_agent.embeddings.base import Embedder
    from site_agent.screening.base import Screener

__all__ = ["ROW_COLUMN", "EmbeddingStore", "ExecutionResult", "SelectionMemo", "execute", "step_key",
           "uniform_sample"]

log = logging.getLogger(__name__)

# Carries each target's input position through the operators (they pass extra columns along untouched),
# so the merge can restore the input order. Reserved: an input batch must not have it.
ROW_COLUMN = "__autodp_row__"


class EmbeddingStore(Protocol):
    """What the executor needs of ``site_agent.embeddings.cache.EmbeddingCache``."""

    def get_or_compute(self, embedder: Embedder, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ExecutionResult:
    batch: Batch = field(repr=False)
    steps: tuple[StepStats, ...]  # one per call; a cached step carries the stats recorded when it ran
    cached: tuple[bool, ...]  # per call: reused from the cache rather than run
    n_input: int
    n_sampled: int
    n_targets: int
    n_clean: int
    n_output: int
    sampler: str  # "none", "dps" or "uniform"
    screened: bool
    cache_hits: int
    steps_reused: int
    seconds_saved: float  # recorded compute time of the reused steps
    prefixes_stored: int  # new prefixes written to the cache
    prefixes_skipped: int  # new prefixes not written: too cheap to recompute (below min_store_seconds);
    # a failed write or an entry over the budget is neither, so the two may add up to less than operators_run
    sampling_seconds: float
    screening_seconds: float
    processing_seconds: float

    @property
    def operators_run(self) -> int:
        return sum(not c for c in self.cached)


class SelectionMemo:
    """The screening labels and the sample of ONE batch, per setting (screening on/off, rate, seed, embedder,
    screener version), kept between executions on that same batch object; bounded, least recently used out.
    Used with another batch it is ignored."""

    def __init__(self, batch: Batch, max_entries: int = 32) -> None:
        self._batch = batch
        self._max = max_entries
        self._entries: OrderedDict[tuple[object, ...], tuple[np.ndarray, np.ndarray, str]] = OrderedDict()
        self.hits = 0

    def for_batch(self, batch: Batch) -> bool:
        return batch is self._batch

    def get(self, key: tuple[object, ...]) -> tuple[np.ndarray, np.ndarray, str] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return found

    def put(self, key: tuple[object, ...], value: tuple[np.ndarray, np.ndarray, str]) -> None:
        for arr in value[:2]:
            arr.setflags(write=False)  # shared by later executions: nobody may change it
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def uniform_sample(noisy: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Sorted indices: a seeded uniform sample of ``rate`` of the noisy rows and of the clean rows."""
    rng = np.random.default_rng(seed)
    picked = []
    for stratum in (True, False):
        members = np.flatnonzero(noisy == stratum)
        if members.size:
            k = min(members.size, max(1, round(rate * members.size)))
            picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def step_key(op: Operator, context: RunContext) -> StepKey:
    """The cache's view of a bound operator: full params (defaults filled), version, and the identity of
    each model it uses. Naming a model builds it through the context (a load it would need to run anyway)."""
    models: dict[str, str] = {}
    if "embedder" in op.requires:
        models["embedder"] = context.embedder().name
    if "llm" in op.requires:
        models["llm"] = context.llm().name
    if "screener" in op.requires:
        models["screener"] = context.get_screener().version
    return StepKey.of(op.name, op.version, op.params.model_dump(mode="json"), models)


def _take(batch: Batch, idx: np.ndarray) -> Batch:
    rows = idx.tolist()
    return {c: [v[i] for i in rows] for c, v in batch.items()}


def _sample(batch: Batch, noisy: np.ndarray, settings: EvalSettings, embedder: Embedder | None,
            embedding_cache: EmbeddingStore | None) -> tuple[np.ndarray, str]:
    n = noisy.size
    if settings.sample_rate_permille >= 1000:
        return np.arange(n), "none"
    rate = settings.sample_rate_permille / 1000.0
    if embedder is None:
        return uniform_sample(noisy, rate, settings.seed), "uniform"
    from site_agent.embeddings.cache import text_for_embedding
    from site_agent.sampling.dps import dps_sample

    texts = text_for_embedding(batch)
    emb = embedding_cache.get_or_compute(embedder, texts) if embedding_cache else embedder.encode(texts)
    idx = np.unique(np.asarray(dps_sample(emb, noisy, rate, settings.seed), dtype=np.int64))
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise DataError(f"the sampler returned indices outside [0, {n})")
    return idx, "dps"


def _merge(processed: Batch, clean: Batch, cols: list[str], target_ids: np.ndarray) -> Batch:
    """Surviving targets and clean rows, by input position. Operators keep row order, so the surviving
    targets' positions must be a strictly increasing subsequence of the targets'."""
    try:
        ids = [int(v) for v in processed[ROW_COLUMN]]
    except (KeyError, ValueError):
        ids = [-1]  # reported just below, without echoing the column's content
    if any(b <= a for a, b in zip(ids, ids[1:], strict=False)) or not set(ids) <= set(target_ids.tolist()):
        raise OperatorError("an operator reordered rows or altered the row-position column")
    clean_ids = [int(v) for v in clean[ROW_COLUMN]]
    out: Batch = {c: [] for c in cols}
    i = j = 0
    while i < len(ids) or j < len(clean_ids):
        if j >= len(clean_ids) or (i < len(ids) and ids[i] < clean_ids[j]):
            src, row, i = processed, i, i + 1
        else:
            src, row, j = clean, j, j + 1
        for c in cols:
            out[c].append(src[c][row])
    return out


def _with_rows(batch: Batch, idx: np.ndarray) -> Batch:
    part = _take(batch, idx)
    part[ROW_COLUMN] = [str(i) for i in idx.tolist()]
    return part


def execute(batch: Batch, strategy: Strategy, settings: EvalSettings, *, context: RunContext,
            embedder: Embedder | None = None, screener: Screener | None = None, cache: PrefixCache | None = None,
            embedding_cache: EmbeddingStore | None = None, memo: SelectionMemo | None = None) -> ExecutionResult:
    """Run ``strategy`` on ``batch`` with the accelerations ``settings`` switches on (see module doc)."""
    n_input = batch_size(batch)
    if ROW_COLUMN in batch:
        raise DataError(f"batch has the reserved column '{ROW_COLUMN}'")
    cols = list(batch)
    # Build and bind every operator first: a bad call fails before anything has run.
    operators = [create_operator(c.op, c.kwargs).bind(context) for c in strategy.calls]

    t0 = time.perf_counter()
    screened = settings.use_screening and screener is not None
    memo_key: tuple[object, ...] = (
        screened, screener.version if screened and screener is not None else None, settings.sample_rate_permille,
        settings.seed, embedder.name if embedder is not None else None)
    remembered = memo.get(memo_key) if memo is not None and memo.for_batch(batch) else None
    if remembered is not None:
        noisy, idx, sampler = remembered
        t0 = t1 = t2 = time.perf_counter()
    else:
        noisy = np.ones(n_input, dtype=bool)
        if screened:
            assert screener is not None
            noisy = np.asarray(screener.noisy_mask(batch), dtype=bool)
            if noisy.shape != (n_input,):
                raise DataError(f"the screener returned {noisy.size} labels for {n_input} rows")
        t1 = time.perf_counter()
        # Without screening every row is a target; sampling then stratifies nothing.
        idx, sampler = _sample(batch, noisy if screened else np.zeros(n_input, dtype=bool), settings, embedder,
                               embedding_cache)
        t2 = time.perf_counter()
        if memo is not None and memo.for_batch(batch):
            memo.put(memo_key, (noisy, idx, sampler))

    target_ids, clean_ids = idx[noisy[idx]], idx[~noisy[idx]]
    current = _with_rows(batch, target_ids)
    steps: list[StepStats] = []
    cached: list[bool] = []
    plan = None
    if cache is not None and settings.use_cache and operators and target_ids.size > 0:
        base = CacheBase(dataset=dataset_fingerprint(batch), sampler=sampler,
                         sample_rate_permille=settings.sample_rate_permille if sampler != "none" else 1000,
                         sample_seed=settings.seed if sampler != "none" else 0,
                         embedder=embedder.name if sampler == "dps" and embedder else "none",
                         screening=screener.version if screened and screener else "none", seed=context.seed)
        plan = (cache, base, [step_key(op, context) for op in operators])
    hit = plan[0].lookup(plan[1], plan[2]) if plan else None
    if hit is not None:
        current, steps, cached = hit.batch, list(hit.stats), [True] * hit.n_steps
    anchor = len(steps)  # steps covered by the longest prefix stored or reused so far
    stored = skipped = 0
    for i in range(len(steps), len(operators)):
        if target_ids.size == 0:  # nothing to process: models are not even loaded
            steps.append(StepStats(op=operators[i].name, kept=0, dropped=0, changed=0, seconds=0.0))
            cached.append(False)
            continue
        current, stat = operators[i].run(current)
        steps.append(stat)
        cached.append(False)
        if plan:
            if sum(s.seconds for s in steps[anchor:]) < plan[0].min_store_seconds:
                skipped += 1
                continue
            try:
                if plan[0].put(plan[1], plan[2][: i + 1], current, steps):
                    anchor, stored = i + 1, stored + 1
            except CacheError as e:
                log.warning("%s; continuing without storing this prefix", e)
    out = _merge(current, _with_rows(batch, clean_ids), cols, target_ids)
    t3 = time.perf_counter()

    n_output = len(out[cols[0]])
    log.debug("executed %d steps (%d reused, %d prefixes stored, %d skipped as cheap): %d in, %d sampled, "
              "%d targets, %d out", len(steps), hit.n_steps if hit else 0, stored, skipped, n_input, idx.size,
              target_ids.size, n_output)
    return ExecutionResult(
        batch=out, steps=tuple(steps), cached=tuple(cached), n_input=n_input, n_sampled=int(idx.size),
        n_targets=int(target_ids.size), n_clean=int(clean_ids.size), n_output=n_output, sampler=sampler,
        screened=screened, cache_hits=1 if hit else 0, steps_reused=hit.n_steps if hit else 0,
        seconds_saved=hit.seconds_saved if hit else 0.0, prefixes_stored=stored, prefixes_skipped=skipped,
        sampling_seconds=t2 - t1, screening_seconds=t1 - t0, processing_seconds=t3 - t2)
