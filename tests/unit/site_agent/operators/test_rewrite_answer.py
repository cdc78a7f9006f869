from typing import Any

import pytest

from site_agent.operators import create_operator
from site_agent.operators.context import RunContext
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message, local_smollm2

BATCH = {"instruction": ["What is gout?", "高血压有哪些症状？", "How is asthma treated?", "No answer here?"],
         "answer": ["Arthritis.", "头痛、头晕。",
                    "Asthma is usually treated with an inhaled corticosteroid together with a reliever inhaler.", ""]}


def _handler(body: dict[str, Any]) -> str:
    user = last_user_message(body)
    if "原回答" in user:
        return "回答：高血压常见症状包括头痛、头晕和心悸。"
    if "asthma" in user:
        return "Inhalers."  # loses most of the content: rejected by min_keep_ratio
    return "Improved answer: Gout is a form of inflammatory arthritis caused by uric acid crystals.\n\nuser: hi"


def test_rewrites_answers_and_keeps_content_losing_rewrites_out() -> None:
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("rewrite_answer", {}).bind(fake_llm_context(server)).run(BATCH)
        assert len(server.posted()) == 3
    assert out["answer"] == ["Gout is a form of inflammatory arthritis caused by uric acid crystals.",
                             "高血压常见症状包括头痛、头晕和心悸。", BATCH["answer"][2], ""]
    assert stats.changed == 2 and out["instruction"] == BATCH["instruction"]


def test_min_keep_ratio_zero_accepts_short_rewrites() -> None:
    with FakeOpenAIServer(_handler) as server:
        out, _ = create_operator("rewrite_answer", {"min_keep_ratio": 0.0, "only_if_short": True,
                                                    "short_chars": 100}).bind(fake_llm_context(server)).run(BATCH)
    assert out["answer"][2] == "Inhalers."


@pytest.mark.slow
def test_with_the_bundled_model() -> None:
    llm = local_smollm2()
    batch = {"instruction": ["How is gout usually treated in a 54-year-old adult?"], "answer": ["For a 54-year"]}
    ctx = RunContext(seed=0, llm_factory=lambda: llm)
    out, stats = create_operator("rewrite_answer", {"max_new_tokens": 32}).bind(ctx).run(batch)
    assert stats.changed == 1 and len(out["answer"][0]) > 20 and "<|" not in out["answer"][0]
