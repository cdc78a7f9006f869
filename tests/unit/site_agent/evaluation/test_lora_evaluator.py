from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import site_agent.evaluation.lora_train as lora_train
from protos.views import EvalSettings, EvaluatorKind, Metric
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import EvaluationError
from site_agent.evaluation import available_evaluators, create_evaluator
from site_agent.evaluation.dp import DPConfig
from site_agent.evaluation.lora import LoraEvaluator
from site_agent.operators.base import Batch
from tests.fakes import FakeOpenAIServer, last_user_message


def _settings(metric: Metric = Metric.NEG_TOKEN_LOSS, seed: int = 0, steps: int = 0) -> EvalSettings:
    return EvalSettings(evaluator=EvaluatorKind.LORA, metric=metric, seed=seed, train_steps=steps)


def _evaluator(model: Path, held_out: Batch, cache: Path, **options: Any) -> LoraEvaluator:
    options = {"steps": 2, "seq_len": 64, "batch_size": 4, "isolate": False, **options}
    evaluator = create_evaluator(EvaluatorKind.LORA, eval_batch=held_out, cache_dir=cache, model_path=model, **options)
    assert isinstance(evaluator, LoraEvaluator)
    return evaluator


@pytest.fixture
def train_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows given to each training run, in order (a spy on the real training function)."""
    calls: list[int] = []
    real = lora_train.train

    def spy(model: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(rows))
        return real(model, rows, *args, **kwargs)

    monkeypatch.setattr(lora_train, "train", spy)
    return calls


@pytest.mark.slow
def test_removing_noise_scores_higher_than_the_raw_set(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    raw, labels = make_toy_dataset(120, seed=1, noise_rate=0.8)
    clean, _ = make_toy_dataset(120, seed=1, noise_rate=0.0)  # the same rows, undamaged
    assert labels.count("clean") < 40
    evaluator = _evaluator(tiny_model, held_out, tmp_path, steps=30, seq_len=128, batch_size=8, lr=2e-2)
    loss = evaluator.evaluate(clean, raw, _settings(Metric.NEG_TOKEN_LOSS, seed=3))
    assert loss.metric is Metric.NEG_TOKEN_LOSS and loss.score > 0.2
    assert loss.details["processed_loss"] < loss.details["baseline_loss"] and loss.details["train_steps"] == 30
    wins = evaluator.evaluate(clean, raw, _settings(Metric.PAIRWISE_WIN_RATE, seed=3))  # baseline from the cache
    assert wins.details["baseline_cached"] == 1.0 and wins.score > 0.3 and wins.score == wins.details["win_rate"] - 0.5


def test_baseline_is_trained_once_and_cached_on_disk(tiny_model: Path, held_out: Batch, tmp_path: Path,
                                                     train_spy: list[int]) -> None:
    raw, _ = make_toy_dataset(30, seed=2, noise_rate=0.5)
    evaluator = _evaluator(tiny_model, held_out, tmp_path)
    first = evaluator.evaluate(raw, raw, _settings())
    assert train_spy == [30, 30] and first.details["baseline_cached"] == 0.0
    assert first.score == 0.0  # same data, same seed: the very same model
    files = list((tmp_path / "lora-baselines").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert len(doc["losses"]) == 24 and doc["key"]["train"]["steps"] == 2 and doc["key"]["train"]["seed"] == 0

    half = {k: v[:15] for k, v in raw.items()}
    second = evaluator.evaluate(half, raw, _settings(Metric.PAIRWISE_WIN_RATE))
    assert train_spy == [30, 30, 15] and second.details["baseline_cached"] == 1.0
    assert _evaluator(tiny_model, held_out, tmp_path).evaluate(raw, raw, _settings()).score == 0.0  # a new process
    assert train_spy == [30, 30, 15, 30]

    evaluator.evaluate(raw, raw, _settings(seed=1))  # another seed is another baseline
    evaluator.evaluate(raw, raw, _settings(steps=3))  # so are other steps
    assert train_spy[4:] == [30, 30, 30, 30] and len(list((tmp_path / "lora-baselines").glob("*.json"))) == 3
    files[0].write_text("{not json")  # a damaged entry is trained again, not trusted
    evaluator.evaluate(raw, raw, _settings())
    assert train_spy[8:] == [30, 30]


def test_an_empty_processed_set_scores_the_untrained_model(tiny_model: Path, held_out: Batch, tmp_path: Path,
                                                           train_spy: list[int]) -> None:
    raw, _ = make_toy_dataset(20, seed=2, noise_rate=0.0)
    outcome = _evaluator(tiny_model, held_out, tmp_path, lr=2e-2).evaluate(
        {"instruction": [], "answer": []}, raw, _settings(steps=5))
    assert outcome.details["train_steps"] == 0 and outcome.score < 0 and train_spy == [0, 20]


def test_dp_epsilon_and_delta_are_reported(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(30, seed=2, noise_rate=0.3)
    dp = {"noise_multiplier": 1.0, "delta": 1e-4, "accountant": "rdp"}
    evaluator = _evaluator(tiny_model, held_out, tmp_path, dp=dp)
    outcome = evaluator.evaluate(raw, raw, _settings())
    assert outcome.epsilon > 0 and outcome.delta == 1e-4 and outcome.details["noise_multiplier"] == 1.0
    assert outcome.details["baseline_epsilon"] == pytest.approx(outcome.epsilon)
    assert outcome.score != 0.0  # same rows, but each run draws its own secret noise
    again = evaluator.evaluate(raw, raw, _settings())
    assert again.details["baseline_cached"] == 1.0 and again.details["baseline_epsilon"] == 0.0
    assert again.score == outcome.score  # the site reproduces its own DP runs
    no_dp = _evaluator(tiny_model, held_out, tmp_path).evaluate(raw, raw, _settings())
    assert no_dp.details["baseline_cached"] == 0.0 and no_dp.epsilon == 0.0 and no_dp.delta == 0.0


def test_judge_metric_asks_a_local_judge_both_ways(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(20, seed=2, noise_rate=0.0)
    few = {k: v[:3] for k, v in held_out.items()}
    with FakeOpenAIServer(lambda body: "A" if "Question:" in last_user_message(body) else "?") as server:
        judge = {"base_url": server.base_url, "model": server.model, "answer_tokens": 4}
        outcome = _evaluator(tiny_model, few, tmp_path, judge=judge).evaluate(
            raw, raw, _settings(Metric.JUDGE_WIN_RATE))
        assert len(server.posted()) == 6
    # A judge that always says "A" favours each model once per item: exactly even.
    assert outcome.metric is Metric.JUDGE_WIN_RATE and outcome.score == 0.0
    assert outcome.details["win_rate"] == 0.5 and outcome.details["judge_unreadable"] == 0.0
    cached = json.loads(next((tmp_path / "lora-baselines").glob("*.json")).read_text())
    assert len(cached["answers"]) == 3 and cached["key"]["answer_tokens"] == 4


def test_settings_and_options_are_checked(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    assert EvaluatorKind.LORA in available_evaluators()
    raw, _ = make_toy_dataset(5, seed=2)
    evaluator = _evaluator(tiny_model, held_out, tmp_path)
    with pytest.raises(EvaluationError, match="does not report the 'quality_proxy' metric"):
        evaluator.evaluate(raw, raw, EvalSettings(evaluator=EvaluatorKind.LORA))
    with pytest.raises(EvaluationError, match="needs a site-local judge"):
        evaluator.evaluate(raw, raw, _settings(Metric.JUDGE_WIN_RATE))
    with pytest.raises(EvaluationError, match="empty raw batch"):
        evaluator.evaluate(raw, {"instruction": [], "answer": []}, _settings())
    with pytest.raises(EvaluationError, match="held-out evaluation set"):
        create_evaluator(EvaluatorKind.LORA)
    with pytest.raises(EvaluationError, match="lora_r, lora_dropout"):
        _evaluator(tiny_model, held_out, tmp_path, lora_r=0, lora_dropout=1.0)
    with pytest.raises(EvaluationError, match="does not take options"):
        _evaluator(tiny_model, held_out, tmp_path, epochs=3)
    with pytest.raises(EvaluationError, match="dp option 'noise_multiplier'"):
        _evaluator(tiny_model, held_out, tmp_path, dp={"noise_multiplier": -1})
    with pytest.raises(EvaluationError, match="no config.json"):
        _evaluator(tmp_path, held_out, tmp_path).evaluate(raw, raw, _settings())
    with pytest.raises(EvaluationError, match="match no module"):
        _evaluator(tiny_model, held_out, tmp_path / "c", target_modules="nothing_here").evaluate(raw, raw, _settings())


def test_token_loss_weighs_tokens_where_row_loss_weighs_rows(tiny_model: Path) -> None:
    import torch

    from site_agent.evaluation.lora_data import collate, encode_batch

    tok = lora_train.load_tokenizer(tiny_model)
    model = lora_train.load_model(tiny_model, "float32", "cpu")
    raw, _ = make_toy_dataset(3, seed=4, noise_rate=0.0)
    batch = {"instruction": list(raw["instruction"]), "answer": [raw["answer"][0], "", raw["answer"][2]]}
    rows = encode_batch(tok, batch, 64)
    ids, labels, mask = collate(torch, rows, tok.pad_token_id)
    with torch.no_grad():
        per_row = lora_train.row_losses(model, ids, labels, mask)
        token = lora_train.token_loss(model, ids, labels, mask)
    counts = torch.tensor([sum(1 for t in r.labels[1:] if t != -100) for r in rows], dtype=torch.float32)
    assert counts[1] == 1 and counts[0] > 1  # the empty answer: its end token only
    assert float(token) == pytest.approx(float((per_row * counts).sum() / counts.sum()), rel=1e-5)
    assert float(token) != pytest.approx(float(per_row.mean()), rel=1e-3)


def test_loss_mean_option_trains_differently_and_is_checked(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(24, seed=2, noise_rate=0.5)
    cut = {"instruction": raw["instruction"], "answer": [a if i % 3 else "" for i, a in enumerate(raw["answer"])]}
    scores = {m: _evaluator(tiny_model, held_out, tmp_path / m, loss_mean=m).evaluate(cut, raw, _settings()).score
              for m in ("row", "token")}
    assert scores["row"] != pytest.approx(scores["token"], abs=1e-6)
    with pytest.raises(EvaluationError, match="loss_mean"):
        _evaluator(tiny_model, held_out, tmp_path, loss_mean="median")
    with pytest.raises(EvaluationError, match="loss_mean 'row'"):
        _evaluator(tiny_model, held_out, tmp_path, loss_mean="token", dp={"noise_multiplier": 1.0})
    cfg = lora_train.TrainConfig(steps=1, loss_mean="token")
    with pytest.raises(EvaluationError, match="row' only"):
        lora_train.train(None, [], cfg, 0, dp=DPConfig(noise_multiplier=1.0))
