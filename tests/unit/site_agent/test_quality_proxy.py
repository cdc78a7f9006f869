import random

import pytest

from protos.views import EvalSettings, EvaluatorKind, Metric
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import DataError, EvaluationError
from site_agent.evaluation import available_evaluators, create_evaluator, register_evaluator
from site_agent.evaluation.quality_proxy import CHECKS, ProxyOptions, QualityProxyEvaluator, quality, row_defects
from site_agent.operators import Batch

SETTINGS = EvalSettings()
GOOD = "Rest and fluids usually help within a few days."


def _score(processed: Batch, raw: Batch) -> float:
    return create_evaluator(EvaluatorKind.QUALITY_PROXY).evaluate(processed, raw, SETTINGS).score


def _subset(batch: Batch, idx: list[int]) -> Batch:
    return {c: [batch[c][i] for i in idx] for c in batch}


@pytest.mark.parametrize(("question", "answer", "check"), [
    ("What helps?", "<p>" + GOOD + "</p>", "markup"),
    ("What helps?", GOOD.replace("and", "&amp;"), "markup"),
    ("What helps?", GOOD + " caf\u00c3\u00a9", "garbled"),
    ("What helps?", GOOD + " it\u00e2\u20ac\u2122s", "garbled"),
    ("What helps?", GOOD + "\x00", "garbled"),
    ("What helps?", GOOD + " \ufffd", "garbled"),
    ("What helps?", GOOD.replace(" ", "  ", 1), "whitespace"),
    ("What helps? ", GOOD, "whitespace"),
    ("What helps?", GOOD.replace(" ", "\u00a0", 1), "whitespace"),
    ("What helps?", GOOD.replace(" ", "\n\n\n", 1), "whitespace"),
    ("What helps?", "", "short"),
    ("What helps?", "Rest.", "short"),
    ("What helps?", "Acetylsalicylicacidtablets", "short"),  # long enough but one word
    ("?", GOOD, "short"),
    ("What helps?", GOOD + " rest rest rest rest", "repetition"),
    ("What helps?", GOOD + " drink more water" * 5, "repetition"),
])
def test_each_check_fires_on_its_defect(question: str, answer: str, check: str) -> None:
    defects = row_defects({"instruction": [question], "answer": [answer]})[0]
    assert check in defects and defects <= set(CHECKS)


def test_duplicates_ignore_case_and_whitespace_and_only_the_repeat_is_defective() -> None:
    batch = {"instruction": ["What helps?", "what  helps?"], "answer": [GOOD, GOOD.upper()]}
    assert row_defects(batch) == [set(), {"duplicate", "whitespace"}]


def test_the_checks_agree_with_the_toy_labels() -> None:
    batch, labels = make_toy_dataset(1500, seed=21)
    for label, defects in zip(labels, row_defects(batch), strict=True):
        assert (label == "clean") == (not defects), label


BATCH, LABELS = make_toy_dataset(400, seed=2)
DEFECTIVE = [i for i, d in enumerate(row_defects(BATCH)) if d]
CLEAN = [i for i in range(len(LABELS)) if i not in DEFECTIVE]


def test_score_properties() -> None:
    n = len(LABELS)
    assert _score(BATCH, BATCH) == 0.0
    assert _score({"instruction": [], "answer": []}, BATCH) < 0  # dropping everything never wins
    removed_defective = _score(_subset(BATCH, CLEAN), BATCH)
    assert removed_defective > 0
    assert _score(_subset(BATCH, CLEAN[1:] + DEFECTIVE), BATCH) < 0  # dropping a clean row loses
    # Fixing one defective row in place beats leaving it, and fixing all beats dropping them.
    fixed = {c: list(v) for c, v in BATCH.items()}
    i = DEFECTIVE[0]
    fixed["instruction"][i], fixed["answer"][i] = "What eases a mild cold?", GOOD
    assert _score(fixed, BATCH) > 0
    clean_twin, _ = make_toy_dataset(n, seed=2, noise_rate=0.0)
    assert _score(clean_twin, BATCH) > removed_defective
    assert quality(clean_twin, n) == 1.0


SMALL, _ = make_toy_dataset(80, seed=4)
SMALL_BAD = [i for i, d in enumerate(row_defects(SMALL)) if d]
_PAIRS = list(zip(SMALL["instruction"], SMALL["answer"], strict=True))
# A clean row whose pair is copied later is not "costly" to drop: its copy takes its place.
SMALL_CLEAN = [i for i in range(80) if i not in SMALL_BAD and _PAIRS.count(_PAIRS[i]) == 1]


def test_removing_defective_rows_wins_and_removing_clean_ones_costs() -> None:
    rng = random.Random(0)  # a seeded property check: many random subsets, same every run
    for _ in range(40):
        bad_out = set(rng.sample(SMALL_BAD, rng.randint(1, len(SMALL_BAD))))
        clean_out = set(rng.sample(SMALL_CLEAN, rng.randint(0, len(SMALL_CLEAN))))
        only_bad = _subset(SMALL, [i for i in range(80) if i not in bad_out])
        assert _score(only_bad, SMALL) > 0
        both = _subset(SMALL, [i for i in range(80) if i not in bad_out | clean_out])
        assert _score(both, SMALL) <= _score(only_bad, SMALL)
        if clean_out:
            assert _score(both, SMALL) < _score(only_bad, SMALL)


def test_with_a_training_budget_dropping_rows_costs_nothing_until_the_budget() -> None:
    n = len(LABELS)
    budget = ProxyOptions(budget_share=0.5)
    raw_q = quality(BATCH, n, budget)
    assert raw_q == pytest.approx(len(CLEAN) / n)  # every row kept: precision
    only_clean = _subset(BATCH, CLEAN)
    assert len(CLEAN) >= n / 2 and quality(only_clean, n, budget) == 1.0  # above the budget: precision alone
    # dropping clean rows above the budget costs nothing; below it, the score falls with the rows kept
    half = _subset(BATCH, CLEAN[: (n + 1) // 2])
    assert quality(half, n, budget) == 1.0
    quarter = _subset(BATCH, CLEAN[: n // 4])
    assert quality(quarter, n, budget) == pytest.approx((n // 4) / n / 0.5)
    # repairing a defective row in place and dropping it are worth about the same; the default prefers the repair
    fixed = {c: list(v) for c, v in BATCH.items()}
    i = DEFECTIVE[0]
    fixed["instruction"][i], fixed["answer"][i] = "What eases a mild cold?", GOOD
    dropped = _subset(BATCH, [j for j in range(n) if j != i])
    assert quality(fixed, n, budget) == pytest.approx(quality(dropped, n, budget), abs=1.0 / n)
    assert quality(fixed, n) > quality(dropped, n)
    ev = create_evaluator(EvaluatorKind.QUALITY_PROXY, budget_share=0.5)
    assert ev.evaluate(only_clean, BATCH, SETTINGS).score == pytest.approx(1.0 - raw_q)
    assert quality({"instruction": [], "answer": []}, n, budget) == 0.0
    with pytest.raises(EvaluationError, match="budget_share"):
        ProxyOptions(budget_share=1.5)


def test_evaluator_interface_and_registry() -> None:
    ev = create_evaluator(EvaluatorKind.QUALITY_PROXY, min_answer_chars=5)
    assert isinstance(ev, QualityProxyEvaluator) and ev.kind is EvaluatorKind.QUALITY_PROXY
    outcome = ev.evaluate(_subset(BATCH, CLEAN), BATCH, SETTINGS)
    assert outcome.metric is Metric.QUALITY_PROXY and outcome.seconds >= 0
    assert EvaluatorKind.QUALITY_PROXY in available_evaluators()
    with pytest.raises(EvaluationError, match="eval"):
        create_evaluator(EvaluatorKind.LORA)  # installed, but refuses to start without the held-out set
    with pytest.raises(EvaluationError, match="already registered"):
        register_evaluator(EvaluatorKind.QUALITY_PROXY, QualityProxyEvaluator)
    with pytest.raises(EvaluationError, match="does not take options"):
        create_evaluator(EvaluatorKind.QUALITY_PROXY, temperature=1)
    with pytest.raises(EvaluationError, match="out of range"):
        create_evaluator(EvaluatorKind.QUALITY_PROXY, min_repeats=1)
    with pytest.raises(EvaluationError, match="only reports"):
        ev.evaluate(BATCH, BATCH, EvalSettings(metric=Metric.NEG_TOKEN_LOSS))
    with pytest.raises(EvaluationError, match="empty raw"):
        ev.evaluate(BATCH, {"instruction": [], "answer": []}, SETTINGS)


def test_an_evaluator_looks_up_the_rows_it_checked_before_with_the_same_verdicts() -> None:
    from site_agent.evaluation import quality_proxy

    data, _ = make_toy_dataset(300, seed=5)
    kept = _subset(data, [i for i, d in enumerate(row_defects(data)) if not d])
    fresh = quality(kept, 300) - quality(data, 300)
    ev = QualityProxyEvaluator()
    memo = ev._checks.cache_info  # type: ignore[attr-defined]
    assert ev.evaluate(kept, data, SETTINGS).score == fresh
    checked = memo().misses
    assert checked <= 300 and memo().maxsize == quality_proxy.MEMO_ROWS
    # the same rows again: looked up, same score; reordered with a repeat, the duplicate check is still per batch
    assert ev.evaluate(kept, data, SETTINGS).score == fresh and memo().misses == checked
    idx = list(reversed(range(300))) + [0]
    again = row_defects(_subset(data, idx), checks=ev._checks)
    assert again == row_defects(_subset(data, idx)) and "duplicate" in again[300]
    assert memo().misses == checked
    # other thresholds, another evaluator, another memo
    strict = QualityProxyEvaluator(min_answer_chars=10_000)
    assert all("short" in d for d in row_defects(data, strict.options, strict._checks))
    with pytest.raises(DataError, match="different lengths"):
        row_defects({"instruction": ["a", "b"], "answer": ["c"]})
