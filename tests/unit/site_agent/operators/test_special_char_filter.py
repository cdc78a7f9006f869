import random

import pytest

from site_agent.data.benchmark import LabelledRow, generate_qa_pairs, inject_noise, load_cmekg
from site_agent.data.toy import make_toy_dataset
from site_agent.operators import create_operator
from site_agent.operators.cleaning.special_char_filter import special_ratio, strip_invisible

N, SEED = 600, 4

CLEAN_ZH = [
    ("高血压患者每天盐摄入量应控制在多少？", "一般建议每日食盐不超过5克（约一啤酒瓶盖），同时限制腌制食品。"),
    ("空腹血糖≥7.0 mmol/L说明什么？", "两次空腹血糖≥7.0 mmol/L可诊断为糖尿病，需结合糖化血红蛋白（HbA1c）评估。"),
    ("体温38.5℃需要服用退烧药吗？", "体温超过38.5℃可服用布洛芬或对乙酰氨基酚；儿童用药请按体重计算剂量。"),
]


def test_drops_exactly_the_garbled_toy_rows_at_a_strict_ratio() -> None:
    batch, labels = make_toy_dataset(N, SEED)
    assert labels.count("garbled") > 5
    out, stats = create_operator("special_char_filter", {"max_ratio": 0.0}).run(batch)
    assert stats.dropped == labels.count("garbled")
    assert out["answer"] == [a for a, lab in zip(batch["answer"], labels, strict=True) if lab != "garbled"]


def test_default_keeps_toy_rows_and_strips_control_characters() -> None:
    batch, labels = make_toy_dataset(N, SEED)
    with_controls = [i for i, a in enumerate(batch["answer"]) if any(ord(c) < 32 and c not in "\t\n\r" for c in a)]
    assert with_controls and all(labels[i] == "garbled" for i in with_controls)
    out, stats = create_operator("special_char_filter", {}).run(batch)
    assert stats.dropped == 0 and stats.changed == len(with_controls)
    clean, _ = make_toy_dataset(N, SEED, noise_rate=0.0)
    for i in with_controls:  # the control-character variant of 'garbled' is repaired completely
        assert out["answer"][i] == clean["answer"][i]
    kept, stats = create_operator("special_char_filter", {"strip_invisible": False}).run(batch)
    assert kept == batch and stats.changed == 0


def test_chinese_rows_pass_and_spam_or_misdecoded_rows_fail() -> None:
    spam = ("限时优惠🔥🔥🔥点击领取", "★★★☆☆ ░▒▓ 加微信 ➤➤➤ 免费看病 🎁🎁🎁🎁")
    boxes = ("\ue000\ue001\ue002？", "\ufffd\ufffd\ufffd\ufffd\ufffd 高血压")
    # a Chinese answer whose UTF-8 bytes were decoded as cp1252: Latin-1 letters, no odd category
    misdecoded = (CLEAN_ZH[0][0], CLEAN_ZH[0][1].encode("utf-8").decode("cp1252", errors="replace"))
    rows = [*CLEAN_ZH, spam, boxes, misdecoded]
    batch = {"instruction": [q for q, _ in rows], "answer": [a for _, a in rows]}
    out, stats = create_operator("special_char_filter", {}).run(batch)
    assert out["instruction"] == [q for q, _ in CLEAN_ZH] and stats.dropped == 3
    assert all(special_ratio(t) == 0.0 for row in CLEAN_ZH for t in row)
    assert special_ratio(misdecoded[1], count_mojibake=False) < 0.25 < special_ratio(misdecoded[1])
    out, stats = create_operator("special_char_filter", {"count_mojibake": False, "max_ratio": 0.25}).run(batch)
    assert stats.dropped == 2 and misdecoded[1] in out["answer"]


def test_ratio_and_stripping_details() -> None:
    assert special_ratio("") == 0.0 and special_ratio("   \n") == 0.0
    assert special_ratio("ab🔥🔥") == 0.5
    assert special_ratio("a\x1fb") == 1 / 3  # a separator control is damage, not whitespace
    assert special_ratio("胃痛锟斤拷锟斤拷") == 6 / 8 and special_ratio("胃痛锟斤拷", count_mojibake=False) == 0.0
    assert special_ratio("洗澡水烫烫的") == 0.0
    # UTF-8 read as GBK: ordinary-looking but rare characters, counted only when asked
    misread = "引起咽炎的原因".encode().decode("gbk", errors="replace")
    assert special_ratio(misread, count_rare_han=True) > special_ratio(misread) + 0.3
    assert strip_invisible("a\x00b\u200bc\ue000d\te\nf") == "abcd\te\nf"
    assert strip_invisible("plain") == "plain"


@pytest.fixture(scope="module")
def cmekg_rows() -> list[LabelledRow]:
    graph = load_cmekg()
    pairs = generate_qa_pairs({s: graph[s] for s in sorted(graph)[:600]}, seed=0)
    pairs = random.Random(0).sample(pairs, 400)
    return inject_noise(pairs, rate=0.3, mix={"garbled_encoding": 1.0}, seed=1)


@pytest.mark.slow
def test_drops_benchmark_garbled_encoding_and_no_clean_row(cmekg_rows: list[LabelledRow]) -> None:
    batch = {"instruction": [r.instruction for r in cmekg_rows], "answer": [r.answer for r in cmekg_rows]}
    garbled = {i for i, r in enumerate(cmekg_rows) if r.label == "garbled_encoding"}
    for params, share in (({}, 0.75), ({"count_rare_han": True}, 0.95)):
        _, keep = create_operator("special_char_filter", params).apply(batch)
        dropped = {i for i, k in enumerate(keep) if not k}
        assert dropped <= garbled and len(dropped) >= share * len(garbled)
