"""``rewrite_question``: a site-local LLM rewrites questions to be clear, complete and fluent.

Every row with a question is rewritten, or with ``only_if_short`` only those shorter than
``short_chars``; the answer goes into the prompt as context only. The rewrite keeps its first
paragraph. It is rejected, and the row kept as it was, when it is empty after clean-up, copies the
answer, drops the question mark of a question that had one (the model answered instead of
rewriting), or runs far longer than the original. Greedy decoding; no row is dropped.
"""

from __future__ import annotations

import logging
import re
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.llm.prompting import chat_by_language, clean_reply, clip, detect_language, load_prompt
from site_agent.operators.base import Batch, Operator, OperatorParams, batch_size
from site_agent.operators.registry import register_operator

__all__ = ["RewriteQuestion", "RewriteQuestionParams", "accept_question"]

log = logging.getLogger(__name__)
_QUESTION_CHARS, _ANSWER_CHARS = 1500, 600
_QMARK = re.compile(r"[?？]")


class RewriteQuestionParams(OperatorParams):
    only_if_short: bool = False
    short_chars: int = Field(default=30, ge=1, le=1000)
    max_new_tokens: int = Field(default=96, ge=16, le=256)


def accept_question(original: str, reply: str, answer: str) -> str | None:
    """The cleaned rewrite, or None when it must be rejected."""
    text = clean_reply(reply)
    text = clean_reply(text.split("\n\n", 1)[0]) if text else ""
    if not text or text.casefold() == answer.strip().casefold():
        return None
    if _QMARK.search(original) and not _QMARK.search(text):
        return None
    return text if len(text) <= 3 * len(original.strip()) + 200 else None


@register_operator
class RewriteQuestion(Operator):
    name = "rewrite_question"
    team = Team.OPTIMIZATION
    version = "1"
    Params = RewriteQuestionParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(RewriteQuestionParams, self.params)
        n = batch_size(batch)
        questions, answers = batch["instruction"], batch["answer"]
        todo = [i for i in range(n) if questions[i].strip()
                and (not p.only_if_short or len(questions[i].strip()) < p.short_chars)]
        if not todo:
            return batch, [True] * n
        items = [(detect_language(questions[i]), {"instruction": clip(questions[i], _QUESTION_CHARS),
                                                  "answer": clip(answers[i], _ANSWER_CHARS)}) for i in todo]
        replies = chat_by_language(self.context.llm(), load_prompt(self.name, self.version), items,
                                   max_new_tokens=p.max_new_tokens, seed=self.context.seed)
        out = list(questions)
        for i, reply in zip(todo, replies, strict=True):
            text = accept_question(questions[i], reply, answers[i])
            if text is not None:
                out[i] = text
        log.info("rewrite_question: %d rows rewritten of %d tried", sum(out[i] != questions[i] for i in todo),
                 len(todo))
        return {**batch, "instruction": out}, [True] * n
