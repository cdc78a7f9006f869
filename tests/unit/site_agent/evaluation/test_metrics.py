from __future__ import annotations

import math
from typing import Any

import pytest

from site_agent.errors import EvaluationError
from site_agent.evaluation.metrics import (
    JudgeConfig,
    judge_win_rate,
    make_judge,
    neg_token_loss_score,
    pairwise_win_rate,
    parse_judge,
    parse_verdict,
)
from tests.fakes import FakeOpenAIServer, last_user_message


def test_neg_token_loss_is_higher_when_processed_loss_is_lower() -> None:
    assert neg_token_loss_score([1.0, 2.0], [2.0, 3.0]) == pytest.approx(1.0)
    assert neg_token_loss_score([2.0], [1.5]) == pytest.approx(-0.5)
    with pytest.raises(EvaluationError, match="not finite"):
        neg_token_loss_score([math.nan], [1.0])


def test_pairwise_win_rate_counts_ties_half() -> None:
    assert pairwise_win_rate([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 1.0, 5.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert pairwise_win_rate([1.0], [1.0]) == 0.5
    with pytest.raises(EvaluationError, match="equal"):
        pairwise_win_rate([1.0], [1.0, 2.0])


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "A"), (" b.", "B"), ("Tie", "T"), ("T", "T"), ("**A** is better", "A"), ("Answer A", None), ("", None)])
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def _config(url: str, model: str = "m") -> JudgeConfig:
    cfg = parse_judge({"base_url": url, "model": model})
    assert cfg is not None
    return cfg


def _prefers(word: str) -> Any:
    """A judge that prefers whichever answer contains ``word``; ties when both or neither do."""

    def handler(body: dict[str, Any]) -> str:
        text = last_user_message(body)
        a = text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
        b = text.split("Answer B:\n")[1].split("\n\nWhich")[0]
        return "A" if word in a and word not in b else "B" if word in b and word not in a else "T"

    return handler


def test_judge_compares_both_orders_through_a_local_endpoint() -> None:
    questions = ["q1", "q2", "q3", "q4"]
    processed = ["good one", "good two", "meh", "good"]
    baseline = ["bad", "bad", "good", "good too"]
    with FakeOpenAIServer(_prefers("good")) as server:
        with make_judge(_config(server.base_url, server.model)) as judge:
            rate, unreadable = judge_win_rate(judge, questions, processed, baseline)
        bodies = server.posted()
    assert len(bodies) == 8 and unreadable == 0
    # wins on q1, q2 (both orders), loses q3, ties q4 -> (2 + 2 + 0 + 1) / 8
    assert rate == pytest.approx(5 / 8)
    assert {b["temperature"] for b in bodies} == {0.0}
    q1 = [last_user_message(b) for b in bodies if last_user_message(b).startswith("Question:\nq1\n")]
    assert sorted(t.split("Answer A:\n")[1].split("\n")[0] for t in q1) == ["bad", "good one"]  # both positions


def test_position_bias_cancels_and_unreadable_counts_as_tie() -> None:
    with FakeOpenAIServer(lambda body: "A") as server, make_judge(_config(server.base_url)) as judge:
        assert judge_win_rate(judge, ["q"], ["x"], ["y"]) == (0.5, 0)
    with FakeOpenAIServer(lambda body: "I cannot say") as server, make_judge(_config(server.base_url)) as judge:
        assert judge_win_rate(judge, ["q", "r"], ["x", "x"], ["y", "y"]) == (0.5, 4)


def test_judge_config_is_checked() -> None:
    with pytest.raises(EvaluationError, match="judge option 'model'"):
        parse_judge({"base_url": "http://127.0.0.1:1"})
    with pytest.raises(EvaluationError, match="judge option 'temperature'"):
        parse_judge({"base_url": "http://127.0.0.1:1", "model": "m", "temperature": 1})
    with pytest.raises(EvaluationError, match="not loopback"):
        make_judge(_config("https://api.example.com/v1"))
    with pytest.raises(EvaluationError, match="one answer per question"):
        judge_win_rate(None, ["q"], [], ["a"])  # type: ignore[arg-type]
