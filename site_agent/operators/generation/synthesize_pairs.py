"""``synthesize_pairs``: a site-local LLM writes new question-answer pairs modelled on the site's own rows.

``floor(ratio * n)`` new pairs are asked for; each prompt shows ``examples`` rows drawn (seeded) from the
usable rows of one language (a question, and an answer of at least 20 characters that ends with
terminal punctuation), so the new pair is in that language and style. A reply that does not parse as a
labelled pair, or whose question repeats an existing one, is dropped: the operator may add fewer rows
than asked, never more. Sampling uses ``temperature`` and the task seed.

The new rows are APPENDED after the input rows, which stay untouched and in order. ``Operator.run``
requires ``apply`` to keep the row count, so this operator overrides ``run``: ``apply`` is the identity
(the in-place part, which is nothing), and ``run`` adds the rows and reports ``kept`` = output rows,
``dropped`` = 0, ``changed`` = new rows. Columns other than instruction/answer are "" in new rows.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.errors import OperatorError, SiteError
from site_agent.llm.prompting import (
    PAIR_LABELS,
    Lang,
    chat_by_language,
    clip,
    detect_language,
    ends_complete,
    load_prompt,
    split_pair,
)
from site_agent.operators.base import Batch, Operator, OperatorParams, StepStats, batch_size
from site_agent.operators.registry import register_operator

__all__ = ["SynthesizePairs", "SynthesizePairsParams"]

log = logging.getLogger(__name__)
_EXAMPLE_CHARS = 600
_MIN_EXAMPLE_ANSWER = 20


class SynthesizePairsParams(OperatorParams):
    ratio: float = Field(default=0.1, ge=0.0, le=0.5)
    examples: int = Field(default=2, ge=1, le=4)
    temperature: float = Field(default=0.7, ge=0.0, le=1.5)
    max_new_tokens: int = Field(default=256, ge=32, le=512)


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


@register_operator
class SynthesizePairs(Operator):
    name = "synthesize_pairs"
    team = Team.GENERATION
    version = "1"
    Params = SynthesizePairsParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        """The input rows unchanged: new rows are added by :meth:`run` (see the module docstring)."""
        return batch, [True] * batch_size(batch)

    def synthesize(self, batch: Batch) -> list[tuple[str, str]]:
        """The new (instruction, answer) pairs for ``batch``; possibly fewer than asked."""
        p = cast(SynthesizePairsParams, self.params)
        n = batch_size(batch)
        wanted = math.floor(p.ratio * n + 1e-9)
        by_lang: dict[Lang, list[int]] = {"en": [], "zh": []}
        for i, (q, a) in enumerate(zip(batch["instruction"], batch["answer"], strict=True)):
            if q.strip() and len(a.strip()) >= _MIN_EXAMPLE_ANSWER and ends_complete(a):
                by_lang[detect_language(q, a)].append(i)
        usable = by_lang["en"] + by_lang["zh"]
        if wanted == 0 or not usable:
            return []
        rng = random.Random(self.context.seed)
        items: list[tuple[Lang, dict[str, str]]] = []
        for _ in range(wanted):
            anchor = usable[rng.randrange(len(usable))]
            lang = detect_language(batch["instruction"][anchor], batch["answer"][anchor])
            pool = [i for i in by_lang[lang] if i != anchor]
            chosen = [anchor, *rng.sample(pool, min(p.examples - 1, len(pool)))]
            q_label, a_label = PAIR_LABELS[lang]
            shown = "\n\n".join(f"{q_label}{clip(batch['instruction'][i], _EXAMPLE_CHARS)}\n"
                                f"{a_label}{clip(batch['answer'][i], _EXAMPLE_CHARS)}" for i in chosen)
            items.append((lang, {"examples": shown}))
        replies = chat_by_language(self.context.llm(), load_prompt(self.name, self.version), items,
                                   max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                                   seed=self.context.seed)
        seen = {_key(q) for q in batch["instruction"]}
        pairs: list[tuple[str, str]] = []
        for reply in replies:
            pair = split_pair(reply)
            if pair is not None and _key(pair[0]) not in seen:
                seen.add(_key(pair[0]))
                pairs.append(pair)
        log.info("synthesize_pairs: %d pairs asked for, %d added", wanted, len(pairs))
        return pairs

    def run(self, batch: Batch) -> tuple[Batch, StepStats]:
        n = batch_size(batch)
        start = time.perf_counter()
        try:
            pairs = self.synthesize(batch)
        except SiteError:
            raise
        except Exception as e:
            # as in Operator.run: the exception message could quote record text, so only its type travels
            raise OperatorError(f"operator '{self.name}' failed with {type(e).__name__}") from None
        out = {c: list(v) for c, v in batch.items()}
        for q, a in pairs:
            for c, values in out.items():
                values.append(q if c == "instruction" else a if c == "answer" else "")
        stats = StepStats(op=self.name, kept=n + len(pairs), dropped=0, changed=len(pairs),
                          seconds=time.perf_counter() - start)
        return out, stats
