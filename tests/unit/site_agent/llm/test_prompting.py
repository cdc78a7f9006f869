import pytest

from site_agent.llm.errors import LLMError
from site_agent.llm.prompting import (
    clean_reply,
    clip,
    detect_language,
    ends_complete,
    load_prompt,
    split_pair,
)
from site_agent.operators import registered_operators

LLM_OPS = ("fill_answer", "fill_question", "synthesize_pairs", "rewrite_question", "rewrite_answer", "rewrite_pair")


@pytest.mark.parametrize("raw, clean", [
    ("Answer: Gout is arthritis.<|im_end|>\n<|im_start|>user\nmore", "Gout is arthritis."),
    ("<|im_start|>assistant\nGout is arthritis.", "Gout is arthritis."),
    ("**Improved answer:** Gout is arthritis.", "Gout is arthritis."),
    ('"What is gout?"', "What is gout?"),
    ("“痛风是什么？”", "痛风是什么？"),
    ("改写后的回答：痛风是一种关节炎。</s>", "痛风是一种关节炎。"),
    ("Gout is arthritis.\nUser: thanks", "Gout is arthritis."),
    ("A 32-year-old with gout: see a doctor.", "A 32-year-old with gout: see a doctor."),
    ("<|im_end|>", ""), ("  ...  ", ""), ("答：\ufffd", ""),
])
def test_clean_reply(raw: str, clean: str) -> None:
    assert clean_reply(raw) == clean


def test_split_pair() -> None:
    assert split_pair("Question: What is gout?\nAnswer: Arthritis.\nQuestion: Next?\nAnswer: No.") == (
        "What is gout?", "Arthritis.")
    assert split_pair("问题：痛风是什么？\n回答：一种关节炎。") == ("痛风是什么？", "一种关节炎。")
    assert split_pair("Q: What is gout?\n\nA: Arthritis.<|im_end|>") == ("What is gout?", "Arthritis.")
    assert split_pair("Answer: only an answer.") is None
    assert split_pair("Question: ?\nAnswer: text") is None


def test_language_and_text_helpers() -> None:
    assert detect_language("高血压患者的HbA1c和CT检查结果") == "zh"
    assert detect_language("What is an HbA1c test?") == "en"
    assert detect_language("") == "en"
    assert ends_complete("It ends.") and ends_complete("它结束了。") and ends_complete('He said "stop!"')
    assert not ends_complete("For a 54-year") and not ends_complete("")
    assert clip("short", 10) == "short" and len(clip("word " * 100, 50)) <= 51


def test_every_llm_operator_has_its_prompt_in_both_languages() -> None:
    ops = registered_operators()
    for name in LLM_OPS:
        cls = ops[name]
        assert cls.requires == frozenset({"llm"})
        template = load_prompt(name, cls.version)
        fields = {"instruction": "Q", "answer": "A", "examples": "E"}
        for lang in ("en", "zh"):
            system, user = template.render(lang, fields)
            assert system and user and "{" not in user
    with pytest.raises(LLMError, match="no prompt file"):
        load_prompt("fill_answer", "999")
    with pytest.raises(LLMError, match="needs field"):
        load_prompt("fill_answer", "1").render("en", {})
