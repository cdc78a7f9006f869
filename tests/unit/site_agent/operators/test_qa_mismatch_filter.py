import random

import numpy as np
import pytest

from site_agent.data.benchmark import LabelledRow, generate_qa_pairs, inject_noise, load_cmekg
from site_agent.data.toy import make_toy_dataset
from site_agent.embeddings.base import Embedder, create_embedder
from site_agent.errors import OperatorError
from site_agent.operators import create_operator
from site_agent.operators.cleaning.qa_mismatch_filter import QAMismatchFilter
from site_agent.operators.context import RunContext

ZH = [
    ("高血压患者日常饮食应注意什么？", "高血压患者应低盐低脂饮食，每日食盐不超过5克，多吃新鲜蔬菜水果，戒烟限酒。"),
    ("糖尿病的典型症状有哪些？",
     "糖尿病典型症状为多饮、多尿、多食和体重下降，即“三多一少”，部分患者伴有乏力、视物模糊。"),
    ("儿童发烧什么时候需要去医院？", "三个月以下婴儿体温超过38℃、发热超过三天、精神差、抽搐或呼吸困难时应立即就医。"),
    ("胃溃疡患者可以喝咖啡吗？", "咖啡会刺激胃酸分泌，加重溃疡症状，胃溃疡活动期应避免饮用咖啡和浓茶。"),
    ("骨质疏松应该怎么补钙？", "骨质疏松患者每日应摄入钙1000～1200毫克，多喝牛奶，同时补充维生素D并适当晒太阳。"),
    ("哮喘发作时该怎么办？", "哮喘发作时应立即使用沙丁胺醇等缓解性吸入剂，保持坐位，若症状不缓解应尽快就医。"),
    ("甲状腺功能减退需要终身服药吗？", "多数甲减患者需要长期服用左甲状腺素，定期复查甲功，根据TSH调整剂量。"),
    ("痛风患者不能吃什么？", "痛风患者应避免动物内脏、海鲜、浓肉汤和啤酒等高嘌呤食物，多喝水促进尿酸排泄。"),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return create_embedder("use-m3")  # the site's default embedder: multilingual, reads Chinese


def _bind(params: dict[str, float], embedder: Embedder) -> QAMismatchFilter:
    op = create_operator("qa_mismatch_filter", params).bind(RunContext(embedder_factory=lambda: embedder))
    assert isinstance(op, QAMismatchFilter)
    return op


def test_drops_chinese_answers_that_belong_to_another_question(embedder: Embedder) -> None:
    # rows 1, 4 and 6 get the answer of another question, as a join on a shifted key produces
    answers = [a for _, a in ZH]
    answers[1], answers[4], answers[6] = answers[4], answers[6], answers[1]
    batch = {"instruction": [q for q, _ in ZH], "answer": answers}
    out, stats = _bind({"min_similarity": 0.4}, embedder).run(batch)
    assert stats.dropped == 3 and stats.changed == 0
    assert out["instruction"] == [ZH[i][0] for i in (0, 2, 3, 5, 7)]
    assert out["answer"] == [ZH[i][1] for i in (0, 2, 3, 5, 7)]


@pytest.mark.slow
def test_separates_shifted_toy_answers(embedder: Embedder) -> None:
    batch, _ = make_toy_dataset(40, seed=11, noise_rate=0.0)
    shifted = list(range(0, 40, 5))  # the answer of the next chosen row: another condition and template
    answers = list(batch["answer"])
    for k, i in enumerate(shifted):
        answers[i] = batch["answer"][shifted[(k + 1) % len(shifted)]]
    noisy = {"instruction": batch["instruction"], "answer": answers}
    sims = _bind({}, embedder).similarities(noisy)
    bad = np.zeros(40, dtype=bool)
    bad[shifted] = True
    # ranking quality (AUC): how often a matched row scores above a mismatched one
    auc = float(np.mean(sims[~bad][:, None] > sims[bad][None, :]))
    assert auc > 0.9
    _, keep = _bind({"min_similarity": float(np.median(sims[bad]))}, embedder).apply(noisy)
    dropped = ~np.array(keep)
    assert (dropped & bad).sum() >= len(shifted) // 2 and (dropped & ~bad).sum() <= 1
    _, clean_stats = _bind({}, embedder).run(batch)
    assert clean_stats.dropped == 0  # the default threshold never drops a matched toy pair


def test_needs_an_embedder() -> None:
    with pytest.raises(OperatorError, match="embedder"):
        create_operator("qa_mismatch_filter", {}).bind(RunContext())


@pytest.fixture(scope="module")
def cmekg_rows() -> list[LabelledRow]:
    graph = load_cmekg()
    pairs = generate_qa_pairs({s: graph[s] for s in sorted(graph)[:600]}, seed=0)
    pairs = random.Random(0).sample(pairs, 150)
    return inject_noise(pairs, rate=0.3, mix={"qa_mismatch": 1.0}, seed=1)


@pytest.mark.slow
def test_drops_most_benchmark_mismatches(cmekg_rows: list[LabelledRow], embedder: Embedder) -> None:
    batch = {"instruction": [r.instruction for r in cmekg_rows], "answer": [r.answer for r in cmekg_rows]}
    bad = np.array([r.label == "qa_mismatch" for r in cmekg_rows])
    _, keep = _bind({}, embedder).apply(batch)
    dropped = ~np.array(keep)
    assert (dropped & bad).sum() >= 0.8 * bad.sum() and (dropped & ~bad).sum() <= 0.05 * (~bad).sum()
