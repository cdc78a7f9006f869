from __future__ import annotations

import random
from pathlib import Path

import pytest

from site_agent.errors import EvaluationError
from site_agent.evaluation.lora_data import (
    IGNORE,
    collate,
    encode_batch,
    encode_prompt,
    epoch_batches,
    poisson_batches,
)
from site_agent.evaluation.lora_train import load_tokenizer
from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model


def test_labels_cover_the_answer_and_its_end_token_only(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    rows = encode_batch(tok, {"instruction": ["What is gout?", "Empty?"], "answer": ["A joint disease.", ""]}, 128)
    prompt = encode_prompt(tok, "What is gout?", 128)
    first = rows[0]
    assert list(first.input_ids[:len(prompt)]) == prompt and set(first.labels[:len(prompt)]) == {IGNORE}
    answer = [t for t in first.labels if t != IGNORE]
    assert tok.decode(answer[:-1]) == "A joint disease." and answer[-1] == tok.eos_token_id
    assert rows[1].answer_tokens == 1  # an empty answer still teaches "stop here"
    assert "<|im_start|>assistant" in tok.decode(prompt)


def test_long_rows_keep_the_answer_and_the_end_of_the_prompt(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    long_q, long_a = "why " * 200, "because " * 200
    row, = encode_batch(tok, {"instruction": [long_q], "answer": [long_a]}, 64)
    assert len(row.input_ids) == 64 and row.answer_tokens == 32
    assert tok.decode(list(row.input_ids[:32])).endswith("<|im_start|>assistant\n")
    short, = encode_batch(tok, {"instruction": [long_q], "answer": ["yes"]}, 64)
    assert len(short.input_ids) == 64 and short.answer_tokens == len(tok("yes")["input_ids"]) + 1


def test_plain_layout_without_a_chat_template(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, ["Question: what Answer: this"] * 5, vocab=300, chat_template=False)
    tok = load_tokenizer(folder)
    row, = encode_batch(tok, {"instruction": ["what"], "answer": ["this"]}, 32)
    assert tok.decode(list(row.input_ids)).startswith("Question: what\nAnswer: ")


def test_collate_pads_right_and_masks(tiny_model: Path) -> None:
    import torch

    tok = load_tokenizer(tiny_model)
    rows = encode_batch(tok, {"instruction": ["a", "a much longer question here"], "answer": ["b", "c"]}, 64)
    ids, labels, mask = collate(torch, rows, tok.pad_token_id)
    assert ids.shape == labels.shape == mask.shape == (2, len(rows[1].input_ids))
    pad = len(rows[1].input_ids) - len(rows[0].input_ids)
    assert mask[0, -pad:].sum() == 0 and (labels[0, -pad:] == IGNORE).all()
    assert (ids[0, -pad:] == tok.pad_token_id).all()


def test_encode_checks(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    with pytest.raises(EvaluationError, match="seq_len"):
        encode_batch(tok, {"instruction": ["q"], "answer": ["a"]}, 4)


def test_epoch_batches_are_seeded_permutations() -> None:
    batches = epoch_batches(10, steps=5, size=4, seed=3)
    assert batches == epoch_batches(10, steps=5, size=4, seed=3) != epoch_batches(10, steps=5, size=4, seed=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert epoch_batches(3, steps=2, size=5, seed=0)[0] != []  # fewer rows than a batch: wraps around
    with pytest.raises(EvaluationError):
        epoch_batches(0, steps=1, size=1, seed=0)


def test_poisson_batches_are_reproducible_and_about_q() -> None:
    a = poisson_batches(200, 50, 0.1, random.Random(1))
    assert a == poisson_batches(200, 50, 0.1, random.Random(1))
    assert 15 < sum(map(len, a)) / 50 < 25
    assert poisson_batches(5, 3, 1.0, random.Random(0)) == [list(range(5))] * 3


@pytest.mark.slow
def test_default_model_tokenizer_rows() -> None:
    """The bundled SmolLM2's own chat template and end token (the default base model)."""
    from protos.bundled_models import smollm2_folder

    tok = load_tokenizer(smollm2_folder())
    row, = encode_batch(tok, {"instruction": ["What is gout?"], "answer": ["A form of arthritis."]}, 128)
    labelled = [t for t in row.labels if t != IGNORE]
    assert tok.decode(labelled) == "A form of arthritis.<|im_end|>"
    assert tok.decode(list(row.input_ids[:len(row.input_ids) - len(labelled)])).endswith(
        "What is gout?<|im_end|>\n<|im_start|>assistant\n")
