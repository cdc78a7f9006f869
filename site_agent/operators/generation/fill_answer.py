"""``fill_answer``: a site-local LLM writes the answer of rows whose answer is missing or unusable.

A row needs an answer when its stripped answer is shorter than ``min_answer_chars`` (empty included),
is a single word (English; Chinese has no spaces, so length decides there), or looks cut off: shorter
than ``truncated_below_chars`` and ending without terminal punctuation (``.!?。！？…``). Rows without a
usable question are left alone (``fill_question`` handles those). A reply that is empty after clean-up,
no longer than the old answer, or a copy of the question leaves the row as it was. Decoding is greedy,
so one seed and one model give one output. No row is dropped.
"""

from __future__ import annotations

import logging
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.llm.prompting import (
    chat_by_language,
    clean_reply,
    clip,
    detect_language,
    ends_complete,
    has_cjk,
    load_prompt,
    split_pair,
)
from site_agent.operators.base import Batch, Operator, OperatorParams, batch_size
from site_agent.operators.registry import register_operator

__all__ = ["FillAnswer", "FillAnswerParams", "needs_answer"]

log = logging.getLogger(__name__)
_QUESTION_CHARS = 1500  # prompt context bound


class FillAnswerParams(OperatorParams):
    min_answer_chars: int = Field(default=4, ge=1, le=200)
    truncated_below_chars: int = Field(default=60, ge=0, le=1000)
    max_new_tokens: int = Field(default=192, ge=16, le=512)


def needs_answer(answer: str, min_answer_chars: int, truncated_below_chars: int) -> bool:
    a = answer.strip()
    if len(a) < min_answer_chars:
        return True
    if not has_cjk(a) and len(a.split()) <= 1:
        return True
    return len(a) < truncated_below_chars and not ends_complete(a)


@register_operator
class FillAnswer(Operator):
    name = "fill_answer"
    team = Team.GENERATION
    version = "1"
    Params = FillAnswerParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(FillAnswerParams, self.params)
        n = batch_size(batch)
        questions, answers = batch["instruction"], batch["answer"]
        todo = [i for i in range(n) if questions[i].strip()
                and needs_answer(answers[i], p.min_answer_chars, p.truncated_below_chars)]
        if not todo:
            return batch, [True] * n
        items = [(detect_language(questions[i]), {"instruction": clip(questions[i], _QUESTION_CHARS)}) for i in todo]
        replies = chat_by_language(self.context.llm(), load_prompt(self.name, self.version), items,
                                   max_new_tokens=p.max_new_tokens, seed=self.context.seed)
        out = list(answers)
        for i, reply in zip(todo, replies, strict=True):
            pair = split_pair(reply)  # the model restated the question before answering
            text = pair[1] if pair else clean_reply(reply)
            if len(text) > len(answers[i].strip()) and text.casefold() != questions[i].strip().casefold():
                out[i] = text
        log.info("fill_answer: %d rows needed an answer, %d filled", len(todo),
                 sum(out[i] != answers[i] for i in todo))
        return {**batch, "answer": out}, [True] * n
