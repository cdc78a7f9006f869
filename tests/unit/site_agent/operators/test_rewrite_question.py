from typing import Any

from site_agent.operators import create_operator
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message

BATCH = {"instruction": ["asthma symptoms 22yo?", "What are the usual first-line treatments for gout in adults?",
                         "高血压 症状？", "", "migraine test?"],
         "answer": ["Wheezing and cough.", "An NSAID or colchicine.", "头痛、头晕。", "An answer.", "An examination."]}


def _handler(body: dict[str, Any]) -> str:
    user = last_user_message(body)
    if "问题：" in user:
        return "改写后的问题：高血压有哪些常见症状？"
    if "migraine" in user:
        return "An examination is used to confirm migraine."  # answers instead of asking: rejected
    if "asthma" in user:
        return '"What are the common symptoms of asthma in a 22-year-old?"<|im_end|>'
    return "Rewritten question: What are the first-line treatments for gout in adults?"


def test_rewrites_questions_and_rejects_answers_posing_as_questions() -> None:
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("rewrite_question", {}).bind(fake_llm_context(server)).run(BATCH)
        bodies = server.posted()
    assert out["instruction"] == ["What are the common symptoms of asthma in a 22-year-old?",
                                  "What are the first-line treatments for gout in adults?", "高血压有哪些常见症状？",
                                  "", "migraine test?"]
    assert out["answer"] == BATCH["answer"] and stats.changed == 3 and len(bodies) == 4
    assert all("For context" in last_user_message(b) or "仅供参考" in last_user_message(b) for b in bodies)


def test_only_if_short_limits_the_rows_sent() -> None:
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("rewrite_question", {"only_if_short": True, "short_chars": 25}).bind(
            fake_llm_context(server)).run(BATCH)
        assert len(server.posted()) == 3
    assert out["instruction"][1] == BATCH["instruction"][1] and stats.changed == 2
