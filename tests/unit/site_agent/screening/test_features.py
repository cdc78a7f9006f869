import numpy as np
import pytest

from site_agent.screening.features import HANDCRAFTED, handcrafted_features, screening_features

from .conftest import HashingEmbedder

_CLEAN_Q, _CLEAN_A = "What is gout?", "Gout is a form of arthritis that causes sudden joint pain."
_ZH_Q, _ZH_A = "痛风有什么症状？", "痛风的常见症状包括：关节疼痛、红肿和发热。"

# (instruction, answer, the signal that must fire)
ROWS = [
    (_CLEAN_Q, _CLEAN_A, None),
    (_CLEAN_Q, "<p>Gout is a form of arthritis&nbsp;that causes pain.</p>", "markup"),
    (_CLEAN_Q, "Gout isnâ€™t rare; it causes sudden joint pain.", "mojibake"),
    (_ZH_Q, "痛风的常è§ç—‡çŠ¶åŒ…æ‹¬å…³èŠ‚ç–¼ç—›ã€‚", "mojibake"),
    (_CLEAN_Q, "Gout is a form\x07 of arthritis that causes pain.", "control"),
    (_CLEAN_Q, "Gout is  a form of\tarthritis that causes pain. ", "whitespace"),
    (_ZH_Q, "痛风的常见症状包括：关节 疼痛、红肿。", "whitespace"),
    (_CLEAN_Q, "Gout is painful. " + "please rest now " * 20, "repetition"),
    (_CLEAN_Q, "Gout is a fo", "unterminated"),
    (_ZH_Q, "痛风的常见症状包括关节疼痛。如需复诊请致电13812345678。", "digit_runs"),
    (_CLEAN_Q, "Gout causes joint pain. Reports go to dr.wang@example.com.", "email"),
    (_CLEAN_Q, "Gout causes pain. Visit http://www.cure-now.cn for a discount!", "contact_spam"),
    (_ZH_Q, "加微信ab123456免费咨询专家。痛风的常见症状包括关节疼痛。", "contact_spam"),
    ("你好，痛风有什么症状呢？", _ZH_A, "forum_tell"),
    (_ZH_Q, "痛风的常见症状包括：关节疼疼痛、红肿。", "doubled_char"),
    (_ZH_Q, "痛风的常见症状包括:关节疼痛,红肿。", "halfwidth"),
    (_CLEAN_Q, _CLEAN_A, "dup_exact"),
    ("请问痛风有什么症状？？", _ZH_A.replace("、", ","), "dup_near"),
]


def _features() -> np.ndarray:
    # a clean Chinese pair goes first: the edited re-post in ROWS is then a later copy of it
    batch = {"instruction": [_ZH_Q] + [r[0] for r in ROWS], "answer": [_ZH_A] + [r[1] for r in ROWS]}
    return handcrafted_features(batch, np.ones(len(ROWS) + 1))[1:]


def test_feature_names_are_unique() -> None:
    assert len(set(HANDCRAFTED)) == len(HANDCRAFTED)


@pytest.mark.parametrize("row", range(1, len(ROWS)))
def test_each_signal_fires_on_its_defect_and_not_on_the_clean_pair(row: int) -> None:
    x = _features()
    col = HANDCRAFTED.index(str(ROWS[row][2]))
    assert x[row, col] > x[0, col], ROWS[row][2]


def test_clean_pair_is_quiet() -> None:
    x = _features()[0]
    quiet = ("markup", "mojibake", "control", "whitespace", "unterminated", "digit_runs", "email", "contact_spam",
             "forum_tell", "doubled_char", "halfwidth", "dup_exact", "dup_near")
    assert all(x[HANDCRAFTED.index(name)] == 0.0 for name in quiet)


def test_duplicates_flag_the_later_copy_only() -> None:
    batch = {"instruction": ["A question?", "Another one?", "a  QUESTION?"],
             "answer": ["An answer here.", "Something else.", "an answer here."]}
    x = handcrafted_features(batch, np.zeros(3))
    assert x[:, HANDCRAFTED.index("dup_exact")].tolist() == [0.0, 0.0, 1.0]


def test_question_answer_agreement_signals() -> None:
    batch = {"instruction": [_ZH_Q, _ZH_Q], "answer": [_ZH_A, "二甲双胍是治疗2型糖尿病的一线药物。"]}
    x = handcrafted_features(batch, np.zeros(2))
    for name in ("qa_overlap", "qa_common"):
        assert x[0, HANDCRAFTED.index(name)] > x[1, HANDCRAFTED.index(name)]


def test_rare_characters_stand_out_in_a_batch() -> None:
    batch = {"instruction": [_ZH_Q] * 6, "answer": [_ZH_A] * 5 + ["鍖荤枟鐥呬汉鐨勫父瑙佺棁鐘"]}
    x = handcrafted_features(batch, np.zeros(6))[:, HANDCRAFTED.index("rare_chars")]
    assert x[5] > 0.5 and x[:5].max() == 0.0


def test_screening_features_put_the_embedding_first(hashing_embedder: HashingEmbedder) -> None:
    batch = {"instruction": [_CLEAN_Q, _ZH_Q], "answer": [_CLEAN_A, _ZH_A]}
    x = screening_features(batch, hashing_embedder)
    assert x.shape == (2, hashing_embedder.dim + len(HANDCRAFTED)) and x.dtype == np.float64
    assert np.allclose(x[:, :hashing_embedder.dim], hashing_embedder.encode(["What is gout?\n" + _CLEAN_A,
                                                                             _ZH_Q + "\n" + _ZH_A]))
    cosine = x[:, hashing_embedder.dim + HANDCRAFTED.index("qa_cosine")]
    assert -1.0 <= cosine.min() and cosine.max() <= 1.0 + 1e-6
