from typing import Any

from site_agent.operators import create_operator
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message


def _handler(body: dict[str, Any]) -> str:
    user = last_user_message(body)
    if "回答：" in user:
        return "问题：痛风是由什么引起的？它通常怎么治疗？"
    if "migraine" in user:
        return "Here is a question that this answer responds to:"
    return "Question: What causes gout?\nAnswer: Uric acid crystals."


def test_fills_missing_and_short_questions_from_the_answer() -> None:
    batch = {"instruction": ["", "?", "痛风", "", "", "What is gout?"],
             "answer": ["Gout is caused by uric acid crystals in the joints.", "Gout is caused by uric acid.",
                        "痛风是尿酸盐结晶沉积在关节引起的关节炎。", "A neurological examination confirms migraine.",
                        "Too short", "A form of arthritis."]}
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("fill_question", {}).bind(fake_llm_context(server)).run(batch)
        bodies = server.posted()
    assert out["instruction"] == ["What causes gout?", "What causes gout?", "痛风是由什么引起的？", "", "",
                                  "What is gout?"]
    assert stats.changed == 3 and out["answer"] == batch["answer"]
    assert len(bodies) == 4  # the row with a too-short answer and the complete row are not sent
    assert sum("医学编辑" in b["messages"][0]["content"] for b in bodies) == 1


def test_nothing_to_do_sends_nothing() -> None:
    batch = {"instruction": ["What is gout?"], "answer": ["A form of arthritis."]}
    with FakeOpenAIServer(_handler) as server:
        out, stats = create_operator("fill_question", {"min_question_chars": 3}).bind(
            fake_llm_context(server)).run(batch)
        assert out == batch and stats.changed == 0 and not server.posted()
