"""``rewrite_answer``: a site-local LLM rewrites answers to be clear, complete and fluent.

Every row with a question and an answer is rewritten, or with ``only_if_short`` only those whose answer
is shorter than ``short_chars``. A rewrite shorter than ``min_keep_ratio`` times the original answer
is rejected (rewriting must not drop content), as is one that is empty after clean-up or copies the
question; a rejected row is kept as it was. Greedy decoding; no row is dropped.
"""

from __future__ import annotations

import logging
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.llm.prompting import ask_about_pairs, clean_reply, load_prompt, split_pair
from site_agent.operators.base import Batch, Operator, OperatorParams, batch_size
from site_agent.operators.registry import register_operator

__all__ = ["RewriteAnswer", "RewriteAnswerParams", "accept_answer"]

log = logging.getLogger(__name__)


class RewriteAnswerParams(OperatorParams):
    only_if_short: bool = False
    short_chars: int = Field(default=80, ge=1, le=2000)
    min_keep_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=32, le=512)


def accept_answer(original: str, reply: str, question: str, min_keep_ratio: float) -> str | None:
    """The cleaned rewrite, or None when it must be rejected."""
    pair = split_pair(reply)  # the model restated the question before answering
    text = pair[1] if pair else clean_reply(reply)
    if not text or text.casefold() == question.strip().casefold():
        return None
    return text if len(text) >= min_keep_ratio * len(original.strip()) else None


@register_operator
class RewriteAnswer(Operator):
    name = "rewrite_answer"
    team = Team.OPTIMIZATION
    version = "1"
    Params = RewriteAnswerParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(RewriteAnswerParams, self.params)
        n = batch_size(batch)
        questions, answers = batch["instruction"], batch["answer"]
        todo, replies = ask_about_pairs(self.context.llm(), load_prompt(self.name, self.version), questions,
                                        answers, only_if_short=p.only_if_short, short_chars=p.short_chars,
                                        max_new_tokens=p.max_new_tokens, seed=self.context.seed)
        if not todo:
            return batch, [True] * n
        out = list(answers)
        for i, reply in zip(todo, replies, strict=True):
            text = accept_answer(answers[i], reply, questions[i], p.min_keep_ratio)
            if text is not None:
                out[i] = text
        log.info("rewrite_answer: %d rows rewritten of %d tried", sum(out[i] != answers[i] for i in todo),
                 len(todo))
        return {**batch, "answer": out}, [True] * n
