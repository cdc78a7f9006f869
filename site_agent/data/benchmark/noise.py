"""Seeded noise injection with a label per row: which damage a row got, or ``clean``.

A share ``rate`` of the rows is damaged; how that share divides among the :data:`NOISE_TYPES` is the
``mix`` (relative weights), allocated exactly by largest remainder so a 20 % rate on 4 000 rows damages
exactly 800. Each damaged row keeps its place; duplicates copy an *earlier* clean row of the batch (so the
original is still there to be found), and a mismatched answer comes from a different subject.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from site_agent.data.benchmark import corruptions as c
from site_agent.data.benchmark.qa import QAPair
from site_agent.errors import DataError

__all__ = ["CLEAN", "MAX_NOISE_RATE", "NOISE_TYPES", "LabelledRow", "allocate", "inject_noise", "validate_mix"]

CLEAN = "clean"
MAX_NOISE_RATE = 0.9
NOISE_TYPES: tuple[str, ...] = (
    "exact_duplicate",
    "near_duplicate",
    "html_residue",
    "pii",
    "truncated_answer",
    "empty_or_one_word_answer",
    "qa_mismatch",
    "advertising_spam",
    "repetition_loop",
    "garbled_encoding",
)
_REWRITES: dict[str, Callable[[str, str, random.Random], tuple[str, str]]] = {
    "html_residue": c.html_residue,
    "pii": c.pii,
    "truncated_answer": c.truncated_answer,
    "empty_or_one_word_answer": c.empty_or_one_word_answer,
    "advertising_spam": c.advertising_spam,
    "repetition_loop": c.repetition_loop,
    "garbled_encoding": c.garbled_encoding,
}


@dataclass(frozen=True)
class LabelledRow:
    instruction: str
    answer: str
    label: str
    department: str
    subject: str


def validate_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """The mix as plain floats; DataError naming the type when a name is unknown or a weight negative."""
    out: dict[str, float] = {}
    for name, weight in mix.items():
        if name not in NOISE_TYPES:
            raise DataError(f"unknown noise type '{name}' (known: {', '.join(NOISE_TYPES)})")
        if not weight >= 0:
            raise DataError(f"noise weight for '{name}' must be >= 0")
        out[name] = float(weight)
    return out


def allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` (largest remainder); every positive weight gets >= 1 when there are
    at least as many items as positive weights, so a rare type is still present in a small site."""
    names = [n for n in NOISE_TYPES if weights.get(n, 0.0) > 0]
    if total <= 0 or not names:
        return {}
    s = sum(weights[n] for n in names)
    exact = {n: total * weights[n] / s for n in names}
    counts = {n: int(exact[n]) for n in names}
    by_remainder = sorted(names, key=lambda n: (-(exact[n] - counts[n]), NOISE_TYPES.index(n)))
    for n in by_remainder[:total - sum(counts.values())]:
        counts[n] += 1
    if total >= len(names):
        for n in names:
            if counts[n] == 0:  # borrow from the largest, which a single row hardly changes
                counts[max(names, key=lambda m: (counts[m], -NOISE_TYPES.index(m)))] -= 1
                counts[n] = 1
    return counts


def _other_subject(pairs: Sequence[QAPair], i: int, rng: random.Random) -> int:
    for _ in range(64):
        j = rng.randrange(len(pairs))
        if pairs[j].subject != pairs[i].subject:
            return j
    return next((j for j in range(len(pairs)) if pairs[j].subject != pairs[i].subject), (i + 1) % len(pairs))


def inject_noise(pairs: Sequence[QAPair], *, rate: float, mix: Mapping[str, float],
                 seed: int | str) -> list[LabelledRow]:
    """The rows of ``pairs`` with ``round(rate * n)`` of them damaged per ``mix``; deterministic for ``seed``."""
    if not 0.0 <= rate <= MAX_NOISE_RATE:
        raise DataError(f"noise rate must be within [0, {MAX_NOISE_RATE}], got {rate}")
    weights = validate_mix(mix)
    n = len(pairs)
    n_noisy = min(round(rate * n), max(n - 1, 0))  # keep one clean row to copy duplicates from
    if n_noisy and not any(w > 0 for w in weights.values()):
        raise DataError("noise mix has no positive weight")
    rng = random.Random(f"noise:{seed}")
    types = [t for t, k in allocate(n_noisy, weights).items() for _ in range(k)]
    rng.shuffle(types)
    assigned = dict(zip(rng.sample(range(n), n_noisy), types, strict=True))
    clean_rows = [i for i in range(n) if i not in assigned]
    rows: list[LabelledRow] = []
    for i, p in enumerate(pairs):
        label = assigned.get(i, CLEAN)
        q, a, department, subject = p.instruction, p.answer, p.department, p.subject
        if label in ("exact_duplicate", "near_duplicate"):
            # the copy of an EARLIER clean row, as in a scraped dump where the repeat comes after the
            # original (and as exact_dedup keeps the first); a row before every clean row stays clean
            earlier = bisect.bisect_left(clean_rows, i)
            if earlier == 0:
                label = CLEAN
            else:
                src = pairs[clean_rows[rng.randrange(earlier)]]
                q, a, department, subject = src.instruction, src.answer, src.department, src.subject
                if label == "near_duplicate":
                    q, a = c.near_duplicate(q, a, rng)
        elif label == "qa_mismatch":
            a = pairs[_other_subject(pairs, i, rng)].answer
        elif label != CLEAN:
            q, a = _REWRITES[label](q, a, rng)
        rows.append(LabelledRow(q, a, label, department, subject))
    return rows
