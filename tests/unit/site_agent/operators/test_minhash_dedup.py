import random

import pytest

from site_agent.data.benchmark import LabelledRow, generate_qa_pairs, inject_noise, load_cmekg
from site_agent.data.toy import make_toy_dataset
from site_agent.operators import create_operator
from site_agent.operators.cleaning.minhash_dedup import shingles
from site_agent.operators.context import RunContext

BASE = [
    ("高血压患者日常应该注意什么？",
     "高血压患者应低盐低脂饮食，每日食盐不超过5克；规律有氧运动，每周至少150分钟；戒烟限酒；按医嘱规律服用"
     "降压药物，不可自行停药；每天早晚各测一次血压并记录，复诊时带给医生参考。"),
    ("2型糖尿病患者如何监测血糖？",
     "空腹血糖宜控制在4.4～7.0 mmol/L，非空腹血糖低于10.0 mmol/L；每3个月检查一次糖化血红蛋白，每年检查一次"
     "眼底、肾功能和足部，发现异常及时就诊。"),
    ("儿童发烧什么时候需要去医院？",
     "三个月以下婴儿体温超过38℃、发热超过三天、精神差、抽搐或呼吸困难时应立即就医；其余情况可先物理降温，"
     "按体重服用退烧药并多喝水。"),
]
# Re-posts of the first two rows as they show up in merged exports: punctuation, one word, a greeting.
NEAR = [
    ("高血压患者日常应该注意什么?",
     "高血压患者应低盐低脂饮食,每日食盐不超过5克;规律有氧运动,每周至少150分钟;戒烟限酒;按医嘱规律服用"
     "降压药物,不可自行停药;每天早晚各测一次血压并记录,复诊时带给医生参考。"),
    ("2型糖尿病患者如何监测血糖？",
     "空腹血糖宜控制在4.4～7.0 mmol/L，非空腹血糖低于10.0 mmol/L；每3个月查一次糖化血红蛋白，每年检查一次"
     "眼底、肾功能和足部，发现异常及时就诊。"),
]


def _jaccard(a: str, b: str, size: int = 3) -> float:
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / len(sa | sb)


def test_drops_chinese_near_duplicates_and_keeps_the_first() -> None:
    rows = [BASE[0], BASE[1], NEAR[0], BASE[2], NEAR[1]]
    batch = {"instruction": [q for q, _ in rows], "answer": [a for _, a in rows]}
    out, stats = create_operator("minhash_dedup", {}).run(batch)
    assert stats.dropped == 2 and stats.changed == 0
    assert out["answer"] == [a for _, a in BASE]
    # a strict threshold tolerates the one-word edit but still catches the punctuation-only copy
    assert _jaccard("\n".join(BASE[1]), "\n".join(NEAR[1]), 5) < 0.95
    strict = {"threshold": 0.99, "shingle_size": 5, "num_perm": 256}
    out, stats = create_operator("minhash_dedup", strict).run(batch)
    assert stats.dropped == 1 and NEAR[1][1] in out["answer"]
    # keyed on the instruction alone, the reposted question with another answer is a duplicate too
    other = {"instruction": [BASE[0][0], NEAR[0][0]], "answer": [BASE[0][1], BASE[2][1]]}
    assert create_operator("minhash_dedup", {}).run(other)[1].dropped == 0
    assert create_operator("minhash_dedup", {"key": "instruction"}).run(other)[1].dropped == 1


def test_toy_duplicates_all_go_and_every_drop_has_a_close_kept_twin() -> None:
    batch, labels = make_toy_dataset(400, seed=8)
    op = create_operator("minhash_dedup", {"threshold": 0.8, "num_perm": 128}).bind(RunContext(seed=3))
    _, keep = op.apply(batch)
    dup = [i for i, lab in enumerate(labels) if lab == "duplicate"]
    assert dup and not any(keep[i] for i in dup)
    grams = [shingles(q + "\n" + a, 3) for q, a in zip(batch["instruction"], batch["answer"], strict=True)]
    kept = [i for i in range(len(grams)) if keep[i]]
    dropped = [i for i in range(len(grams)) if not keep[i]]
    assert len(dropped) > len(dup)
    for i in dropped[::5]:
        # toy rows come from templates, so near-twins among clean rows are real near-duplicates
        assert max(len(grams[i] & grams[j]) / len(grams[i] | grams[j]) for j in kept if j < i) >= 0.7
    # deterministic for a seed
    assert op.apply(batch)[1] == keep


def test_empty_texts_are_kept_and_short_texts_compare_whole() -> None:
    batch = {"instruction": ["Q1", "Q2", "Q3", "Q4"], "answer": ["", " ", "ok", "OK"]}
    out, stats = create_operator("minhash_dedup", {"key": "answer"}).run(batch)
    assert stats.dropped == 1 and out["answer"] == ["", " ", "ok"]
    assert shingles("  Ab ", 5) == {"ab"} and shingles("", 3) == set() and shingles("a，b", 3) == {"a b"}
    # a high threshold with few permutations still builds an index (at least two bands)
    strict = create_operator("minhash_dedup", {"threshold": 0.99, "num_perm": 16, "key": "answer"})
    assert strict.run(batch)[1].dropped == 1


@pytest.fixture(scope="module")
def cmekg_rows() -> list[LabelledRow]:
    graph = load_cmekg()
    pairs = generate_qa_pairs({s: graph[s] for s in sorted(graph)[:600]}, seed=0)
    pairs = random.Random(0).sample(pairs, 400)
    return inject_noise(pairs, rate=0.3, mix={"near_duplicate": 2.0, "exact_duplicate": 1.0}, seed=1)


@pytest.mark.slow
def test_collapses_benchmark_near_and_exact_duplicates(cmekg_rows: list[LabelledRow]) -> None:
    labels = [r.label for r in cmekg_rows]
    batch = {"instruction": [r.instruction for r in cmekg_rows], "answer": [r.answer for r in cmekg_rows]}
    _, keep = create_operator("minhash_dedup", {}).bind(RunContext(seed=1)).apply(batch)
    copies = labels.count("near_duplicate") + labels.count("exact_duplicate")
    # the copy may come before its original in the file: then the original is the one that goes
    assert 0.9 * copies <= keep.count(False) <= copies
    for i in (i for i in range(len(keep)) if not keep[i]):
        assert any(keep[j] and cmekg_rows[j].subject == cmekg_rows[i].subject for j in range(i))
