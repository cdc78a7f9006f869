"""``rewrite_pair``: a site-local LLM improves a question and its answer together, in one call.

Every row with a question and an answer is rewritten, or with ``only_if_short`` only those whose answer
is shorter than ``short_chars``. The reply must be a labelled pair (``Question: … Answer: …`` or
``问题：… 回答：…``); both halves pass the checks of ``rewrite_question`` and ``rewrite_answer`` (the
answer keeps at least ``min_keep_ratio`` of the original length), or the row is kept as it was: a pair
is never half rewritten. Greedy decoding; no row is dropped.
"""

from __future__ import annotations

import logging
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.llm.prompting import ask_about_pairs, load_prompt, split_pair
from site_agent.operators.base import Batch, Operator, OperatorParams, batch_size
from site_agent.operators.optimization.rewrite_answer import accept_answer
from site_agent.operators.optimization.rewrite_question import accept_question
from site_agent.operators.registry import register_operator

__all__ = ["RewritePair", "RewritePairParams"]

log = logging.getLogger(__name__)


class RewritePairParams(OperatorParams):
    only_if_short: bool = False
    short_chars: int = Field(default=80, ge=1, le=2000)
    min_keep_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    max_new_tokens: int = Field(default=320, ge=32, le=768)


@register_operator
class RewritePair(Operator):
    name = "rewrite_pair"
    team = Team.OPTIMIZATION
    version = "1"
    Params = RewritePairParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(RewritePairParams, self.params)
        n = batch_size(batch)
        questions, answers = batch["instruction"], batch["answer"]
        todo, replies = ask_about_pairs(self.context.llm(), load_prompt(self.name, self.version), questions,
                                        answers, only_if_short=p.only_if_short, short_chars=p.short_chars,
                                        max_new_tokens=p.max_new_tokens, seed=self.context.seed)
        if not todo:
            return batch, [True] * n
        out_q, out_a = list(questions), list(answers)
        for i, reply in zip(todo, replies, strict=True):
            pair = split_pair(reply)
            if pair is None:
                continue
            q = accept_question(questions[i], pair[0], answers[i])
            a = accept_answer(answers[i], pair[1], questions[i], p.min_keep_ratio)
            if q is not None and a is not None:
                out_q[i], out_a[i] = q, a
        log.info("rewrite_pair: %d rows rewritten of %d tried",
                 sum(out_q[i] != questions[i] or out_a[i] != answers[i] for i in todo), len(todo))
        return {**batch, "instruction": out_q, "answer": out_a}, [True] * n
