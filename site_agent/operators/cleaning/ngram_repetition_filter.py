"""``ngram_repetition_filter``: drop rows whose text repeats itself, as degenerate generations do.

Two measures, either of which drops a row:

- The *repetition ratio*: the share of a text's n-gram occurrences that belong to an n-gram seen more
  than once in it (the Gopher / Data-Juicer definition): 0 for text that never repeats a phrase, close
  to 1 for a phrase looping many times. Dropped above ``max_ratio``.
- The longest *consecutive run*: how many times in a row one unit of 2-50 characters repeats
  ("多喝热水。多喝热水。多喝热水。..."). A loop that starts after a long sound prefix is diluted in the
  ratio but not in the run. Dropped when some unit repeats more than ``max_consecutive`` times in a
  row (0 turns this measure off).

For the ratio, every CJK character is a token of its own (Chinese has no spaces between words) and
other tokens are lower-cased runs of letters and digits. A text is measured on n-grams of ``char_n``
tokens when at least a third of its visible characters are CJK, and of ``word_n`` tokens otherwise; a
text with fewer tokens than n has ratio 0. ``fields`` chooses whether only the answer is measured
(where generation loops show up) or the instruction as well. Rows are never rewritten.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal, cast

from pydantic import Field

from protos.views import Team
from site_agent.operators.base import CJK_CHAR, CJK_RANGES, Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["NgramRepetitionFilter", "NgramRepetitionFilterParams", "is_cjk_text", "longest_run",
           "repetition_ratio"]

_TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\W{CJK_RANGES}]+")
_SPACE = re.compile(r"\s+")
_CJK_SHARE = 1 / 3
_RUN = re.compile(r"(.{2,50}?)\1+", re.DOTALL)


def is_cjk_text(text: str) -> bool:
    """True when at least a third of the visible characters are CJK (Han, kana, hangul)."""
    visible = len(_SPACE.sub("", text))
    return visible > 0 and len(CJK_CHAR.findall(text)) >= _CJK_SHARE * visible


def _ratio(tokens: list[str], n: int) -> float:
    if len(tokens) < n:
        return 0.0
    counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return sum(c for c in counts.values() if c > 1) / total


def repetition_ratio(text: str, word_n: int = 3, char_n: int = 5) -> float:
    """Share of n-gram occurrences in ``text`` that are repeats (single-character tokens for CJK)."""
    return _ratio(_TOKEN.findall(text.casefold()), char_n if is_cjk_text(text) else word_n)


def longest_run(text: str) -> int:
    """Most consecutive repetitions of one 2-50 character unit in ``text`` (whitespace collapsed); 1 if none."""
    text = _SPACE.sub(" ", text.casefold())
    best = 1
    for m in _RUN.finditer(text):
        best = max(best, len(m.group(0)) // len(m.group(1)))
    return best


class NgramRepetitionFilterParams(OperatorParams):
    word_n: int = Field(default=3, ge=1, le=10)
    char_n: int = Field(default=5, ge=2, le=20)
    max_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    max_consecutive: int = Field(default=5, ge=0, le=100)
    fields: Literal["answer", "both"] = "answer"


@register_operator
class NgramRepetitionFilter(Operator):
    name = "ngram_repetition_filter"
    team = Team.CLEANING
    version = "1"
    Params = NgramRepetitionFilterParams

    def _repetitive(self, text: str) -> bool:
        p = cast(NgramRepetitionFilterParams, self.params)
        if repetition_ratio(text, p.word_n, p.char_n) > p.max_ratio:
            return True
        return p.max_consecutive > 0 and longest_run(text) > p.max_consecutive

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(NgramRepetitionFilterParams, self.params)
        cols = ("answer",) if p.fields == "answer" else ("instruction", "answer")
        keep = [True] * len(batch["answer"])
        for col in cols:
            for i, text in enumerate(batch[col]):
                if keep[i] and self._repetitive(text):
                    keep[i] = False
        return batch, keep
