"""The operator contract: one small class per operator, a typed params model, a pure ``apply``.

A batch is a plain dict of equal-length string columns; ``instruction`` and ``answer`` are required,
other columns are carried along untouched. ``apply`` returns the (possibly rewritten) rows and one keep
flag per row; ``run`` drops the rows flagged False and reports kept/dropped/changed counts and time, so
that cleaning (rewrite) and selection (keep flags) operators share one shape.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from protos.views import Team
from site_agent.errors import DataError, OperatorError, SiteError
from site_agent.operators.context import RunContext

__all__ = [
    "CJK_CHAR",
    "CJK_RANGES",
    "REQUIRED_COLUMNS",
    "Batch",
    "Operator",
    "OperatorParams",
    "StepStats",
    "batch_size",
]

Batch = dict[str, list[str]]
REQUIRED_COLUMNS = ("instruction", "answer")
# Characters of Chinese, Japanese and Korean text, for a regex class: kana, CJK ideographs (extension A, unified,
# compatibility) and Hangul syllables.
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
CJK_CHAR = re.compile(f"[{CJK_RANGES}]")  # one such character


def batch_size(batch: Batch) -> int:
    """Number of rows; raises DataError when a required column is missing or columns differ in length."""
    for col in REQUIRED_COLUMNS:
        if col not in batch:
            raise DataError(f"batch has no '{col}' column")
    lengths = {len(v) for v in batch.values()}
    if len(lengths) != 1:
        raise DataError(f"batch columns have different lengths: {sorted(lengths)}")
    return lengths.pop()


@dataclass(frozen=True)
class StepStats:
    """What one operator did to a batch: counts and wall time only, never content."""

    op: str
    kept: int
    dropped: int
    changed: int  # kept rows whose text the operator rewrote
    seconds: float


class OperatorParams(BaseModel):
    """Base for operator params models: unknown names rejected, values immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Operator(ABC):
    """One data-processing step. Subclasses set ``name``, ``team``, ``Params`` and implement ``apply``.

    ``Params`` fields must be int/float with both ``ge`` and ``le`` bounds, bool, or a ``Literal`` of
    identifier strings, each with a default: that is what the site can publish as a typed schema.
    """

    name: ClassVar[str]
    team: ClassVar[Team]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]]
    # What the operator needs from its RunContext: any of "embedder", "llm", "screener".
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: BaseModel) -> None:
        if not isinstance(params, type(self).Params):
            raise OperatorError(f"operator '{self.name}' got params of the wrong model")
        self.params = params
        self.context = RunContext()

    def bind(self, context: RunContext) -> Operator:
        """Give the operator the task's context; fails if it lacks something the operator requires."""
        missing = self.requires - context.provides()
        if missing:
            raise OperatorError(f"operator '{self.name}' needs {sorted(missing)}, not configured at this site")
        self.context = context
        return self

    @abstractmethod
    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        """Return the rows (same count, same order, possibly rewritten) and one keep flag per row."""

    def run(self, batch: Batch) -> tuple[Batch, StepStats]:
        n = batch_size(batch)
        start = time.perf_counter()
        try:
            out, keep = self.apply(batch)
        except SiteError:
            raise
        except Exception as e:
            # Operators touch record text: an arbitrary exception message could quote it, so only the
            # exception type travels (and the cause is dropped from the traceback).
            raise OperatorError(f"operator '{self.name}' failed with {type(e).__name__}") from None
        if len(keep) != n or set(out) != set(batch) or any(len(v) != n for v in out.values()):
            raise OperatorError(f"operator '{self.name}' returned a batch of the wrong shape")
        cols = list(batch)
        changed = sum(
            1 for i in range(n) if keep[i] and any(out[c][i] != batch[c][i] for c in cols)
        )
        kept_idx = [i for i in range(n) if keep[i]]
        result = {c: [out[c][i] for i in kept_idx] for c in cols}
        stats = StepStats(op=self.name, kept=len(kept_idx), dropped=n - len(kept_idx), changed=changed,
                          seconds=time.perf_counter() - start)
        return result, stats
