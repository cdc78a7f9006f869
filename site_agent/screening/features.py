"""Features of the screening classifier: a sentence embedding plus a few hand-crafted signals.

The embedding (of ``instruction + "\\n" + answer``, the same text DPS embeds, so one cached matrix
serves both) carries topic and style; the signals below carry what an embedding smooths away. Counts
are ``log1p``-scaled. All are language-agnostic or cover both English and Chinese.

- ``markup``        HTML/XML tags and character entities (``<p>``, ``&nbsp;``, ``&#12290;``)
- ``mojibake``      UTF-8 read as latin-1/cp1252 (``Ã©``, ``å¸¸``, ``â€``), U+FFFD, ``锟斤拷``
- ``control``       control characters other than newline and tab
- ``whitespace``    doubled spaces, tabs, no-break/ideographic/zero-width spaces, 3+ line breaks, untrimmed
                    ends, and any whitespace between two CJK characters (a re-post that broke a word)
- ``rare_chars``    share of the row's characters seen at most twice in the whole batch (GBK/UTF-8 mix-ups
                    produce characters that appear nowhere else)
- ``repetition``    share of repeated character 4-grams in the answer (loops; works without word breaks)
- ``answer_len``, ``instruction_len``  characters, stripped
- ``unterminated``  1 when the answer does not end with sentence-final punctuation (cut-off answers)
- ``digit_runs``    runs of 6+ digits, dashes/spaces allowed inside (phones, ID and record numbers, hotlines)
- ``email``         e-mail addresses
- ``contact_spam``  URLs and contact/advert phrases (WeChat, QQ, hotline, coupon, "click", ...)
- ``forum_tell``    a greeting opening the question, doubled question marks, or a question ending in a
                    chatty particle (呢？, 啊？): re-posted forum threads
- ``doubled_char``  the same CJK character twice in a row (a typo of a re-typed copy; rare in clean text)
- ``halfwidth``     ASCII punctuation next to a CJK character (a re-typed copy of a Chinese text)
- ``qa_overlap``    share of the question's character bigrams that occur in the answer (mismatched answer)
- ``qa_common``     longest run of characters shared by question and answer (normalised; an answer
                    about the asked subject repeats its name)
- ``qa_cosine``     cosine between the instruction's and the answer's embeddings (mismatched answer)
- ``dup_exact``     the pair (case and whitespace ignored) already occurred earlier in the batch
- ``dup_near``      an earlier row is an edited copy: after dropping whitespace, punctuation, width,
                    greetings and chatty particles, one field is equal and the other nearly so (difflib
                    ratio >= 0.85), and the pair is not an exact duplicate

Batch-context features (``rare_chars``, ``dup_*``) assume the classifier is applied to the whole
dataset, as it was trained; a copy is flagged, its first occurrence is not.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

import numpy as np

from site_agent.embeddings.cache import text_for_embedding
from site_agent.operators.base import Batch, batch_size

if TYPE_CHECKING:
    from site_agent.embeddings.base import Embedder
    from site_agent.embeddings.cache import EmbeddingCache

__all__ = ["HANDCRAFTED", "embed_rows", "handcrafted_features", "screening_features"]

HANDCRAFTED = ("markup", "mojibake", "control", "whitespace", "rare_chars", "repetition", "answer_len",
               "instruction_len", "unterminated", "digit_runs", "email", "contact_spam", "forum_tell",
               "doubled_char", "halfwidth", "qa_overlap", "qa_common", "qa_cosine", "dup_exact", "dup_near")

_CJK = "\u3400-\u9fff\uf900-\ufaff"
_MARKUP = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>|<!--"
                     r"|&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_MOJIBAKE = re.compile(r"[\u00c2-\u00f4][\u0080-\u00bf]|â€|\ufffd|锟斤拷")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(rf"[ \t]{{2,}}|[\t\r\u00a0\u3000\u200b\u200c\u200d\u2060\ufeff]|\n{{3,}}|^\s|\s$"
                         rf"|(?<=[{_CJK}])\s+(?=[{_CJK}])")
_DIGIT_RUN = re.compile(r"\d(?:[\s-]?\d){5,}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_SPAM = re.compile(r"https?://|www\.|\.(?:com|cn|net)\b|微信|加[vV]|[qQ][qQ]|热线|公众号|扫码|广告|优惠|特价|"
                   r"免费咨询|根治|wechat|whatsapp|telegram|click here|coupon|discount|buy now|call now",
                   re.IGNORECASE)
_FORUM = re.compile(r"^\s*(?:请问|医生你好|医生您好|你好|您好|求助|(?:hello|hi|dear doctor)\b)|[?？]\s*[?？]"
                    r"|[呢啊][?？]\s*$", re.IGNORECASE)
_DOUBLED = re.compile(rf"([{_CJK}])\1")
_HALFWIDTH = re.compile(rf"(?<=[{_CJK}])[,.?:;!]|[,.?:;!](?=[{_CJK}])")
_FINAL = tuple(".!?。！？…)）\"”’'】]>")
_GREETING = re.compile(r"^(?:请问|医生你好|医生您好|你好|您好|求助)|[呢啊](?=\W*$)")
_WORDCHAR = re.compile(rf"[0-9A-Za-z{_CJK}]")
_NEAR_PEERS = 8


def _log_count(pattern: re.Pattern[str], text: str) -> float:
    return math.log1p(sum(1 for _ in pattern.finditer(text)))


def _repetition(answer: str) -> float:
    text = " ".join(answer.split())
    grams = [text[i:i + 4] for i in range(len(text) - 3)]
    return 1.0 - len(set(grams)) / len(grams) if len(grams) >= 8 else 0.0


def _bigrams(text: str) -> set[str]:
    chars = "".join(_WORDCHAR.findall(text.casefold()))
    return {chars[i:i + 2] for i in range(len(chars) - 1)}


def _common_run(a: str, b: str) -> int:
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match().size


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch)[0] in "PS"))


def _near_duplicates(batch: Batch, exact: list[tuple[str, str]]) -> np.ndarray:
    """True for rows that are an edited copy of an earlier row.

    Candidates share a normalised instruction or answer (a hash lookup, no all-pairs comparison); only
    then is the other field compared with difflib, at most ``_NEAR_PEERS`` earlier rows per key.
    """
    n = len(exact)
    later = np.zeros(n, dtype=bool)
    nq = [_norm(_GREETING.sub("", q.strip())) for q in batch["instruction"]]
    na = [_norm(a) for a in batch["answer"]]
    by_q: dict[str, list[int]] = {}
    by_a: dict[str, list[int]] = {}
    for i in range(n):
        peers = [(j, na[i], na[j]) for j in by_q.get(nq[i], [])[-_NEAR_PEERS:]]
        peers += [(j, nq[i], nq[j]) for j in by_a.get(na[i], [])[-_NEAR_PEERS:]]
        for j, mine, theirs in peers:
            if exact[i] != exact[j] and (mine == theirs or SequenceMatcher(None, mine, theirs).ratio() >= 0.85):
                later[i] = True
                break
        if len(nq[i]) >= 4:  # too short a key (an empty answer) would make everything a candidate
            by_q.setdefault(nq[i], []).append(i)
        if len(na[i]) >= 4:
            by_a.setdefault(na[i], []).append(i)
    return later


def handcrafted_features(batch: Batch, qa_cosine: np.ndarray) -> np.ndarray:
    """(n, len(HANDCRAFTED)) float64, columns in HANDCRAFTED order."""
    n = batch_size(batch)
    char_counts = Counter("".join(batch["instruction"]) + "".join(batch["answer"]))
    exact = [(" ".join(q.casefold().split()), " ".join(a.casefold().split()))
             for q, a in zip(batch["instruction"], batch["answer"], strict=True)]
    nq = [_norm(q) for q in batch["instruction"]]
    na = [_norm(a) for a in batch["answer"]]
    near_later = _near_duplicates(batch, exact)
    seen: set[tuple[str, str]] = set()
    out = np.zeros((n, len(HANDCRAFTED)), dtype=np.float64)
    for i, (q, a) in enumerate(zip(batch["instruction"], batch["answer"], strict=True)):
        both = q + "\n" + a
        chars = [ch for ch in both if not ch.isspace()]
        bq = _bigrams(q)
        out[i] = (
            _log_count(_MARKUP, both),
            _log_count(_MOJIBAKE, both),
            _log_count(_CONTROL, both),
            _log_count(_WHITESPACE, q) + _log_count(_WHITESPACE, a),
            sum(1 for ch in chars if char_counts[ch] <= 2) / len(chars) if chars else 0.0,
            _repetition(a),
            math.log1p(len(a.strip())),
            math.log1p(len(q.strip())),
            0.0 if a.strip().endswith(_FINAL) else 1.0,
            _log_count(_DIGIT_RUN, both),
            _log_count(_EMAIL, both),
            _log_count(_SPAM, both),
            _log_count(_FORUM, q),
            _log_count(_DOUBLED, both),
            _log_count(_HALFWIDTH, both),
            len(bq & _bigrams(a)) / len(bq) if bq else 1.0,
            math.log1p(_common_run(nq[i], na[i])),
            float(qa_cosine[i]),
            float(exact[i] in seen),
            float(near_later[i]),
        )
        seen.add(exact[i])
    return out


def embed_rows(batch: Batch, embedder: Embedder, cache: EmbeddingCache | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """The row embeddings (instruction + answer) and the instruction-answer cosine of each row."""
    texts = (text_for_embedding(batch), list(batch["instruction"]), list(batch["answer"]))
    if cache is not None:
        rows, q, a = (cache.get_or_compute(embedder, t) for t in texts)
    else:
        rows, q, a = (np.asarray(embedder.encode(t), dtype=np.float32) for t in texts)
    return rows, np.einsum("ij,ij->i", q, a).astype(np.float64)


def screening_features(batch: Batch, embedder: Embedder, cache: EmbeddingCache | None = None) -> np.ndarray:
    """(n, embedder.dim + len(HANDCRAFTED)) float64: the row embedding, then the hand-crafted signals."""
    rows, cosine = embed_rows(batch, embedder, cache)
    return np.hstack([rows.astype(np.float64), handcrafted_features(batch, cosine)])
