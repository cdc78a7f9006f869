from typing import Any

import pytest

from protos.views import Team
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.operators import create_operator, operator_spec, registered_operators
from site_agent.operators.context import RunContext
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message, local_smollm2, scripted

EN_REPLY = "Answer: It is usually treated with medicines and lifestyle changes.<|im_end|>\nuser\nThanks!"
ZH_REPLY = "回答：常见症状包括头痛、头晕和心悸。<|im_end|>"


def _system(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


def _by_language(body: dict[str, Any]) -> str:
    return ZH_REPLY if "问题：" in last_user_message(body) else EN_REPLY


def test_fills_exactly_the_empty_and_truncated_toy_answers() -> None:
    batch, labels = make_toy_dataset(300, seed=3)
    broken = [i for i, lab in enumerate(labels) if lab in ("empty", "truncated")]
    with FakeOpenAIServer(_by_language) as server:
        out, stats = create_operator("fill_answer", {}).bind(fake_llm_context(server)).run(batch)
        bodies = server.posted()
    assert broken and stats.changed == len(broken) == len(bodies) and stats.dropped == 0
    assert all(out["answer"][i] == "It is usually treated with medicines and lifestyle changes." for i in broken)
    assert all(out["answer"][i] == batch["answer"][i] for i in range(300) if i not in broken)
    assert out["instruction"] == batch["instruction"]
    assert all("medical assistant" in _system(b) and b["max_tokens"] == 192 for b in bodies)


def test_chinese_rows_get_chinese_prompts_and_bad_replies_keep_the_row() -> None:
    batch = {"instruction": ["高血压的常见症状有哪些？", "糖尿病怎么治疗？", "痛风是什么？", "", "What is gout?"],
             "answer": ["", "口服二甲", "痛风是一种由尿酸盐结晶沉积在关节引起的炎症性关节炎。", "", "Gout"],
             "source": ["a", "b", "c", "d", "e"]}

    def handler(body: dict[str, Any]) -> str:
        return "<|im_end|>" if "糖尿病" in last_user_message(body) else _by_language(body)

    with FakeOpenAIServer(handler) as server:
        out, stats = create_operator("fill_answer", {"max_new_tokens": 64}).bind(fake_llm_context(server)).run(batch)
        bodies = server.posted()
    assert out["answer"] == ["常见症状包括头痛、头晕和心悸。", "口服二甲", batch["answer"][2], "",
                             "It is usually treated with medicines and lifestyle changes."]
    assert stats.changed == 2 and out["source"] == batch["source"]
    assert len(bodies) == 3 and sum("医学助手" in _system(b) for b in bodies) == 2


def test_a_failing_endpoint_fails_the_step_without_quoting_rows() -> None:
    batch = {"instruction": ["Patient Zhang San asks: what is gout?"], "answer": [""]}
    with FakeOpenAIServer(scripted(500)) as server:
        ctx = fake_llm_context(server)
        with pytest.raises(OperatorError) as err:
            create_operator("fill_answer", {}).bind(ctx).run(batch)
    assert "Zhang" not in str(err.value)


def test_spec_and_requirements() -> None:
    spec = operator_spec(registered_operators()["fill_answer"])
    assert spec.team is Team.GENERATION and {p.name for p in spec.params} == {
        "min_answer_chars", "truncated_below_chars", "max_new_tokens"}
    with pytest.raises(OperatorError, match="llm"):
        create_operator("fill_answer", {}).bind(RunContext())


@pytest.mark.slow
def test_with_the_bundled_model() -> None:
    llm = local_smollm2()
    batch = {"instruction": ["What are the common symptoms of asthma?", "How is gout usually treated?"],
             "answer": ["", "For a 54-year"]}
    ctx = RunContext(seed=0, llm_factory=lambda: llm)
    out, stats = create_operator("fill_answer", {"max_new_tokens": 16}).bind(ctx).run(batch)
    assert stats.changed == 2 and stats.kept == 2
    assert all(len(a) > 15 and "<|" not in a for a in out["answer"])
