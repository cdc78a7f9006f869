"""Content addresses of cached intermediate datasets.

A prefix result is the batch a strategy's first *k* operator calls turn a set of rows into. It is fully
determined by: the input rows (their fingerprint), how rows were sampled (rate, seed, sampler, embedder),
which rows were screened in as processing targets (screening model version), the exact operator prefix
(name, canonical params with defaults filled in, operator version, and the identity of any model a step
uses) and the seed. The key is the SHA-256 of the canonical JSON of all of that, so two strategies that
share their first *k* calls share the key of that prefix, and any change upstream changes every key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from protos.views import ParamValue
from site_agent.operators.base import Batch

__all__ = ["KEY_FORMAT", "CacheBase", "StepKey", "dataset_fingerprint", "prefix_key"]

# Bumped whenever what a key covers, or how an entry is stored, changes: old entries then simply miss.
KEY_FORMAT = 1


@dataclass(frozen=True)
class CacheBase:
    """Everything upstream of the operators that decides which rows reach them."""

    dataset: str  # dataset_fingerprint() of the site's input rows
    sampler: str = "none"  # "none" (all rows), "dps" or "uniform"
    sample_rate_permille: int = 1000
    sample_seed: int = 0
    embedder: str = "none"  # name of the embedder DPS sampled with
    screening: str = "none"  # version of the screening model that chose the targets, "none" without PTS
    seed: int = 0  # the RunContext seed the operators run with


@dataclass(frozen=True)
class StepKey:
    """One operator call as the cache sees it. ``params`` holds every parameter, defaults included, so
    that ``f()`` and ``f(x=default)`` share entries; ``models`` names what the step runs on, e.g.
    ``(("llm", "smollm2-135m"),)``, so a different site model never reuses another's output."""

    op: str
    version: str
    params: tuple[tuple[str, ParamValue], ...] = ()
    models: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, op: str, version: str, params: Mapping[str, ParamValue],
           models: Mapping[str, str] | None = None) -> StepKey:
        return cls(op=op, version=version, params=tuple(sorted(params.items())),
                   models=tuple(sorted((models or {}).items())))

    def canonical(self) -> dict[str, Any]:
        return {"op": self.op, "version": self.version, "params": dict(self.params), "models": dict(self.models)}


def prefix_key(base: CacheBase, steps: Sequence[StepKey]) -> str:
    """The hex SHA-256 naming the result of running ``steps`` (in order) on ``base``'s rows."""
    doc = {"format": KEY_FORMAT, "base": asdict(base), "steps": [s.canonical() for s in steps]}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def dataset_fingerprint(batch: Batch) -> str:
    """SHA-256 over every column name and value, length-prefixed so that no two batches collide by
    shifting text across a boundary; columns are taken in sorted order, rows in their order."""
    h = hashlib.sha256()
    for col in sorted(batch):
        values = batch[col]
        name = col.encode()
        h.update(b"C%d:%d:" % (len(name), len(values)) + name)
        for v in values:
            data = v.encode("utf-8", "surrogatepass")
            h.update(b"%d:" % len(data))
            h.update(data)
    return h.hexdigest()
