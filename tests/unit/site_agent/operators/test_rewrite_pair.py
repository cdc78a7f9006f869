from typing import Any

from site_agent.operators import create_operator
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message

BATCH = {"instruction": ["gout?", "高血压 症状？", "asthma treatment?", "", "migraine?"],
         "answer": ["Arthritis.", "头痛、头晕。", "Inhalers.", "An answer.", "A test is used."]}


def _handler(body: dict[str, Any]) -> str:
    user = last_user_message(body)
    if "问题：高血压" in user:
        return "问题：高血压有哪些常见症状？\n回答：高血压常见症状包括头痛、头晕和心悸。"
    if "asthma" in user:
        return "Answer: Asthma is treated with inhalers."  # no question half: the row is kept
    if "migraine" in user:
        return "Question: How is migraine confirmed?\nAnswer: A"  # answer too short: the row is kept
    return "**Question:** What is gout?\n**Answer:** Gout is an inflammatory arthritis caused by uric acid.<|im_end|>"


def test_rewrites_whole_pairs_or_nothing() -> None:
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("rewrite_pair", {}).bind(fake_llm_context(server)).run(BATCH)
        bodies = server.posted()
    assert len(bodies) == 4 and stats.changed == 2
    assert out["instruction"] == ["What is gout?", "高血压有哪些常见症状？", "asthma treatment?", "", "migraine?"]
    assert out["answer"] == ["Gout is an inflammatory arthritis caused by uric acid.",
                             "高血压常见症状包括头痛、头晕和心悸。", "Inhalers.", "An answer.", "A test is used."]
    assert sum("问题：" in last_user_message(b) for b in bodies) == 1
