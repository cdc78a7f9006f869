from site_agent.data.toy import make_toy_dataset
from site_agent.operators import create_operator


def test_drops_toy_duplicates_and_keeps_every_first_occurrence() -> None:
    batch, labels = make_toy_dataset(600, seed=9)
    assert "duplicate" in labels
    out, stats = create_operator("exact_dedup", {}).run(batch)
    assert stats.dropped == labels.count("duplicate") and stats.changed == 0
    kept = [i for i, lab in enumerate(labels) if lab != "duplicate"]
    assert out["answer"] == [batch["answer"][i] for i in kept]
    assert out["instruction"] == [batch["instruction"][i] for i in kept]


def test_leaves_clean_rows_alone() -> None:
    batch, labels = make_toy_dataset(600, seed=9, noise_rate=0.0)
    assert set(labels) == {"clean"}
    out, stats = create_operator("exact_dedup", {"key": "pair"}).run(batch)
    assert out == batch and stats.dropped == 0


def test_case_and_whitespace_options() -> None:
    batch = {"instruction": ["What is gout?", "what is  GOUT?", "What is gout?"],
             "answer": ["A form of arthritis.", "a form of arthritis.", "Something else entirely."]}
    assert create_operator("exact_dedup", {}).run(batch)[1].dropped == 1
    assert create_operator("exact_dedup", {"case_insensitive": False}).run(batch)[1].dropped == 0
    assert create_operator("exact_dedup", {"normalize_whitespace": False}).run(batch)[1].dropped == 0
    out, stats = create_operator("exact_dedup", {"key": "instruction"}).run(batch)
    assert stats.dropped == 2 and out["answer"] == ["A form of arthritis."]
    out, stats = create_operator("exact_dedup", {"key": "answer"}).run(batch)
    assert stats.dropped == 1 and out["instruction"] == ["What is gout?", "What is gout?"]
