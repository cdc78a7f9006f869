import numpy as np
import pytest

from protos.views import ParamValue
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.operators import create_operator
from site_agent.operators.base import Batch
from site_agent.operators.context import RunContext
from site_agent.screening.features import handcrafted_features


class FeatureScreener:
    """A real logistic-regression screener on the site's hand-crafted screening signals, trained on
    labelled toy rows (the embedding part of the site's classifier is left out to keep the test fast)."""

    version = "test-handcrafted-lr"

    def __init__(self, batch: Batch, noisy: list[bool]) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))
        self._model.fit(handcrafted_features(batch, np.zeros(len(noisy))), np.array(noisy))

    def noisy_proba(self, batch: Batch) -> np.ndarray:
        x = handcrafted_features(batch, np.zeros(len(batch["answer"])))
        return np.asarray(self._model.predict_proba(x)[:, 1], dtype=np.float64)

    def noisy_mask(self, batch: Batch, threshold: float = 0.5) -> np.ndarray:
        return self.noisy_proba(batch) >= threshold


@pytest.fixture(scope="module")
def screener() -> FeatureScreener:
    batch, labels = make_toy_dataset(600, seed=41)
    return FeatureScreener(batch, [lab != "clean" for lab in labels])


def _keep(params: dict[str, ParamValue], batch: Batch, screener: FeatureScreener | None = None) -> list[bool]:
    op = create_operator("length_balanced_topk", params).bind(RunContext(screener=screener))
    out, stats = op.run(batch)
    _, keep = op.apply(batch)
    assert out == {c: [v[i] for i in range(len(v)) if keep[i]] for c, v in batch.items()}
    assert stats.changed == 0 and stats.kept == sum(keep)
    return keep


def _lengths(batch: Batch) -> np.ndarray:
    return np.array([len(a.strip()) for a in batch["answer"]])


def test_short_answers_survive_when_balanced() -> None:
    batch, _ = make_toy_dataset(400, seed=42)
    lengths = _lengths(batch)
    quartile = np.sort(lengths)[len(lengths) // 4]
    flat = np.array(_keep({"fraction": 0.5, "buckets": 1}, batch))
    balanced = np.array(_keep({"fraction": 0.5, "buckets": 4}, batch))
    assert flat.sum() == balanced.sum() == 200
    # ranked on length alone, no answer of the shortest quarter survives; balanced, a half of them does
    assert not flat[lengths < quartile].any()
    assert balanced[lengths < quartile].sum() >= 0.4 * (lengths < quartile).sum()
    # within a bucket the longer answers win: every dropped row is at most as long as the kept ones
    order = np.argsort(lengths, kind="stable")
    for bucket in np.array_split(order, 4):
        kept, dropped = bucket[balanced[bucket]], bucket[~balanced[bucket]]
        assert len(kept) == 50 and lengths[dropped].max() <= lengths[kept].min()


def test_screening_signal_keeps_the_cleanest_rows_of_each_bucket(screener: FeatureScreener) -> None:
    batch, labels = make_toy_dataset(300, seed=43)
    keep = np.array(_keep({"fraction": 0.6, "buckets": 3, "signal": "screening"}, batch, screener))
    proba = screener.noisy_proba(batch)
    order = np.argsort(_lengths(batch), kind="stable")
    for bucket in np.array_split(order, 3):
        assert keep[bucket].sum() == 60 and proba[bucket][keep[bucket]].max() <= proba[bucket][~keep[bucket]].min()
    noisy = np.array([lab != "clean" for lab in labels])
    assert noisy[keep].mean() < noisy.mean() / 2


def test_small_batches_and_requirements() -> None:
    batch, _ = make_toy_dataset(3, seed=44, noise_rate=0.0)
    assert sum(_keep({"fraction": 0.05, "buckets": 20}, batch)) == 3  # one per bucket at least
    assert _keep({}, {"instruction": [], "answer": []}) == []
    with pytest.raises(OperatorError, match="screener"):
        create_operator("length_balanced_topk", {"signal": "screening"}).bind(RunContext())
