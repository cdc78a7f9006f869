"""A cheap, rule-based data-quality proxy: the fast evaluator, NOT the LoRA evaluator.

It trains nothing and knows nothing about medicine; it only asks whether each row shows one of a few
well-known defects of instruction-tuning data. It is meant for demos, tests and quick smoke searches;
the LoRA evaluator (same interface) measures what actually matters, a model trained on the data.

A row is *defective* when any of these independent checks fires (on instruction or answer):

- ``markup``      an HTML/XML tag (``<p>``, ``</div>``, ``<br/>``) or a character entity (``&amp;``,
                  ``&#8217;``) is left in the text
- ``garbled``     a control character (other than newline/tab), the replacement character U+FFFD, or a
                  mojibake pair such as ``Ã©``, ``Â°`` or ``â€`` (UTF-8 read as cp1252/latin-1)
- ``whitespace``  unnormalised whitespace: doubled spaces, tabs, carriage returns, no-break or
                  zero-width spaces, three or more line breaks, spaces around a line break, or
                  untrimmed ends
- ``short``       an instruction under 3 characters, or an answer under ``min_answer_chars`` characters
                  (half that for Chinese/Japanese/Korean text, which packs more per character) or with
                  fewer than 2 tokens (empty and truncated answers)
- ``repetition``  a loop in the answer: one token 4+ times in a row, or at least ``min_repeats`` copies of
                  one token 3-gram making up a ``max_repeated_share`` or more of all its 3-grams
- ``contact``     a personal or commercial contact left in the text: a mobile or landline number, an
                  18-digit ID number, an e-mail address, a URL, or a messaging handle (微信/QQ/WeChat)

Tokens are whitespace-separated words, except that each CJK character is a token of its own.
- ``duplicate``   the same pair as an earlier row of the same batch, ignoring case and whitespace

Score. With ``n_raw`` rows before processing and, after it, ``good`` non-defective and ``kept`` rows::

    quality(batch) = (good / n_raw) * (good / kept)        (0 when nothing is kept)
    score          = quality(processed) - quality(raw)     in [-1, 1] when no rows are added

The first factor is how much usable data survives (recall), the second how clean what survives is
(precision). So dropping only defective rows raises the score (precision goes to 1, recall stays),
repairing a defective row in place raises it more (both grow), dropping clean rows lowers it, and
dropping everything scores ``-quality(raw) <= 0``: it never wins. The metric is ``Metric.QUALITY_PROXY``.

Fixed training budget (option ``budget_share`` = b, 0 < b <= 1; default 0: off). A LoRA trained for a fixed
number of steps sees the same number of rows however many are kept, so losing rows costs it nothing until
fewer remain than it would see; what it learns from is the share of clean rows among those it sees. With
b = steps x batch size / rows (the share of the rows such a training sees)::

    quality(batch) = (good / kept) * min(1, (kept / n_raw) / b)

Precision, discounted only when fewer than a share b of the rows is kept. Dropping the defective rows then
counts for about as much as repairing them, and dropping clean rows costs nothing above the budget.
``bench/bench_proxy.py`` measures how each score ranks strategies against SmolLM2-135M LoRAs trained on their
output (40 steps of 8 on a site's 600 rows, b = 0.53; results in ``bench/results/proxy_medium*.md``): on the two
most damaged benchmark sites this score ordered every pair of seven strategies the LoRA could tell apart as the
LoRA did and picked its best; the default score did so on one of them and on the other picked a repair the LoRA
could not tell from no processing. On the third site (20% damaged) both picked the LoRA's best and ordered 71%
(this score) and 64% (default) of those pairs alike.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from protos.views import EvalSettings, EvaluatorKind, Metric
from site_agent.errors import EvaluationError
from site_agent.evaluation.base import EvalOutcome, register_evaluator
from site_agent.operators.base import CJK_CHAR, CJK_RANGES, Batch, batch_size

__all__ = ["CHECKS", "MEMO_ROWS", "ProxyOptions", "QualityProxyEvaluator", "quality", "row_defects"]

CHECKS = ("markup", "garbled", "whitespace", "short", "repetition", "duplicate", "contact")
_TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")
_CONTACT = re.compile(
    r"(?<!\d)1[3-9]\d{9}(?!\d)|(?<!\d)\d{17}[\dXx](?!\d)|(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"
    r"|[\w.+-]+@[\w-]+\.[\w.]+|https?://|www\.|微信|ＶＸ|(?<![A-Za-z])(?:QQ|WeChat|VX|vx)(?![A-Za-z])")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())

_MARKUP = re.compile(
    r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|<!--"
    r"|&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});"
)
# Independent of the normalize_text operator on purpose: a handful of tell-tale pairs, not a repair.
_GARBLED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]|[ÃÂ][\u00a0-\u00bf]|â€|Ã[\u0080-\u009f]")
_WHITESPACE = re.compile(r"[ \t]{2,}|[\t\r\u00a0\u200b\u200c\u200d\u2060\ufeff]|\n{3,}|[ ]\n|\n[ ]|^\s|\s$")


@dataclass(frozen=True)
class ProxyOptions:
    """Thresholds of the checks; the defaults suit short QA answers."""

    min_answer_chars: int = 20
    min_repeats: int = 3
    max_repeated_share: float = 0.3
    budget_share: float = 0.0  # 0: recall x precision; (0, 1]: the fixed-training-budget score (module docstring)

    def __post_init__(self) -> None:
        if self.min_answer_chars < 0 or self.min_repeats < 2 or not 0.0 < self.max_repeated_share <= 1.0:
            raise EvaluationError("quality proxy options out of range")
        if not 0.0 <= self.budget_share <= 1.0:
            raise EvaluationError("quality proxy option budget_share must be within [0, 1] (0: off)")


def _repetitive(answer: str, min_repeats: int, max_repeated_share: float) -> bool:
    words = _tokens(answer)
    run = 1
    for prev, cur in zip(words, words[1:], strict=False):
        run = run + 1 if cur == prev else 1
        if run >= 4:
            return True
    grams = Counter(zip(words, words[1:], words[2:], strict=False))
    total = sum(grams.values())
    if not total:
        return False
    top = max(grams.values())
    repeated = sum(c for c in grams.values() if c > 1)
    return top >= min_repeats and repeated / total >= max_repeated_share


RowChecks = Callable[[str, str], tuple[frozenset[str], tuple[str, str]]]
# How many rows' checks an evaluator remembers (see QualityProxyEvaluator): it holds references to their texts.
MEMO_ROWS = 1 << 16


def _row_checks(q: str, a: str, options: ProxyOptions) -> tuple[frozenset[str], tuple[str, str]]:
    """The checks of one row that need no other row, and its key for the duplicate check."""
    found: set[str] = set()
    if _MARKUP.search(q) or _MARKUP.search(a):
        found.add("markup")
    if _GARBLED.search(q) or _GARBLED.search(a):
        found.add("garbled")
    if _WHITESPACE.search(q) or _WHITESPACE.search(a):
        found.add("whitespace")
    min_chars = options.min_answer_chars // 2 if CJK_CHAR.search(a) else options.min_answer_chars
    if len(q.strip()) < 3 or len(a.strip()) < min_chars or len(_tokens(a)) < 2:
        found.add("short")
    if _CONTACT.search(q) or _CONTACT.search(a):
        found.add("contact")
    if _repetitive(a, options.min_repeats, options.max_repeated_share):
        found.add("repetition")
    return frozenset(found), (" ".join(q.casefold().split()), " ".join(a.casefold().split()))


def row_defects(batch: Batch, options: ProxyOptions = ProxyOptions(), checks: RowChecks | None = None
                ) -> list[set[str]]:
    """The defect checks that fire for each row (an empty set means the row is fine). ``checks``: the per-row
    checks for ``options``, e.g. a memoised one (QualityProxyEvaluator's); default: computed afresh."""
    batch_size(batch)  # a missing column or a ragged batch: DataError
    check = checks if checks is not None else functools.partial(_row_checks, options=options)
    seen: set[tuple[str, str]] = set()
    out: list[set[str]] = []
    for q, a in zip(batch["instruction"], batch["answer"], strict=True):
        found, key = check(q, a)
        row = set(found)
        if key in seen:
            row.add("duplicate")
        seen.add(key)
        out.append(row)
    return out


def quality(batch: Batch, n_raw: int, options: ProxyOptions = ProxyOptions(), checks: RowChecks | None = None
            ) -> float:
    """(good / n_raw) * (good / kept), or with ``budget_share`` b: (good / kept) * min(1, kept / n_raw / b); see
    the module docstring."""
    if n_raw <= 0:
        raise EvaluationError("quality needs a positive raw row count")
    defects = row_defects(batch, options, checks)
    kept = len(defects)
    if kept == 0:
        return 0.0
    good = sum(1 for d in defects if not d)
    if options.budget_share > 0.0:
        return (good / kept) * min(1.0, kept / n_raw / options.budget_share)
    return (good / n_raw) * (good / kept)


class QualityProxyEvaluator:
    """Scores processed data against raw data with :func:`quality`; deterministic, CPU, milliseconds.

    It remembers the checks of the last :data:`MEMO_ROWS` distinct rows it saw: a search scores the same rows
    over and over (the unprocessed baseline of every task, every row a strategy leaves as it was), and looking
    a row up costs a hash where checking it costs ~0.3 ms. Same verdicts either way; the duplicate check is
    still made per batch. The memo lives as long as the evaluator, in this process only.
    """

    kind: EvaluatorKind = EvaluatorKind.QUALITY_PROXY

    def __init__(self, min_answer_chars: int = 20, min_repeats: int = 3,
                 max_repeated_share: float = 0.3, budget_share: float = 0.0) -> None:
        self.options = ProxyOptions(min_answer_chars, min_repeats, max_repeated_share, budget_share)
        self._checks: RowChecks = functools.lru_cache(maxsize=MEMO_ROWS)(
            functools.partial(_row_checks, options=self.options))

    def evaluate(self, processed: Batch, raw: Batch, settings: EvalSettings) -> EvalOutcome:
        if settings.evaluator is not EvaluatorKind.QUALITY_PROXY or settings.metric is not Metric.QUALITY_PROXY:
            raise EvaluationError("the quality proxy evaluator only reports the quality_proxy metric")
        start = time.perf_counter()
        n_raw = batch_size(raw)
        if n_raw == 0:
            raise EvaluationError("cannot score against an empty raw batch")
        score = quality(processed, n_raw, self.options, self._checks) - quality(raw, n_raw, self.options, self._checks)
        return EvalOutcome(score=score, metric=Metric.QUALITY_PROXY, seconds=time.perf_counter() - start)


register_evaluator(EvaluatorKind.QUALITY_PROXY, QualityProxyEvaluator)
