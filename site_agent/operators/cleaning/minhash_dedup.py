"""``minhash_dedup``: drop near-duplicates (MinHash + LSH), keeping the first row of each cluster.

Each row's key text (``key``: the pair, the instruction or the answer) is NFKC-normalised, case-folded,
its punctuation turned into spaces (a re-post that swaps full-width for half-width punctuation, common
in Chinese exports, is the same text) and its whitespace collapsed, then cut into overlapping
*character* shingles of ``shingle_size`` — characters rather than words so that Chinese, which has no
spaces, is compared as finely as English. The defaults (3-character shingles, threshold 0.7) suit
short QA pairs, where a greeting or a typo already moves many 5-character shingles. A MinHash of
``num_perm`` permutations (seeded with the task's seed) estimates the Jaccard similarity of two
shingle sets; MinHashLSH finds candidate pairs above ``threshold`` without comparing every pair.

Rows are visited in order. A row is dropped when an earlier *kept* row is a candidate whose estimated
Jaccard similarity also reaches ``threshold`` (the check weeds out LSH's false positives); otherwise it
is kept and indexed. Rows whose key text is empty are kept and not indexed: emptiness is
``length_filter``'s business, and all empty texts would otherwise collapse into one.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any, Literal, cast

from pydantic import Field

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["MinhashDedup", "MinhashDedupParams", "shingles"]


def _key_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] == "P" else ch for ch in text)
    return " ".join(text.split())


def shingles(text: str, size: int) -> set[str]:
    """Overlapping character shingles of the text normalised for comparison (see the module docstring)."""
    text = _key_text(text)
    if len(text) <= size:
        return {text} if text else set()
    return {text[i:i + size] for i in range(len(text) - size + 1)}


@functools.lru_cache(maxsize=256)
def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows per band) for these settings. Finding them integrates the false
    positive/negative curves for every split (~0.1 s); a search builds the same index over and over."""
    from datasketch import MinHashLSH

    # Candidates are verified, so a false positive only costs a comparison while a false negative is
    # a missed duplicate: weigh misses more than datasketch's default even split.
    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.2, 0.8))
    except ValueError:  # a high threshold with few permutations leaves fewer than two bands
        return 2, num_perm // 2
    return int(lsh.b), int(lsh.r)


def _lsh(threshold: float, num_perm: int) -> Any:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=num_perm, params=_bands(threshold, num_perm))


class MinhashDedupParams(OperatorParams):
    threshold: float = Field(default=0.7, ge=0.5, le=0.99)
    num_perm: int = Field(default=128, ge=16, le=256)
    shingle_size: int = Field(default=3, ge=1, le=20)
    key: Literal["pair", "instruction", "answer"] = "pair"


@register_operator
class MinhashDedup(Operator):
    name = "minhash_dedup"
    team = Team.CLEANING
    version = "1"
    Params = MinhashDedupParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        from datasketch import MinHash

        p = cast(MinhashDedupParams, self.params)
        seed = self.context.seed % (2**32)
        lsh = _lsh(p.threshold, p.num_perm)
        kept: dict[str, MinHash] = {}
        keep: list[bool] = []
        for i, (q, a) in enumerate(zip(batch["instruction"], batch["answer"], strict=True)):
            text = {"pair": q + "\n" + a, "instruction": q, "answer": a}[p.key]
            grams = shingles(text, p.shingle_size)
            if not grams:
                keep.append(True)
                continue
            m = MinHash(num_perm=p.num_perm, seed=seed)
            m.update_batch([g.encode("utf-8") for g in grams])
            if any(kept[c].jaccard(m) >= p.threshold for c in lsh.query(m)):
                keep.append(False)
                continue
            key = str(i)
            lsh.insert(key, m)
            kept[key] = m
            keep.append(True)
        return batch, keep
