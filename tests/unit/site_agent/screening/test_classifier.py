import json
from pathlib import Path

import numpy as np
import pytest

from site_agent.data.toy import make_toy_dataset
from site_agent.embeddings import EmbeddingCache, create_embedder
from site_agent.embeddings.base import Embedder
from site_agent.errors import DataError
from site_agent.evaluation.quality_proxy import row_defects
from site_agent.operators.base import Batch
from site_agent.screening.base import Screener
from site_agent.screening.classifier import FORMAT, ScreeningModel, ScreeningReport, resolve_labels, train_screener

from .conftest import HashingEmbedder


def _toy(n: int, seed: int) -> tuple[Batch, np.ndarray]:
    batch, labels = make_toy_dataset(n, seed=seed)
    batch["label"] = labels
    return batch, np.array([lab != "clean" for lab in labels])


@pytest.fixture(scope="module")
def trained_with_report() -> tuple[ScreeningModel, ScreeningReport, Batch]:
    batch, _ = _toy(600, seed=1)
    model, report = train_screener(batch, None, HashingEmbedder(), seed=0, holdout=0.2)
    return model, report, batch


@pytest.fixture(scope="module")
def trained(trained_with_report: tuple[ScreeningModel, ScreeningReport, Batch]) -> tuple[ScreeningModel, Batch]:
    return trained_with_report[0], trained_with_report[2]


def test_learns_the_toy_noise_and_reports_held_out_metrics(
        trained_with_report: tuple[ScreeningModel, ScreeningReport, Batch]) -> None:
    model, report, batch = trained_with_report
    noisy = np.array([lab != "clean" for lab in batch["label"]])
    assert report.label_source == "column" and report.rows == 600 and report.noisy_rows == int(noisy.sum())
    assert (report.train_rows, report.holdout_rows) == (480, 120)
    assert report.f1 >= 0.9 and report.precision >= 0.9 and report.recall >= 0.9
    assert model.metrics["f1"] == report.f1 and model.threshold == report.threshold == 0.5
    # and on rows it never saw
    fresh, fresh_noisy = _toy(400, seed=2)
    pred = model.noisy_mask(fresh)
    assert pred.dtype == bool and (pred == fresh_noisy).mean() >= 0.9


def test_is_a_screener_with_a_parameter_version(trained: tuple[ScreeningModel, Batch]) -> None:
    model, batch = trained
    screener: Screener = model
    proba = screener.noisy_proba(batch)
    assert proba.dtype == np.float64 and proba.shape == (600,) and 0.0 <= proba.min() and proba.max() <= 1.0
    assert np.array_equal(screener.noisy_mask(batch), proba >= 0.5)
    assert screener.noisy_mask(batch, threshold=1e-9).sum() >= screener.noisy_mask(batch).sum()
    assert len(model.version) == 16 and int(model.version, 16) >= 0
    assert model.noisy_proba({"instruction": [], "answer": []}).shape == (0,)
    small = {k: v[:200] for k, v in batch.items()}
    assert train_screener(small, None, HashingEmbedder())[0].version == \
        train_screener(small, None, HashingEmbedder())[0].version  # deterministic
    changed = ScreeningModel(embedder_name=model.embedder_name, embedding_dim=model.embedding_dim,
                             arrays={**model.arrays, "coef": model.arrays["coef"] * 1.01})
    assert changed.version != model.version


def test_save_and_load_round_trip_without_pickle(trained: tuple[ScreeningModel, Batch], tmp_path: Path) -> None:
    model, batch = trained
    model.save(tmp_path / "screening")
    assert sorted(p.name for p in (tmp_path / "screening").iterdir()) == ["model.json", "weights.npz"]
    meta = json.loads((tmp_path / "screening" / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["version"] == model.version and meta["embedder"] == "hashing-test"
    assert meta["features"][0] == "embedding[64]" and "qa_cosine" in meta["features"] and meta["threshold"] == 0.5
    assert meta["metrics"]["f1"] == model.metrics["f1"]
    with np.load(tmp_path / "screening" / "weights.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["coef", "intercept", "mean", "scale"]
    loaded = ScreeningModel.load(tmp_path / "screening", embedder=HashingEmbedder())
    assert loaded.version == model.version
    assert np.array_equal(loaded.noisy_proba(batch), model.noisy_proba(batch))


def test_load_refuses_damaged_or_mismatched_models(trained: tuple[ScreeningModel, Batch], tmp_path: Path) -> None:
    model, batch = trained
    with pytest.raises(DataError, match="no trained screening model"):
        ScreeningModel.load(tmp_path / "missing")
    d = tmp_path / "m"
    model.save(d)
    a = model.arrays
    np.savez(d / "weights.npz", mean=a["mean"], scale=a["scale"], coef=a["coef"] + 0.5, intercept=a["intercept"])
    with pytest.raises(DataError, match="do not match"):
        ScreeningModel.load(d)
    model.save(d)
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, "features": meta["features"][:-1]}))
    with pytest.raises(DataError, match="do not match"):
        ScreeningModel.load(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        ScreeningModel.load(d)
    model.save(d)
    other = ScreeningModel.load(d, embedder=create_embedder("use-m3"))  # the wrong embedder for this model
    with pytest.raises(DataError, match="hashing-test"):
        other.noisy_proba(batch)


def test_label_sources() -> None:
    batch, noisy = _toy(200, seed=3)
    assert np.array_equal(resolve_labels(batch)[0], noisy) and resolve_labels(batch)[1] == "column"
    given = [i % 2 == 0 for i in range(200)]
    flags, source = resolve_labels(batch, given)
    assert flags.tolist() == given and source == "given"
    del batch["label"]
    labels, source = resolve_labels(batch)
    assert source == "heuristic" and labels.tolist() == [bool(d) for d in row_defects(batch)]
    assert labels.sum() > 0
    with pytest.raises(DataError, match="labels for 200 rows"):
        resolve_labels(batch, [True])


def test_trains_from_heuristic_labels_when_the_data_has_none(hashing_embedder: HashingEmbedder,
                                                             tmp_path: Path) -> None:
    batch, _ = _toy(400, seed=4)
    del batch["label"]
    cache = EmbeddingCache(tmp_path)
    model, report = train_screener(batch, None, hashing_embedder, cache=cache)
    assert report.label_source == "heuristic" and report.f1 >= 0.9
    assert len(list(tmp_path.glob("*.npy"))) == 3  # rows, instructions, answers: reused by DPS and later runs
    model.noisy_proba(batch)
    assert cache.hits == 3


def test_training_errors_are_clear(hashing_embedder: HashingEmbedder) -> None:
    batch, _ = _toy(50, seed=5)
    with pytest.raises(DataError, match="at least 2 clean and 2 noisy"):
        train_screener(batch, [False] * 50, hashing_embedder)
    with pytest.raises(DataError, match="holdout"):
        train_screener(batch, None, hashing_embedder, holdout=0.0)
    with pytest.raises(DataError, match="'answer'"):
        train_screener({"instruction": ["q"]}, None, hashing_embedder)


@pytest.fixture(scope="module")
def use_m3() -> Embedder:
    return create_embedder("use-m3", threads=1)  # one BLAS thread: robust on a busy 2-core box


@pytest.mark.slow  # ~3 s on an idle 2-core box (the model and ~700 texts), more under load
def test_with_use_m3_on_the_toy_set(use_m3: Embedder) -> None:
    batch, _ = _toy(240, seed=6)
    model, report = train_screener(batch, None, use_m3, seed=0)
    assert report.f1 >= 0.9
    fresh, fresh_noisy = _toy(120, seed=7)
    pred = model.noisy_mask(fresh)
    tp = int((pred & fresh_noisy).sum())
    assert tp / max(int(pred.sum()), 1) >= 0.9 and tp / int(fresh_noisy.sum()) >= 0.9
