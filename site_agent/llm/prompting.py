"""Versioned prompt files and reply clean-up shared by the LLM operators.

A prompt lives in ``site_agent/llm/prompts/<name>.v<version>.txt`` with one ``[system.<lang>]`` and one
``[user.<lang>]`` section per language (``en``, ``zh``) and ``{field}`` placeholders; ``#`` lines are
comments. An operator loads the file of its own version, so changing a prompt means a new file and a new
operator version, and cached outputs of the old prompt are never reused for the new one.

Replies of small chat models carry artefacts (role labels, end-of-turn tokens, a second turn they
invented, quotes around everything): :func:`clean_reply` strips them and returns "" when nothing is
left, which callers treat as "keep the original row".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

from site_agent.llm.base import LLMBackend
from site_agent.llm.errors import LLMError

__all__ = [
    "PAIR_LABELS",
    "Lang",
    "PromptTemplate",
    "chat_by_language",
    "clean_reply",
    "clip",
    "detect_language",
    "ends_complete",
    "has_cjk",
    "load_prompt",
    "split_pair",
]

Lang = Literal["en", "zh"]
LANGS: tuple[Lang, ...] = ("en", "zh")
PAIR_LABELS: dict[Lang, tuple[str, str]] = {"en": ("Question: ", "Answer: "), "zh": ("问题：", "回答：")}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_SECTION = re.compile(r"^\[(system|user)\.(en|zh)\]\s*$")
_FIELD = re.compile(r"\{([a-z_]+)\}")
_TERMINAL = ".!?。！？…;；"
_CLOSERS = "\"')]}”’」』）】》"
# End-of-turn / special tokens of common chat templates, and a second turn the model made up.
_ARTEFACT = re.compile(r"<\|[A-Za-z_]{2,20}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|"
                       r"\n\s*(?:user|human|用户)\s*[:：\n]", re.IGNORECASE)
_LEADING_ROLE = re.compile(r"^\s*(?:assistant|助手)\s*[:：\n]\s*", re.IGNORECASE)
_EN_LABEL = r"(?:(?:rewritten|revised|improved|new|complete|clear|final)\s+)?(?:question|answer|response|reply|q|a)"
_ZH_LABEL = r"(?:改写后的|优化后的|修改后的|新的|完整的|最终)?(?:问题|回答|答案|答复|问|答)"
_LEADING_LABEL = re.compile(rf"^\s*(?:\*\*)?(?:{_EN_LABEL}|{_ZH_LABEL})(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*",
                            re.IGNORECASE)
_Q_LABEL = re.compile(r"^\s*(?:\*\*)?(?:question|q|问题|问)(?:\*\*)?\s*[:：](?:\*\*)?",
                      re.IGNORECASE | re.MULTILINE)
_A_LABEL = re.compile(r"^\s*(?:\*\*)?(?:answer|a|回答|答案|答)(?:\*\*)?\s*[:：](?:\*\*)?",
                      re.IGNORECASE | re.MULTILINE)
_WRAPPERS = (("```", "```"), ('"', '"'), ("“", "”"), ("「", "」"), ("'", "'"))


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def detect_language(*texts: str) -> Lang:
    """``zh`` when CJK ideographs are a fair share of the text (a Chinese record may hold Latin
    abbreviations such as CT or HbA1c; one ideograph weighs about a Latin word), else ``en``."""
    joined = "".join(texts)
    cjk = len(_CJK.findall(joined))
    return "zh" if cjk and cjk * 3 >= len(_LATIN.findall(joined)) else "en"


def ends_complete(text: str) -> bool:
    """True when ``text`` ends with terminal punctuation (closing quotes and brackets looked through)."""
    stripped = text.rstrip().rstrip(_CLOSERS).rstrip()
    return bool(stripped) and stripped[-1] in _TERMINAL


def clip(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut at a space when one is near: prompt context stays bounded."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars * 0.8 else cut).rstrip() + "…"


def _cut_artefacts(text: str) -> str:
    text = _LEADING_ROLE.sub("", re.sub(r"^(?:\s*<\|[A-Za-z_]{2,20}\|>)+", "", text))
    match = _ARTEFACT.search(text)
    return (text[:match.start()] if match else text).replace("\ufffd", "").strip()


def clean_reply(text: str) -> str:
    """The reply without chat artefacts, a leading label (``Answer:``, ``回答：``) or wrapping quotes;
    "" when no letter, digit or ideograph is left."""
    text = _LEADING_LABEL.sub("", _cut_artefacts(text), count=1).strip()
    for left, right in _WRAPPERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left):-len(right)]
            if left not in inner and right not in inner:
                text = inner.strip()
    return text if any(ch.isalnum() for ch in text) else ""


def split_pair(text: str) -> tuple[str, str] | None:
    """(question, answer) from a ``Question: ... Answer: ...`` reply (English or Chinese labels); None
    when the reply does not hold both parts."""
    text = _cut_artefacts(text)
    q = _Q_LABEL.search(text)
    a = _A_LABEL.search(text, q.end() if q else 0)
    if q is None or a is None:
        return None
    nxt = _Q_LABEL.search(text, a.end())  # the model went on with a second pair: keep the first
    question = clean_reply(text[q.end():a.start()])
    answer = clean_reply(text[a.end():nxt.start() if nxt else len(text)])
    return (question, answer) if question and answer else None


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    sections: Mapping[tuple[str, str], str]

    def render(self, lang: Lang, fields: Mapping[str, str]) -> tuple[str, str]:
        """(system, user) for ``lang`` with ``{field}`` placeholders filled (values inserted verbatim)."""

        def fill(m: re.Match[str]) -> str:
            if m.group(1) not in fields:
                raise LLMError(f"prompt '{self.name}' v{self.version} needs field '{m.group(1)}'")
            return fields[m.group(1)]

        return (_FIELD.sub(fill, self.sections[("system", lang)]),
                _FIELD.sub(fill, self.sections[("user", lang)]))


@functools.cache
def load_prompt(name: str, version: str) -> PromptTemplate:
    """The prompt file ``<name>.v<version>.txt`` shipped with this package."""
    resource = files("site_agent.llm") / "prompts" / f"{name}.v{version}.txt"
    try:
        raw = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise LLMError(f"no prompt file for '{name}' version {version}") from None
    sections: dict[tuple[str, str], list[str]] = {}
    current: tuple[str, str] | None = None
    for line in raw.splitlines():
        head = _SECTION.match(line)
        if head:
            current = (head.group(1), head.group(2))
            sections[current] = []
        elif current is not None and not line.startswith("#"):
            sections[current].append(line)
    missing = [f"{role}.{lang}" for role in ("system", "user") for lang in LANGS if (role, lang) not in sections]
    if missing:
        raise LLMError(f"prompt '{name}' v{version} lacks sections {missing}")
    return PromptTemplate(name, version, {k: "\n".join(v).strip() for k, v in sections.items()})


def chat_by_language(llm: LLMBackend, template: PromptTemplate, items: Sequence[tuple[Lang, Mapping[str, str]]],
                     *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """One reply per (language, fields) item, in order; one batched chat call per language, since the
    system prompt is per language."""
    replies = [""] * len(items)
    for lang in LANGS:
        idx = [i for i, (item_lang, _) in enumerate(items) if item_lang == lang]
        if not idx:
            continue
        rendered = [template.render(lang, items[i][1]) for i in idx]
        out = llm.chat([user for _, user in rendered], system=rendered[0][0], max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed)
        if len(out) != len(idx):
            raise LLMError(f"the LLM returned {len(out)} replies for {len(idx)} prompts")
        for i, reply in zip(idx, out, strict=True):
            replies[i] = reply
    return replies


PAIR_QUESTION_CHARS, PAIR_ANSWER_CHARS = 800, 2500  # what of a row goes into a rewrite prompt, at most


def ask_about_pairs(llm: LLMBackend, template: PromptTemplate, questions: Sequence[str], answers: Sequence[str],
                    *, only_if_short: bool, short_chars: int, max_new_tokens: int,
                    seed: int = 0) -> tuple[list[int], list[str]]:
    """For the rows with both a question and an answer (and, with ``only_if_short``, an answer shorter than
    ``short_chars``), one reply each to ``template`` filled with the clipped pair: (row indices, replies)."""
    todo = [i for i in range(len(questions)) if questions[i].strip() and answers[i].strip()
            and (not only_if_short or len(answers[i].strip()) < short_chars)]
    if not todo:
        return [], []
    items = [(detect_language(questions[i], answers[i]),
              {"instruction": clip(questions[i], PAIR_QUESTION_CHARS), "answer": clip(answers[i], PAIR_ANSWER_CHARS)})
             for i in todo]
    return todo, chat_by_language(llm, template, items, max_new_tokens=max_new_tokens, seed=seed)
