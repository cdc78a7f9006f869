import itertools
import threading
from typing import Any

from protos.views import OperatorCall, Strategy
from site_agent.executor import run_strategy
from site_agent.operators import create_operator
from tests.fakes import FakeOpenAIServer, fake_llm_context, last_user_message

ROWS = {
    "instruction": [f"What are the common symptoms of condition {i}?" for i in range(8)] + [
        "高血压的常见症状有哪些？", "糖尿病怎么治疗？"],
    "answer": [f"Condition {i} commonly causes fatigue, fever and a cough." for i in range(8)] + [
        "高血压常见的症状有头痛、头晕和心悸，需要定期测量血压。", "糖尿病通常通过饮食控制、运动和口服降糖药物治疗。"],
    "label": ["clean"] * 10,
}


def _handler() -> Any:
    counter, lock = itertools.count(), threading.Lock()

    def reply(body: dict[str, Any]) -> str:
        with lock:
            k = next(counter)
        if "问题：" in last_user_message(body):
            return f"问题：哮喘{k}的症状有哪些？\n回答：哮喘常见症状包括喘息和咳嗽。"
        if k % 4 == 1:
            return "I cannot write a pair."  # no labels: dropped
        if k % 4 == 2:
            return f"Question: {ROWS['instruction'][0]}\nAnswer: A copy."  # repeats a question: dropped
        return f"Question: How is asthma {k} treated?\nAnswer: With inhalers.\nQuestion: another?\nAnswer: no."

    return reply


def _run(seed: int, ratio: float) -> tuple[dict[str, list[str]], Any, list[dict[str, Any]]]:
    with FakeOpenAIServer(_handler()) as server:
        out, stats = create_operator("synthesize_pairs", {"ratio": ratio, "examples": 3}).bind(
            fake_llm_context(server, seed=seed)).run(ROWS)
        return out, stats, server.posted()


def test_appends_parsed_new_pairs_after_the_untouched_rows() -> None:
    out, stats, bodies = _run(seed=1, ratio=0.5)
    assert len(bodies) == 5
    added = stats.changed
    assert 0 < added < 5 and stats.kept == 10 + added and stats.dropped == 0
    assert all(len(col) == 10 + added for col in out.values())
    assert {c: v[:10] for c, v in out.items()} == ROWS
    assert out["label"][10:] == [""] * added
    assert all(q.endswith(("?", "？")) and a for q, a in zip(out["instruction"][10:], out["answer"][10:], strict=True))
    assert len(set(out["instruction"])) == len(out["instruction"])
    for body in bodies:  # three examples of one language, plus the format line
        user = last_user_message(body)
        assert user.count("Question: ") + user.count("问题：") == 4
        assert ("问题：" in user) == ("医学科普" in body["messages"][0]["content"])
        assert body["temperature"] == 0.7 and body["seed"] == 1


def test_examples_are_drawn_from_the_seed() -> None:
    prompts = [sorted(last_user_message(b) for b in _run(seed, 0.3)[2]) for seed in (4, 4, 5)]  # any arrival order
    assert prompts[0] == prompts[1] != prompts[2]


def test_ratio_zero_adds_nothing() -> None:
    out, stats, bodies = _run(seed=0, ratio=0.0)
    assert out == ROWS and stats.changed == 0 and not bodies


def test_the_executor_carries_the_new_rows_on() -> None:
    strategy = Strategy(calls=(OperatorCall.of("synthesize_pairs", ratio=0.2), OperatorCall.of("exact_dedup")))
    with FakeOpenAIServer(_handler()) as server:
        out, stats = run_strategy(ROWS, strategy, fake_llm_context(server))
    assert stats[0].kept == len(out["answer"]) == 10 + stats[0].changed and stats[1].dropped == 0
