import random
import re
from collections import Counter
from difflib import SequenceMatcher

import pytest

from site_agent.data.benchmark.noise import CLEAN, NOISE_TYPES, LabelledRow, allocate, inject_noise
from site_agent.data.benchmark.pii import PII_PATTERNS, fake_id_number, fake_mobile, id_check_digit
from site_agent.data.benchmark.qa import QAPair
from site_agent.errors import DataError

PAIRS = [QAPair(f"疾病{i}有哪些常见症状？", f"疾病{i}的常见症状包括：发热、咳嗽、乏力、头痛、恶心{i}。",
                f"疾病{i}", "常见症状", "呼吸科" if i % 2 else "儿科", "disease") for i in range(600)]
EVEN_MIX = dict.fromkeys(NOISE_TYPES, 1.0)
HTML = re.compile(r"<[a-zA-Z/][^>]*>|&(?:[a-z]+|#\d+);")
SPAM = re.compile(r"微信|https?://|点击链接|QQ群|热线400|公众号")


def _rows(seed: int = 0, rate: float = 0.5, mix: dict[str, float] | None = None) -> list[LabelledRow]:
    return inject_noise(PAIRS, rate=rate, mix=mix or EVEN_MIX, seed=seed)


def test_exact_counts_and_every_type_labelled() -> None:
    rows = _rows()
    counts = Counter(r.label for r in rows)
    assert counts[CLEAN] == 300 and set(counts) == {CLEAN, *NOISE_TYPES}
    assert all(counts[t] == 30 for t in NOISE_TYPES)


def test_each_type_looks_like_its_damage() -> None:
    rows = _rows()
    clean = {(r.instruction, r.answer) for r in rows if r.label == CLEAN}
    originals = {(p.instruction, p.answer): p for p in PAIRS}
    for i, r in enumerate(rows):
        src, text = PAIRS[i], r.instruction + r.answer
        if r.label == CLEAN:
            assert (r.instruction, r.answer) == (src.instruction, src.answer)
        elif r.label == "exact_duplicate":
            assert (r.instruction, r.answer) in clean  # the original is still in the set, to be found
        elif r.label == "near_duplicate":
            assert (r.instruction, r.answer) not in originals
            twin = next(p for j, p in enumerate(PAIRS) if p.subject == r.subject and rows[j].label == CLEAN)
            assert SequenceMatcher(None, text, twin.instruction + twin.answer).ratio() > 0.85
        elif r.label == "html_residue":
            assert HTML.search(text)
        elif r.label == "pii":
            assert any(p.search(text) for p in PII_PATTERNS.values())
        elif r.label == "truncated_answer":
            assert src.answer.startswith(r.answer) and len(r.answer) < len(src.answer)
        elif r.label == "empty_or_one_word_answer":
            assert len(r.answer.strip()) <= 3
        elif r.label == "qa_mismatch":
            assert r.instruction == src.instruction and r.answer != src.answer
            assert r.answer in {p.answer for p in PAIRS} and not r.answer.startswith(src.subject + "的")
        elif r.label == "advertising_spam":
            assert SPAM.search(text)
        elif r.label == "repetition_loop":
            assert len(r.answer) > 2 * len(src.answer) * 0.3 and _has_loop(r.answer)
        elif r.label == "garbled_encoding":
            assert re.search("[\ufffd\x80-\xff]|锟斤拷", r.answer) or r.answer != src.answer


def _has_loop(text: str) -> bool:
    return any(text.count(text[-k:]) >= 10 for k in range(2, 12))


def test_deterministic_and_seed_dependent() -> None:
    assert _rows(seed=4) == _rows(seed=4)
    assert _rows(seed=4) != _rows(seed=5)


def test_mix_controls_the_share_of_each_type() -> None:
    mix = {"pii": 8.0, "html_residue": 1.0, "garbled_encoding": 1.0}
    counts = Counter(r.label for r in _rows(rate=0.2, mix=mix))
    assert counts == {CLEAN: 480, "pii": 96, "html_residue": 12, "garbled_encoding": 12}
    assert Counter(r.label for r in _rows(rate=0.0)) == {CLEAN: 600}


def test_allocate_keeps_rare_types_present() -> None:
    counts = allocate(20, {"pii": 100.0, "html_residue": 0.1, "qa_mismatch": 0.1})
    assert sum(counts.values()) == 20 and counts["html_residue"] == 1 and counts["qa_mismatch"] == 1
    assert allocate(0, EVEN_MIX) == {} and sum(allocate(7, EVEN_MIX).values()) == 7


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(DataError, match="noise rate"):
        _rows(rate=0.95)
    with pytest.raises(DataError, match="unknown noise type 'typo'"):
        _rows(mix={"typo": 1.0})
    with pytest.raises(DataError, match="no positive weight"):
        _rows(mix={"pii": 0.0})


def test_synthetic_identifiers_are_well_formed() -> None:
    rng = random.Random(0)
    for _ in range(200):
        number = fake_id_number(rng)
        assert re.fullmatch(r"\d{17}[\dX]", number) and id_check_digit(number[:17]) == number[17]
        assert PII_PATTERNS["mobile"].fullmatch(fake_mobile(rng))
    assert id_check_digit("11010519491231002") == "X"  # the GB 11643 worked example
