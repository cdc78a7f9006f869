import random

import pytest

from site_agent.data.benchmark import LabelledRow, generate_qa_pairs, inject_noise, load_cmekg
from site_agent.data.toy import make_toy_dataset
from site_agent.operators import create_operator
from site_agent.operators.cleaning.ngram_repetition_filter import is_cjk_text, longest_run, repetition_ratio

ZH_CLEAN = [
    ("高血压患者日常应该注意什么？",
     "高血压患者的日常管理包括：低盐低脂饮食，每日食盐不超过5克；规律有氧运动，每周至少150分钟；戒烟限酒；"
     "按医嘱规律服用降压药物，不可自行停药；每天早晚各测一次血压并记录。如出现剧烈头痛或胸痛，应立即就医。"),
    # a natural answer that repeats its key term a few times must survive
    ("2型糖尿病患者如何监测血糖？",
     "2型糖尿病患者应定期监测血糖，空腹血糖控制在4.4～7.0 mmol/L，非空腹血糖低于10.0 mmol/L。糖尿病患者还应"
     "每3个月检查一次糖化血红蛋白，每年检查一次眼底、肾功能和足部。糖尿病患者饮食应控制总热量，少吃精制糖。"),
]
ZH_LOOPS = [
    ("感冒了怎么办？", "多喝水，多休息。" * 8),
    ("胸闷气短是什么原因？", "可能与心肺疾病有关。建议您及时就医完善相关检查" * 6),
]


def test_drops_exactly_the_toy_repetition_loops() -> None:
    batch, labels = make_toy_dataset(600, seed=6)
    assert labels.count("repetition") > 5
    out, stats = create_operator("ngram_repetition_filter", {}).run(batch)
    assert stats.dropped == labels.count("repetition") and stats.changed == 0
    assert out["answer"] == [a for a, lab in zip(batch["answer"], labels, strict=True) if lab != "repetition"]


def test_chinese_uses_character_ngrams() -> None:
    rows = [*ZH_CLEAN, *ZH_LOOPS]
    batch = {"instruction": [q for q, _ in rows], "answer": [a for _, a in rows]}
    assert all(is_cjk_text(a) for a in batch["answer"])
    out, stats = create_operator("ngram_repetition_filter", {}).run(batch)
    assert out["instruction"] == [q for q, _ in ZH_CLEAN] and stats.dropped == 2
    # whitespace-split "words" of Chinese are whole clauses: the word view would miss the loop
    assert repetition_ratio(ZH_LOOPS[0][1]) == 1.0


def test_threshold_n_and_fields() -> None:
    text = "take the tablet with food " * 3 + "and drink plenty of water during the day"
    assert not is_cjk_text(text)
    r3 = repetition_ratio(text, word_n=3)
    assert 0.3 < r3 < 0.7
    assert repetition_ratio(text, word_n=10) < r3
    assert repetition_ratio("too short", word_n=3) == 0.0 and repetition_ratio("") == 0.0
    batch = {"instruction": [text, "What helps?"], "answer": ["Rest.", text]}
    assert create_operator("ngram_repetition_filter", {"max_ratio": 0.3}).run(batch)[1].dropped == 1
    assert create_operator("ngram_repetition_filter", {"max_ratio": 0.3, "fields": "both"}).run(batch)[1].dropped == 2
    assert create_operator("ngram_repetition_filter", {"max_ratio": 0.3, "word_n": 10}).run(batch)[1].dropped == 0


def test_a_loop_after_a_long_sound_prefix_is_caught_by_the_run_length() -> None:
    q, a = ZH_CLEAN[0]
    looped = a + "请及时就医，" * 8
    assert repetition_ratio(looped) < 0.5 and longest_run(looped) == 8
    assert longest_run(a) == 1 and longest_run("") == 1 and longest_run("哈哈") == 1
    assert longest_run("lajouani" * 6 + " syndrome") == 6  # a loop inside one Latin "word"
    batch = {"instruction": [q, q], "answer": [a, looped]}
    out, stats = create_operator("ngram_repetition_filter", {}).run(batch)
    assert out["answer"] == [a] and stats.dropped == 1
    assert create_operator("ngram_repetition_filter", {"max_consecutive": 0}).run(batch)[1].dropped == 0
    assert create_operator("ngram_repetition_filter", {"max_consecutive": 8}).run(batch)[1].dropped == 0


@pytest.fixture(scope="module")
def cmekg_rows() -> list[LabelledRow]:
    graph = load_cmekg()
    pairs = generate_qa_pairs({s: graph[s] for s in sorted(graph)[:600]}, seed=0)
    pairs = random.Random(0).sample(pairs, 400)
    return inject_noise(pairs, rate=0.3, mix={"repetition_loop": 1.0}, seed=1)


@pytest.mark.slow
def test_drops_every_benchmark_repetition_loop_and_no_clean_row(cmekg_rows: list[LabelledRow]) -> None:
    batch = {"instruction": [r.instruction for r in cmekg_rows], "answer": [r.answer for r in cmekg_rows]}
    _, keep = create_operator("ngram_repetition_filter", {}).apply(batch)
    assert [not k for k in keep] == [r.label == "repetition_loop" for r in cmekg_rows]
