"""``remove_markup``: turn HTML residue into plain text.

Tags are stripped, character references (``&amp;``, ``&#8217;``, ``&nbsp;``) unescaped, and the content
of ``<script>``/``<style>`` (and comments) dropped. Whitespace in a field that held markup is tidied the
way a browser renders it (runs collapse to one space); block-level tags become line breaks when
``keep_line_breaks`` is set. Fields without any tag or entity are returned untouched.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import cast

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["RemoveMarkup", "RemoveMarkupParams", "strip_markup"]

_MARKUP = re.compile(
    r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|<!--|<!DOCTYPE"
    r"|&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});",
    re.IGNORECASE,
)
_SKIP_CONTENT = {"script", "style", "noscript", "template"}
_BLOCK = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "table", "tbody", "td", "th", "thead", "tr", "ul",
}


class RemoveMarkupParams(OperatorParams):
    keep_line_breaks: bool = True


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_CONTENT:
            self._skip_depth += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_CONTENT:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def strip_markup(text: str, keep_line_breaks: bool = True) -> str:
    """Plain text of ``text``; returned unchanged when it holds no tag or entity."""
    if not _MARKUP.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    # str.split() also splits on the no-break space that &nbsp; unescapes to, as a browser would.
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return ("\n" if keep_line_breaks else " ").join(line for line in lines if line)


@register_operator
class RemoveMarkup(Operator):
    name = "remove_markup"
    team = Team.CLEANING
    version = "1"
    Params = RemoveMarkupParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = cast(RemoveMarkupParams, self.params)
        out = dict(batch)
        for col in ("instruction", "answer"):
            out[col] = [strip_markup(t, p.keep_line_breaks) for t in batch[col]]
        return out, [True] * len(batch["answer"])
