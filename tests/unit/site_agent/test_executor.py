import pytest

from protos.views import EvalSettings, EvaluatorKind, OperatorCall, Strategy
from site_agent.data import make_toy_dataset
from site_agent.errors import DataError, OperatorError
from site_agent.evaluation import create_evaluator
from site_agent.evaluation.quality_proxy import row_defects
from site_agent.executor import run_strategy

STRATEGY = Strategy(calls=(
    OperatorCall.of("remove_markup"),
    OperatorCall.of("normalize_text"),
    OperatorCall.of("length_filter", min_answer_chars=20, max_answer_chars=400),
    OperatorCall.of("exact_dedup"),
))


def test_a_full_cleaning_strategy_on_the_toy_set() -> None:
    raw, labels = make_toy_dataset(500, seed=13)
    out, stats = run_strategy(raw, STRATEGY)
    assert [s.op for s in stats] == [c.op for c in STRATEGY.calls]
    assert stats[0].changed == labels.count("html")
    assert stats[-1].kept == len(out["answer"])
    for before, after in zip(stats, stats[1:], strict=False):
        assert after.kept + after.dropped == before.kept
    repairable = {"clean", "html", "whitespace", "garbled"}
    assert len(out["answer"]) == sum(lab in repairable for lab in labels)
    assert all(not d for d in row_defects(out))
    outcome = create_evaluator(EvaluatorKind.QUALITY_PROXY).evaluate(out, raw, EvalSettings())
    assert outcome.score > 0


def test_an_empty_strategy_changes_nothing() -> None:
    raw, _ = make_toy_dataset(20, seed=1)
    assert run_strategy(raw, Strategy()) == (raw, [])


def test_a_bad_call_fails_before_any_step_runs() -> None:
    raw, _ = make_toy_dataset(20, seed=1)
    bad = Strategy(calls=(OperatorCall.of("remove_markup"), OperatorCall.of("length_filter", nope=1)))
    with pytest.raises(OperatorError, match="no parameter 'nope'"):
        run_strategy(raw, bad)
    with pytest.raises(OperatorError, match="unknown operator 'ghost'"):
        run_strategy(raw, Strategy(calls=(OperatorCall.of("ghost"),)))


def test_a_malformed_batch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no 'answer' column"):
        run_strategy({"instruction": ["q"]}, STRATEGY)
    with pytest.raises(DataError, match="different lengths"):
        run_strategy({"instruction": ["q"], "answer": []}, STRATEGY)
