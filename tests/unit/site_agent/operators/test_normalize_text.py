from pathlib import Path

from site_agent.data.toy import make_toy_dataset
from site_agent.evaluation.quality_proxy import row_defects
from site_agent.operators import create_operator
from site_agent.operators.cleaning.normalize_text import fix_mojibake, normalize

N, SEED = 600, 5


def test_repairs_garbled_rows_back_to_the_original_text() -> None:
    noisy, labels = make_toy_dataset(N, SEED)
    clean, _ = make_toy_dataset(N, SEED, noise_rate=0.0)
    idx = [i for i, lab in enumerate(labels) if lab == "garbled"]
    assert idx
    raw = {c: [noisy[c][i] for i in idx] for c in noisy}
    assert all("garbled" in d for d in row_defects(raw))
    out, stats = create_operator("normalize_text", {}).run(raw)
    assert stats.changed == len(idx) and stats.dropped == 0
    assert out["answer"] == [clean["answer"][i] for i in idx]
    assert out["instruction"] == [clean["instruction"][i] for i in idx]


def test_whitespace_rows_come_out_without_defects() -> None:
    noisy, labels = make_toy_dataset(N, SEED)
    idx = [i for i, lab in enumerate(labels) if lab == "whitespace"]
    raw = {c: [noisy[c][i] for i in idx] for c in noisy}
    assert all("whitespace" in d for d in row_defects(raw))
    out, _ = create_operator("normalize_text", {"form": "NFC"}).run(raw)
    assert all(not d for d in row_defects(out))


def test_leaves_clean_rows_alone() -> None:
    noisy, labels = make_toy_dataset(N, SEED)
    idx = [i for i, lab in enumerate(labels) if lab == "clean"]
    raw = {c: [noisy[c][i] for i in idx] for c in noisy}
    out, stats = create_operator("normalize_text", {}).run(raw)
    assert out == raw and stats.changed == 0


def test_options() -> None:
    text = "ｆｅｖｅｒ  of 38\u00a0°C\x00\r\nnext\u200b line"
    assert normalize(text, "NFKC") == "fever of 38 °C\nnext line"
    assert normalize(text, "NFC").startswith("ｆｅｖｅｒ of")
    assert normalize(text, "NFKC", collapse_whitespace=False) == "fever  of 38 °C\nnext line"
    garbled = "cafÃ© â€“ 38 Â°C"
    assert normalize(garbled) == "café – 38 °C"
    assert normalize(garbled, repair_mojibake=False) == garbled


def test_mojibake_repair_never_touches_correct_text() -> None:
    for text in ["Ménière’s disease", "naïve café – 38 °C", "Ã alone", "plain ascii"]:
        assert fix_mojibake(text) == text
    latin1 = "Sjögren’s".encode().decode("latin-1")  # C1 control characters instead of cp1252 glyphs
    assert fix_mojibake(latin1) == "Sjögren’s"


def test_chinese_punctuation_and_symbols_are_kept_under_nfkc() -> None:
    # NFKC alone would turn every full-width ？，：（） into ASCII and ℃ into °C: every clean row of a Chinese
    # site would change, and the model would learn punctuation its held-out questions never use.
    text = "发热３８℃怎么办？  可以吃（布洛芬）吗……疗程３～５天：ｆｅｖｅｒ\u00a0好"
    assert normalize(text) == "发热38℃怎么办？ 可以吃（布洛芬）吗……疗程3～5天：fever 好"
    assert normalize(text, keep_cjk_punctuation=False) == "发热38°C怎么办? 可以吃(布洛芬)吗......疗程3~5天:fever 好"
    assert normalize("ｆｅｖｅｒ？ of 38\u00a0°C") == "fever? of 38 °C"  # no CJK text: folded as before
    clean = {"instruction": ["头痛怎么办？"], "answer": ["建议休息，必要时就医（神经内科）。"]}
    out, stats = create_operator("normalize_text", {}).run(clean)
    assert out == clean and stats.changed == 0


def test_leaves_clean_benchmark_rows_of_every_site_alone(tmp_path: Path) -> None:
    import json

    from site_agent.data.benchmark import build_benchmark

    manifest = build_benchmark(tmp_path, sites=3, seed=0, total_pairs=300, eval_per_site=10)
    for site in manifest.sites:
        rows = [json.loads(line) for line in (tmp_path / site.site_id / "train.jsonl").open(encoding="utf-8")]
        clean = [r for r in rows if r["label"] == "clean"]
        assert clean
        for r in clean:
            assert normalize(r["instruction"]) == r["instruction"] and normalize(r["answer"]) == r["answer"]
