import pytest

from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.operators import create_operator

BATCH, LABELS = make_toy_dataset(600, seed=3)


def _kept_labels(params: dict[str, int]) -> list[str]:
    op = create_operator("length_filter", params)
    keep = op.apply(BATCH)[1]
    out, stats = op.run(BATCH)
    assert stats.kept == sum(keep) and stats.dropped == len(LABELS) - sum(keep) and stats.changed == 0
    assert out["answer"] == [a for a, k in zip(BATCH["answer"], keep, strict=True) if k]
    return [lab for lab, k in zip(LABELS, keep, strict=True) if k]


def test_defaults_drop_empty_answers_only() -> None:
    kept = _kept_labels({})
    assert "empty" not in kept
    assert kept.count("clean") == LABELS.count("clean")
    assert kept.count("truncated") == LABELS.count("truncated")  # 3+ characters pass the default of 2


def test_a_higher_minimum_drops_truncated_answers_and_keeps_clean_ones() -> None:
    kept = _kept_labels({"min_answer_chars": 20})
    assert "truncated" not in kept and "empty" not in kept
    assert kept.count("clean") == LABELS.count("clean")


def test_a_maximum_drops_repetition_loops() -> None:
    kept = _kept_labels({"max_answer_chars": 400})
    assert "repetition" not in kept
    assert kept.count("clean") == LABELS.count("clean")


def test_instruction_minimum() -> None:
    batch = {"instruction": ["Hi", "Why?", "  a  "], "answer": ["fine answer"] * 3}
    out, stats = create_operator("length_filter", {"min_instruction_chars": 3}).run(batch)
    assert out["instruction"] == ["Why?"] and stats.dropped == 2


def test_bounds_are_enforced() -> None:
    with pytest.raises(OperatorError, match="min_answer_chars"):
        create_operator("length_filter", {"min_answer_chars": 10_001})
    with pytest.raises(OperatorError, match="max_answer_chars"):
        create_operator("length_filter", {"max_answer_chars": 0})
