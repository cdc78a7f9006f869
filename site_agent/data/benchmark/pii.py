"""Synthetic, seeded personal identifiers of the kinds that leak into scraped Chinese medical QA.

Everything here is made up from a seeded rng: names from common surnames and given-name characters,
mobile numbers ``1[3-9]`` + 9 digits, 18-digit resident ID numbers with a valid GB 11643 check digit
(so a checksum-aware detector is exercised), e-mail addresses and hospital record numbers. The regular
expressions in :data:`PII_PATTERNS` find them again (tests use them to prove evaluation sets are clean).
"""

from __future__ import annotations

import random
import re

__all__ = [
    "PII_PATTERNS",
    "fake_email",
    "fake_id_number",
    "fake_mobile",
    "fake_name",
    "fake_record_number",
    "id_check_digit",
]

_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚"
             "卢姜崔钟谭陆汪范金石廖贾夏韦方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴莫孔汤")
_GIVEN = ("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂英华玉萍红娥玲芬燕彬鹏辉建国志明海波宁欣怡子涵浩然梓"
          "轩雨婷嘉欣思远")
_PINYIN = ("wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma", "zhu",
           "hu", "guo", "lin", "he", "gao", "luo", "xiaoming", "fang", "jing", "lei", "yan", "hui", "ting")
_MAIL_DOMAINS = ("qq.com", "163.com", "126.com", "sina.com", "gmail.com", "hotmail.com", "foxmail.com")
# Real-looking administrative division codes (Beijing, Shanghai, Guangzhou, Chengdu, Hangzhou, Wuhan ...).
_AREAS = ("110101", "110105", "310104", "310115", "440106", "440305", "510107", "330106", "420102", "320102",
          "370202", "500103", "610113", "210102", "430104", "350203")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "mobile": re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"),
    "id_number": re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)"),
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "record_number": re.compile(r"(?:住院号|病历号|门诊号|病案号)[:：]?\s*[A-Z]{0,2}\d{6,12}"),
}


def fake_name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))


def fake_mobile(rng: random.Random) -> str:
    return "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))


def id_check_digit(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character of the first 17 digits of an ID number."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def fake_id_number(rng: random.Random) -> str:
    birth = f"{rng.randint(1935, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = rng.choice(_AREAS) + birth + f"{rng.randint(0, 999):03d}"
    return first17 + id_check_digit(first17)


def fake_email(rng: random.Random) -> str:
    handle = rng.choice(_PINYIN) + rng.choice(("", ".", "_")) + rng.choice(_PINYIN) + str(rng.randint(1, 9999))
    return f"{handle}@{rng.choice(_MAIL_DOMAINS)}"


def fake_record_number(rng: random.Random) -> str:
    kind = rng.choice(("住院号", "病历号", "门诊号", "病案号"))
    prefix = rng.choice(("", "ZY", "MZ", "BA"))
    return f"{kind}：{prefix}{rng.randint(10 ** 7, 10 ** 9 - 1)}"
