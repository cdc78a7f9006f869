from collections.abc import Sequence

import numpy as np
import pytest

from protos.views import ParamValue
from site_agent.data.toy import make_toy_dataset
from site_agent.embeddings.base import Embedder, create_embedder
from site_agent.errors import OperatorError
from site_agent.operators import create_operator
from site_agent.operators.base import Batch
from site_agent.operators.context import RunContext
from site_agent.operators.selection import diversity_select
from site_agent.operators.selection.diversity_select import facility_location, k_center

# One question asked over and over (a FAQ that dominates an export) ...
CLUSTER = [(f"{age}岁高血压患者每天应该吃多少盐？", f"{age}岁的高血压患者每日食盐应不超过5克，并减少腌制食品。")
           for age in range(40, 60)]
# ... and a few rarer topics that a diverse subset must not lose.
RARE = [
    ("儿童发烧什么时候需要去医院？", "三个月以下婴儿体温超过38℃、发热超过三天或出现抽搐时应立即就医。"),
    ("骨质疏松应该怎么补钙？", "每日摄入钙1000～1200毫克，多喝牛奶，同时补充维生素D并适当晒太阳。"),
    ("哮喘发作时该怎么办？", "立即使用沙丁胺醇等缓解性吸入剂，保持坐位，症状不缓解应尽快就医。"),
    ("What are the common symptoms of gout?", "Sudden joint pain, redness and swelling, often of the big toe."),
]


class Memo:
    """The site's real embedder, encoding each text once: the tests run the operator many times."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self._seen: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if todo:
            self._seen.update(zip(todo, self.inner.encode(todo), strict=True))
        return np.stack([self._seen[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


@pytest.fixture(scope="module")
def embedder() -> Memo:
    return Memo(create_embedder("use-m3"))


def _keep(params: dict[str, ParamValue], embedder: Memo, batch: Batch, seed: int = 0) -> list[bool]:
    op = create_operator("diversity_select", params).bind(RunContext(seed=seed, embedder_factory=lambda: embedder))
    out, stats = op.run(batch)
    _, keep = op.apply(batch)
    assert out == {c: [v[i] for i in range(len(v)) if keep[i]] for c, v in batch.items()}
    assert stats.changed == 0 and stats.kept == sum(keep)
    return keep


def test_rare_topics_survive_a_dominant_faq(embedder: Memo) -> None:
    rows = CLUSTER[:10] + [RARE[0]] + CLUSTER[10:] + RARE[1:]
    batch = {"instruction": [q for q, _ in rows], "answer": [a for _, a in rows]}
    rare = [rows.index(r) for r in RARE]
    for method in ("k_center", "facility_location"):
        for seed in (0, 1):
            keep = _keep({"fraction": 0.25, "method": method}, embedder, batch, seed)  # 6 of 24
            assert sum(keep) == 6 and all(keep[i] for i in rare)
            assert any(keep[i] for i in range(len(rows)) if i not in rare)


@pytest.mark.slow
def test_k_center_covers_the_toy_data_better_than_random_subsets(embedder: Memo) -> None:
    batch, _ = make_toy_dataset(100, seed=31, noise_rate=0.0)
    keep = _keep({"fraction": 0.1}, embedder, batch)
    assert sum(keep) == 10
    texts = [q + "\n" + a for q, a in zip(batch["instruction"], batch["answer"], strict=True)]
    emb = embedder.encode(texts).astype(np.float64)

    def radius(idx: Sequence[int] | np.ndarray) -> float:  # farthest any row is from the chosen subset
        return float((1.0 - emb @ emb[list(idx)].T).min(axis=1).max())

    def coverage(idx: Sequence[int] | np.ndarray) -> float:  # the facility-location objective
        return float(np.maximum(emb @ emb[list(idx)].T, 0.0).max(axis=1).sum())

    rng = np.random.default_rng(0)
    randoms = [rng.choice(100, 10, replace=False) for _ in range(20)]
    chosen = [i for i, k in enumerate(keep) if k]
    # greedy k-center is a 2-approximation of the best radius, not always below every random draw
    assert radius(chosen) < float(np.median([radius(r) for r in randoms]))
    fl = facility_location(emb, 10)
    assert len(set(fl)) == 10 and coverage(fl) > max(coverage(r) for r in randoms)
    fl_set = set(fl)
    assert _keep({"fraction": 0.1, "method": "facility_location"}, embedder, batch) == [
        i in fl_set for i in range(100)]


def test_field_fraction_and_seed(embedder: Memo) -> None:
    batch, _ = make_toy_dataset(40, seed=32, noise_rate=0.0)
    assert sum(_keep({"fraction": 1.0}, embedder, batch)) == 40
    assert sum(_keep({"fraction": 0.05}, embedder, batch)) == 2
    a = _keep({"fraction": 0.2, "field": "answer"}, embedder, batch, seed=5)
    assert a == _keep({"fraction": 0.2, "field": "answer"}, embedder, batch, seed=5)
    emb = embedder.encode(batch["answer"]).astype(np.float64)
    assert sorted(k_center(emb, 8, 5)) == [i for i, k in enumerate(a) if k]
    assert _keep({}, embedder, {"instruction": [], "answer": []}) == []


def test_limits_and_requirements(embedder: Memo, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, _ = make_toy_dataset(30, seed=33, noise_rate=0.0)
    monkeypatch.setattr(diversity_select, "FACILITY_LOCATION_MAX_ROWS", 20)
    op = create_operator("diversity_select", {"method": "facility_location"})
    with pytest.raises(OperatorError, match="at most 20 rows, got 30; use method k_center"):
        op.bind(RunContext(embedder_factory=lambda: embedder)).run(batch)
    with pytest.raises(OperatorError, match="embedder"):
        create_operator("diversity_select", {}).bind(RunContext())
