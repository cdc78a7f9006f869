import csv
import json
from pathlib import Path

import pytest

from site_agent.data import load_pairs, make_toy_dataset, save_pairs
from site_agent.errors import DataError

SECRET = "patient Jane Roe, MRN 12345"


def test_jsonl_round_trip_keeps_every_character(tmp_path: Path) -> None:
    batch, _ = make_toy_dataset(60, seed=1)  # includes mojibake, control characters, tabs, html
    path = tmp_path / "out" / "pairs.jsonl"
    save_pairs(batch, path)
    assert load_pairs(path) == batch


def test_csv_keeps_text_as_written(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "reply", "extra"])
        w.writerows([["Dose?", "007", "x"], ["Multi\nline?", "", "y"], ["Fever?", "38.50 °C", "z"]])
    assert load_pairs(path, "question", "reply") == {
        "instruction": ["Dose?", "Multi\nline?", "Fever?"], "answer": ["007", "", "38.50 °C"]}


def test_parquet_and_json_array(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"instruction": ["q1", "q2"], "answer": ["a1", None]}
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    assert load_pairs(tmp_path / "pairs.parquet") == {"instruction": ["q1", "q2"], "answer": ["a1", ""]}
    (tmp_path / "pairs.json").write_text(json.dumps([{"instruction": "q", "answer": 3}]), encoding="utf-8")
    assert load_pairs(tmp_path / "pairs.json") == {"instruction": ["q"], "answer": ["3"]}


def test_no_cache_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    hf_cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    data = tmp_path / "data"
    data.mkdir()
    save_pairs({"instruction": ["q"], "answer": ["a"]}, data / "p.jsonl")
    load_pairs(data / "p.jsonl")
    assert not hf_cache.exists() or not any(hf_cache.iterdir())
    assert sorted(p.name for p in data.iterdir()) == ["p.jsonl"]


def _error(path: Path, **fields: str) -> str:
    with pytest.raises(DataError) as e:
        load_pairs(path, **fields)
    message = str(e.value)
    assert SECRET not in message and str(path.parent) not in message and "\n" not in message
    return message


@pytest.mark.parametrize(("name", "content", "why"), [
    ("pairs.jsonl", b"", "empty"),
    ("pairs.jsonl", b"\n  \n", "empty"),
    ("pairs.csv", b"instruction,answer\n", "no rows"),
    ("pairs.json", b"[ ]", "no rows"),
    ("pairs.csv", f"instruction,answer\nq,{SECRET}\n".encode("latin-1") + b"caf\xe9,x\n", "not valid UTF-8"),
    ("pairs.jsonl", json.dumps({"instruction": SECRET, "answer": "a"}).encode() + b"\n{" + SECRET.encode(),
     "could not be parsed as jsonl"),
    ("pairs.jsonl", json.dumps({"instruction": "q", "answer": {"nested": SECRET}}).encode(), "must hold text"),
    ("pairs.txt", SECRET.encode(), "unsupported data file type '.txt'"),
])
def test_bad_files_give_one_clear_line_without_content(tmp_path: Path, name: str, content: bytes,
                                                      why: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert why in _error(path)


def test_missing_file_and_missing_column(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "absent.jsonl")
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": SECRET, "answer": "a"}) + "\n", encoding="utf-8")
    assert _error(path) == "data file has no column 'instruction'"
    assert _error(path, instruction_field="question", answer_field="reply") == "data file has no column 'reply'"
