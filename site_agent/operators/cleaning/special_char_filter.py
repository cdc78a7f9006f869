"""``special_char_filter``: drop rows dominated by unusual characters; optionally strip invisible ones.

A character is *ordinary* when it is printable ASCII, whitespace, or a letter, mark, digit, punctuation
mark, math or currency sign in any script (so Chinese text, full-width punctuation, accents, ``±`` and
``≥`` are all ordinary), or one of a few symbols that medical text uses (°, ℃, µ, ...). Everything else
is *special*: emoji and pictographs, box drawing, modifier symbols, control and format characters,
private-use code points, unassigned ones, the U+FFFD replacement character.

With ``count_mojibake``, two kinds of codec damage whose characters look ordinary count as special too:
the characters that a mojibake repair (UTF-8 read as cp1252/latin-1, see ``normalize_text.fix_mojibake``)
would remove — a Chinese field read that way becomes mostly Latin-1 *letters* (``ä¸­æ–‡``) — and the
classic marker runs 锟斤拷 (replacement characters that went through GBK) and 烫烫烫/屯屯屯
(uninitialised buffers printed as GBK).

With ``count_rare_han``, Han characters outside GB 2312 (the 6,763 characters of everyday simplified
Chinese) count as special: UTF-8 read as GBK turns a Chinese text into rare characters (``鍘熷洜涓``).
It is off by default because traditional Chinese is outside GB 2312 too: only a simplified-Chinese site
should turn it on.

A row is dropped when, in its instruction or its answer, special characters make up more than
``max_ratio`` of the non-whitespace characters. Kept rows have control (except tab and line breaks),
format, private-use, surrogate and unassigned characters removed when ``strip_invisible`` is set.
"""

from __future__ import annotations

import re
import unicodedata
from typing import cast

from pydantic import Field

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.cleaning.normalize_text import fix_mojibake
from site_agent.operators.registry import register_operator

__all__ = ["SpecialCharFilter", "SpecialCharFilterParams", "special_ratio", "strip_invisible"]

_ORDINARY_CATEGORIES = frozenset({"L", "M", "N", "P"})
_ORDINARY_SUBCATEGORIES = frozenset({"Sm", "Sc", "Zs"})
_ORDINARY_SYMBOLS = frozenset("°℃℉µ№‰©®™•·")
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})
_KEEP_CONTROLS = frozenset("\t\n\r")
_MARKERS = re.compile("(?:锟斤拷)+|烫{3,}|屯{3,}")  # two in a row is ordinary Chinese (烫烫的)
_ASCII_SPACE = frozenset(" \t\n\r\x0b\x0c")


def _space(ch: str) -> bool:
    # str.isspace() also accepts the separator controls U+001C-U+001F, which are damage, not layout.
    return ch in _ASCII_SPACE or (ch.isspace() and unicodedata.category(ch)[0] == "Z")


def _special(ch: str) -> bool:
    if " " <= ch <= "~" or _space(ch) or ch in _ORDINARY_SYMBOLS:
        return False
    cat = unicodedata.category(ch)
    return cat[0] not in _ORDINARY_CATEGORIES and cat not in _ORDINARY_SUBCATEGORIES


def _rare_han(ch: str) -> bool:
    if not "\u4e00" <= ch <= "\u9fff":
        return False
    try:
        ch.encode("gb2312")
    except UnicodeEncodeError:
        return True
    return False


def special_ratio(text: str, count_mojibake: bool = True, count_rare_han: bool = False) -> float:
    """Share of special characters among the non-whitespace characters of ``text`` (0 when none)."""
    visible = sum(1 for ch in text if not _space(ch))
    if visible == 0 or (text.isascii() and text.isprintable()):
        return 0.0
    special = sum(1 for ch in text if _special(ch) or (count_rare_han and _rare_han(ch)))
    if count_mojibake:
        special += len(text) - len(fix_mojibake(text))
        special += sum(len(m.group(0)) for m in _MARKERS.finditer(text))
    return min(1.0, special / visible)


def strip_invisible(text: str) -> str:
    """``text`` without control (but tab/CR/LF), format, private-use, surrogate or unassigned characters."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch for ch in text if ch in _KEEP_CONTROLS or unicodedata.category(ch) not in _INVISIBLE)


class SpecialCharFilterParams(OperatorParams):
    max_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    strip_invisible: bool = True
    count_mojibake: bool = True
    count_rare_han: bool = False


@register_operator
class SpecialCharFilter(Operator):
    name = "special_char_filter"
    team = Team.CLEANING
    version = "1"
    Params = SpecialCharFilterParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(SpecialCharFilterParams, self.params)
        keep = [
            max(special_ratio(t, p.count_mojibake, p.count_rare_han) for t in (q, a)) <= p.max_ratio
            for q, a in zip(batch["instruction"], batch["answer"], strict=True)
        ]
        if not p.strip_invisible:
            return batch, keep
        out = dict(batch)
        for col in ("instruction", "answer"):
            out[col] = [strip_invisible(t) for t in batch[col]]
        return out, keep
