import numpy as np
import pytest

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
        self._model.fit(self._features(batch), np.array(noisy))

    @staticmethod
    def _features(batch: Batch) -> np.ndarray:
        return handcrafted_features(batch, np.zeros(len(batch["answer"])))

    def noisy_proba(self, batch: Batch) -> np.ndarray:
        return np.asarray(self._model.predict_proba(self._features(batch))[:, 1], dtype=np.float64)

    def noisy_mask(self, batch: Batch, threshold: float = 0.5) -> np.ndarray:
        return self.noisy_proba(batch) >= threshold


@pytest.fixture(scope="module")
def screener() -> FeatureScreener:
    batch, labels = make_toy_dataset(600, seed=21)
    return FeatureScreener(batch, [lab != "clean" for lab in labels])


def _keep(params: dict[str, float], screener: FeatureScreener, batch: Batch) -> list[bool]:
    op = create_operator("screening_threshold", params).bind(RunContext(screener=screener))
    out, stats = op.run(batch)
    _, keep = op.apply(batch)
    # run() drops exactly the flagged rows and never rewrites a kept one
    assert out == {c: [v[i] for i in range(len(v)) if keep[i]] for c, v in batch.items()}
    assert stats.changed == 0 and stats.dropped == keep.count(False)
    return keep


def test_keeps_clean_rows_and_drops_most_noisy_ones(screener: FeatureScreener) -> None:
    batch, labels = make_toy_dataset(400, seed=22)  # rows the screener has not seen
    keep = _keep({}, screener, batch)
    clean = [k for k, lab in zip(keep, labels, strict=True) if lab == "clean"]
    noisy = [k for k, lab in zip(keep, labels, strict=True) if lab != "clean"]
    assert sum(clean) >= 0.9 * len(clean)
    assert sum(noisy) <= 0.5 * len(noisy)


def test_threshold_moves_the_cut(screener: FeatureScreener) -> None:
    batch, _ = make_toy_dataset(200, seed=23)
    proba = screener.noisy_proba(batch)
    counts = [sum(_keep({"max_noisy_proba": t}, screener, batch)) for t in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert counts == sorted(counts) and counts[-1] == 200 and counts[0] < counts[-1]
    assert counts[2] == int((proba <= 0.5).sum())


def test_needs_a_screener() -> None:
    with pytest.raises(OperatorError, match="screener"):
        create_operator("screening_threshold", {}).bind(RunContext())
