"""``fill_question``: a site-local LLM writes the question of rows whose question is missing or too short.

A row qualifies when its stripped instruction is shorter than ``min_question_chars`` and its answer has
at least ``min_answer_chars`` characters (a question is written *from* the answer). The reply keeps
its first line that has a question mark, cut after the mark (small models go on to answer their own
question), else its first line. An empty reply, a line ending with a colon (a preamble, not a
question), or one that copies the answer leaves the row as it was. No row is dropped.
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

__all__ = ["FillQuestion", "FillQuestionParams", "first_question"]

log = logging.getLogger(__name__)
_ANSWER_CHARS = 1500
_QMARK = re.compile(r"[?？]")


class FillQuestionParams(OperatorParams):
    min_question_chars: int = Field(default=6, ge=1, le=200)
    min_answer_chars: int = Field(default=10, ge=1, le=500)
    max_new_tokens: int = Field(default=64, ge=16, le=256)


def first_question(reply: str) -> str:
    """The question in a cleaned reply: its first line with a question mark, cut after the mark, else
    its first line; "" for a line that only introduces something (ends with a colon)."""
    lines = [ln.strip() for ln in clean_reply(reply).splitlines() if ln.strip()]
    asked = next((ln for ln in lines if _QMARK.search(ln)), None)
    if asked is not None:
        mark = _QMARK.search(asked)
        assert mark is not None
        return clean_reply(asked[:mark.end()])
    line = clean_reply(lines[0]) if lines else ""
    return "" if line.endswith((":", "：")) else line


@register_operator
class FillQuestion(Operator):
    name = "fill_question"
    team = Team.GENERATION
    version = "1"
    Params = FillQuestionParams
    requires = frozenset({"llm"})

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(FillQuestionParams, self.params)
        n = batch_size(batch)
        questions, answers = batch["instruction"], batch["answer"]
        todo = [i for i in range(n) if len(questions[i].strip()) < p.min_question_chars
                and len(answers[i].strip()) >= p.min_answer_chars]
        if not todo:
            return batch, [True] * n
        items = [(detect_language(answers[i]), {"answer": clip(answers[i], _ANSWER_CHARS)}) for i in todo]
        replies = chat_by_language(self.context.llm(), load_prompt(self.name, self.version), items,
                                   max_new_tokens=p.max_new_tokens, seed=self.context.seed)
        out = list(questions)
        for i, reply in zip(todo, replies, strict=True):
            text = first_question(reply)
            if len(text) > len(questions[i].strip()) and text.casefold() != answers[i].strip().casefold():
                out[i] = text
        log.info("fill_question: %d rows needed a question, %d filled", len(todo),
                 sum(out[i] != questions[i] for i in todo))
        return {**batch, "instruction": out}, [True] * n
