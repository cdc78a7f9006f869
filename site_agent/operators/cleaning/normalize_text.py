"""``normalize_text``: repair encoding damage and normalise Unicode and whitespace.

In order, per field:

1. ``fix_mojibake``: UTF-8 text that was once decoded as cp1252/latin-1 shows up as sequences like
   ``Ã©`` (é), ``Â°`` (°) or ``â€™`` (’). Each sequence shaped like a misdecoded UTF-8 character (a
   lead byte's character then its continuation bytes' characters) is turned back into bytes and
   decoded as UTF-8; the repair is kept only when that decode is valid, so correct accented text (an
   ``é`` followed by ASCII) is never touched.
2. Unicode normalisation (``form``: NFC composes; NFKC also folds compatibility forms such as the
   no-break space and full-width letters). With ``keep_cjk_punctuation`` (default on), a field that holds
   Chinese, Japanese or Korean text keeps its punctuation and symbols as written: full-width ``，？：（）``,
   ``～`` in ranges, ``……`` and ``℃`` are the correct forms in CJK typography, and NFKC would turn every one
   into its ASCII look-alike (``?`` for ``？``), changing every clean row of a Chinese site and moving the
   training data away from the text the model will be asked about. Letters, digits and spaces are still folded.
3. Control characters are removed except newline and tab; ``\\r\\n`` and ``\\r`` become ``\\n`` first,
   and invisible zero-width characters go too.
4. ``collapse_whitespace``: runs of spaces/tabs become one space, lines are trimmed, at most one blank
   line is kept, and the field is trimmed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal, cast

from protos.views import Team
from site_agent.operators.base import CJK_CHAR, Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["NormalizeText", "NormalizeTextParams", "fix_mojibake", "normalize"]

# How each byte 0x80-0xFF looks after a wrong cp1252 or latin-1 decode (both views map back to it).
_BYTE_OF: dict[str, int] = {}
for _b in range(0x80, 0x100):
    _BYTE_OF[chr(_b)] = _b
    _BYTE_OF.setdefault(bytes([_b]).decode("cp1252", errors="ignore") or chr(_b), _b)


def _chars(lo: int, hi: int) -> str:
    return "[" + re.escape("".join(c for c, b in _BYTE_OF.items() if lo <= b <= hi)) + "]"


_CONT = _chars(0x80, 0xBF)
# One UTF-8 sequence as it looks misdecoded: a lead byte and its continuation bytes. Matching one
# sequence at a time keeps a single odd character from blocking the repair of its neighbours.
_MOJIBAKE_SEQ = re.compile(
    f"{_chars(0xC2, 0xDF)}{_CONT}|{_chars(0xE0, 0xEF)}{_CONT}{{2}}|{_chars(0xF0, 0xF4)}{_CONT}{{3}}"
)
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_H_SPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_BLANK_LINES = re.compile(r"\n{3,}")


@functools.lru_cache(maxsize=4096)
def _kept_symbol(ch: str) -> bool:
    """Punctuation or a symbol that NFKC would replace (full-width ``？``, ``℃``, ``…``)."""
    return unicodedata.category(ch)[0] in "PS" and unicodedata.normalize("NFKC", ch) != ch


def _nfkc_keeping_symbols(text: str) -> str:
    """NFKC, except for punctuation and symbols, which are only composed (NFC)."""
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if not ch.isascii() and _kept_symbol(ch):
            out += (unicodedata.normalize("NFKC", text[start:i]), ch)
            start = i + 1
    out.append(unicodedata.normalize("NFKC", text[start:]))
    return "".join(out)


class NormalizeTextParams(OperatorParams):
    form: Literal["NFC", "NFKC"] = "NFKC"
    collapse_whitespace: bool = True
    fix_mojibake: bool = True
    keep_cjk_punctuation: bool = True


def _redecode(seq: str) -> str:
    try:
        return bytes(_BYTE_OF[c] for c in seq).decode("utf-8")
    except UnicodeDecodeError:  # overlong or surrogate shapes: not mojibake after all
        return seq


def fix_mojibake(text: str) -> str:
    """Repair UTF-8-read-as-cp1252/latin-1 runs where re-decoding yields valid UTF-8."""
    if text.isascii():
        return text
    return _MOJIBAKE_SEQ.sub(lambda m: _redecode(m.group(0)), text)


def _strip_controls(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ZERO_WIDTH)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def normalize(text: str, form: Literal["NFC", "NFKC"] = "NFKC", collapse_whitespace: bool = True,
              repair_mojibake: bool = True, keep_cjk_punctuation: bool = True) -> str:
    if repair_mojibake:
        text = fix_mojibake(text)
    if form == "NFKC" and keep_cjk_punctuation and CJK_CHAR.search(text):
        text = _nfkc_keeping_symbols(unicodedata.normalize("NFC", text))
    else:
        text = unicodedata.normalize(form, text)
    text = _strip_controls(text)
    if collapse_whitespace:
        text = "\n".join(_H_SPACE.sub(" ", line).strip() for line in text.split("\n"))
        text = _BLANK_LINES.sub("\n\n", text).strip()
    return text


@register_operator
class NormalizeText(Operator):
    name = "normalize_text"
    team = Team.CLEANING
    version = "2"  # 2: CJK punctuation kept under NFKC (keep_cjk_punctuation)
    Params = NormalizeTextParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(NormalizeTextParams, self.params)
        out = dict(batch)
        for col in ("instruction", "answer"):
            out[col] = [normalize(t, p.form, p.collapse_whitespace, p.fix_mojibake, p.keep_cjk_punctuation)
                        for t in batch[col]]
        return out, [True] * len(batch["answer"])
