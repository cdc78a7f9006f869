"""One function per noise type: how a clean pair gets damaged in a scraped Chinese medical QA dump.

Each takes the question and answer and a seeded rng and returns the damaged pair. The types that need
another row (duplicates, mismatched answers) are assembled in :mod:`noise`; these are the ones that
only rewrite text. Variants are chosen by the rng so one type is not one fixed string pattern.
"""

from __future__ import annotations

import random
from difflib import SequenceMatcher

from site_agent.data.benchmark.pii import fake_email, fake_id_number, fake_mobile, fake_name, fake_record_number

__all__ = [
    "advertising_spam",
    "empty_or_one_word_answer",
    "garbled_encoding",
    "html_residue",
    "near_duplicate",
    "pii",
    "repetition_loop",
    "truncated_answer",
]

_FULL_TO_HALF = {"？": "?", "。": ".", "，": ",", "：": ":", "；": ";", "、": ","}
_ONE_WORD = ("", " ", "\n", "无", "是", "有", "同上", "不知道", "谢谢", "好的", "。", "略", "见上", "嗯", "？")
_LOOP_PHRASES = ("请及时就医", "谢谢医生", "建议去医院看看", "多喝热水", "祝早日康复", "以上仅供参考")


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(n))


NEAR_DUPLICATE_MIN_SIMILARITY = 0.88


def near_duplicate(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """A re-post of the same pair: punctuation width, stray spaces, a greeting, a typo. An edit that would
    leave it less than NEAR_DUPLICATE_MIN_SIMILARITY alike (difflib ratio) is undone: on a short pair, two
    edits can otherwise make a different-looking row rather than a re-post."""
    out_q, out_a = q, a
    for _ in range(rng.randint(1, 2)):
        before = out_q, out_a
        v = rng.randrange(5)
        if v == 0:
            out_a = "".join(_FULL_TO_HALF.get(c, c) if rng.random() < 0.7 else c for c in out_a)
        elif v == 1:
            i = rng.randrange(len(out_a) + 1)
            out_a = out_a[:i] + rng.choice((" ", "  ", "\u3000", "\n")) + out_a[i:]
        elif v == 2:
            out_q = rng.choice(("请问", "医生你好，", "你好，", "求助：")) + out_q
        elif v == 3:
            out_q = out_q.rstrip("？") + rng.choice(("??", "？？", "?", "呢？", "啊？"))
        elif len(out_a) > 4:
            i = rng.randrange(1, len(out_a) - 1)
            out_a = out_a[:i] + out_a[i + 1:] if rng.random() < 0.5 else out_a[:i] + out_a[i] + out_a[i:]
        if SequenceMatcher(None, q + a, out_q + out_a).ratio() < NEAR_DUPLICATE_MIN_SIMILARITY:
            out_q, out_a = before
    if (out_q, out_a) == (q, a):
        out_a = a + " "
    return out_q, out_a


def html_residue(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """Tags, entities and line breaks left over from a web page."""
    v = rng.randrange(5)
    if v == 0:
        a = "<p>" + a.replace("：", "：</p>\n<p>", 1) + "</p>"
    elif v == 1:
        a = a.replace("、", "&nbsp;、", 2).replace("：", "：<br>", 1) + "<br/>"
    elif v == 2:
        a = f'<div class="answer-content"><span style="color:#333333;">{a}</span></div>'
    elif v == 3:
        a = a.replace("。", "&#12290;").replace("（", "&lt;").replace("）", "&gt;") + "&nbsp;&nbsp;"
    else:
        q = f"<h3 class=\"ask-title\">{q}</h3>"
        a = f"<strong>答：</strong>{a}<br />&amp;nbsp;"
    return q, a


def pii(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """A patient's or doctor's identifiers pasted into the question or the answer."""
    v = rng.randrange(5)
    if v == 0:
        return f"我叫{fake_name(rng)}，身份证号{fake_id_number(rng)}，{q}", a
    if v == 1:
        return f"{q}我的手机号是{fake_mobile(rng)}，麻烦医生回电。", a
    if v == 2:
        return q, f"{a}如需复诊请联系主治医生{fake_name(rng)}，电话{fake_mobile(rng)}。"
    if v == 3:
        return f"患者{fake_name(rng)}（{fake_record_number(rng)}）咨询：{q}", a
    return q, f"{a}检查报告已发送至{fake_email(rng)}，联系人{fake_name(rng)}。"


def truncated_answer(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """The answer cut off mid-sentence (a page limit, a broken export)."""
    cut = max(1, int(len(a) * rng.uniform(0.25, 0.6)))
    out = a[:cut]
    while len(out) > 1 and out[-1] in "。！？":
        out = out[:-1]
    return q, out


def empty_or_one_word_answer(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    return q, rng.choice(_ONE_WORD)


def advertising_spam(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """Clinic and pharmacy ads: WeChat ids, links, hotlines, 'cure guaranteed' claims."""
    host = _letters(rng, rng.randint(4, 8))
    url = f"http://{rng.choice(('www.', 'm.', ''))}{host}.{rng.choice(('com', 'cn', 'net'))}"
    ads = (
        f"加微信{_letters(rng, 2)}{rng.randint(100000, 9999999)}免费咨询专家。",
        f"点击链接 {url}/{_letters(rng, 5)} 领取优惠券！",
        f"名医在线一对一解答，根治不复发，咨询热线400-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}。",
        f"【广告】扫码关注公众号“{_letters(rng, 3)}健康”，限时特价！",
        f"详情请访问 {url} 或加QQ群{rng.randint(100000, 9999999)}。",
    )
    ad = rng.choice(ads)
    v = rng.randrange(4)
    if v == 0:
        return q, a + ad
    if v == 1:
        return q, ad + a
    if v == 2:
        return q, ad + rng.choice(ads)  # nothing but advertising
    return q + ad, a


def repetition_loop(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """A degenerate answer that runs into a loop of one phrase."""
    if rng.random() < 0.5 and len(a) > 8:
        start = rng.randrange(len(a) - 6)
        phrase = a[start:start + rng.randint(4, 8)]
    else:
        phrase = rng.choice(_LOOP_PHRASES) + rng.choice(("，", "。", ""))
    keep = a[:max(1, int(len(a) * rng.uniform(0.3, 1.0)))]
    return q, keep + phrase * rng.randint(15, 40)


def garbled_encoding(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    """Mojibake: UTF-8 read as latin-1 or GBK, GBK read as UTF-8, replacement characters."""
    cut = rng.randrange(len(a) // 2 + 1)
    head, tail = a[:cut], a[cut:]  # often only part of the text went through the wrong codec
    v = rng.randrange(5)
    if v == 0:
        tail = tail.encode("utf-8").decode("latin-1")
    elif v == 1:
        tail = tail.encode("utf-8").decode("gbk", errors="replace")
    elif v == 2:
        tail = tail.encode("gbk", errors="replace").decode("utf-8", errors="replace")
    elif v == 3:
        tail = "锟斤拷" * rng.randint(1, 4) + tail[len(tail) // 2:]
    else:
        tail = "".join("\ufffd" if rng.random() < 0.4 else c for c in tail)
    if head + tail == a:  # an all-ASCII tail survives some codecs unchanged
        tail = tail + "\ufffd\ufffd"
    return q, head + tail
