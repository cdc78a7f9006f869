"""``redact_identifiers``: replace personal identifiers with typed placeholders, keep every row.

Hospital QA exports carry phone numbers, resident ID numbers, e-mail addresses and record numbers in
free text; a model fine-tuned on them can repeat them. Each enabled kind is replaced by a placeholder
that keeps the sentence readable and says what was there:

- ``record_numbers`` -> ``[RECORD]``: the number after a record label (住院号, 病历号, 门诊号, 病案号,
  就诊号, 就诊卡号, 登记号, MRN, "medical record number", ...); the label stays, the number goes.
- ``id_numbers`` -> ``[ID]``: 18-character mainland resident ID numbers (region, a plausible birth
  date, sequence, check character); with ``validate_id_checksum`` only those whose ISO 7064 check
  character is right, so an arbitrary 18-digit number (an order number, a lab code) is left alone.
- ``emails`` -> ``[EMAIL]``; ``urls`` -> ``[URL]`` (off by default: links to guidelines are not personal).
- ``phones`` -> ``[PHONE]``: mainland mobile numbers (1[3-9] + 9 digits, optionally +86 and separators);
  ``landlines`` -> ``[PHONE]``: area code with a separator or brackets, then 7-8 digits.
- ``names`` -> ``[NAME]`` (off by default, a heuristic): only names that are marked as such — after a
  姓名/患者姓名/"Name:" label; a common surname followed by 先生/女士/小姐; or a common surname and one
  or two characters right after an introduction (我叫, 联系人, 主治医生, 患者, ...) and before a
  punctuation mark, unless they end like a clinical word (患者高血压，). Free-standing names are not guessed.

Kinds run in that order so that a longer identifier (a record or ID number) is never half-eaten by a
shorter pattern; digits are delimited by look-arounds rather than ``\\b``, which does not separate
Chinese characters from digits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

from protos.views import Team
from site_agent.operators.base import Batch, Operator, OperatorParams
from site_agent.operators.registry import register_operator

__all__ = ["RedactIdentifiers", "RedactIdentifiersParams", "id_checksum_ok", "redact"]

_RECORD = re.compile(
    r"(?P<label>(?:住院|病历|门诊|病案|就诊卡?|登记|档案|检查|医保卡?)(?:号码?|编号)"
    r"|(?:MRN|medical\s+record\s+(?:number|no\.?)|hospital\s+(?:number|no\.?)|patient\s+ID)"
    r")(?P<sep>\s*(?:是|为|[:：#])?\s*)(?P<value>[A-Za-z]{0,3}\d[\dA-Za-z-]{3,})",
    re.IGNORECASE,
)
_ID = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
    r"(?![0-9A-Za-z])"
)
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_URL = re.compile(r"(?:https?://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'*+,;=%]+", re.IGNORECASE)
_MOBILE = re.compile(r"(?<![\d+])(?:(?:\+|00)?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)")
_LANDLINE = re.compile(r"(?<!\d)(?:[(（]0\d{2,3}[)）]\s?|0\d{2,3}-)[2-9]\d{6,7}(?:-\d{1,5})?(?!\d)")
_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
             "程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺"
             "顾毛郝龚邵万钱严覃武戴莫孔向汤")
_NAME_LABELLED = re.compile(
    r"(?P<label>(?:患者|病人|家属|联系人)?姓名\s*[:：]\s*|(?i:(?:patient\s+)?name)\s*:\s*)"
    r"(?P<value>[\u4e00-\u9fff·]{2,4}|[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2})"
)
_NAME_TITLED = re.compile(f"[{_SURNAMES}][\u4e00-\u9fff]{{0,2}}?(?=先生|女士|小姐)")
# Characters that end a clinical word rather than a given name ("患者高血压" is not a person).
_NOT_GIVEN = "病症炎痛血压药疗医院科检查治者人的了是在有和与或等及后前中时性型期状肿瘤癌毒菌素烧热咳吐泻晕痒胀"
_NAME_INTRODUCED = re.compile(
    r"(?P<label>我叫|我是|本人|联系人|家属|主治医[生师]|医[生师]|大夫|患者|病人)"
    rf"(?P<value>[{_SURNAMES}][^\W\d_{_NOT_GIVEN}A-Za-z]{{1,2}})(?=[，。,.；;：:（(、\s]|$)"
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_checksum_ok(number: str) -> bool:
    """True when an 18-character resident ID number has the right check character (GB 11643)."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


class RedactIdentifiersParams(OperatorParams):
    phones: bool = True
    landlines: bool = True
    id_numbers: bool = True
    validate_id_checksum: bool = True
    emails: bool = True
    record_numbers: bool = True
    urls: bool = False
    names: bool = False


def _steps(p: RedactIdentifiersParams) -> list[Callable[[str], str]]:
    def sub(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str]) -> Callable[[str], str]:
        return lambda text: pattern.sub(repl, text)

    def id_repl(m: re.Match[str]) -> str:
        return "[ID]" if not p.validate_id_checksum or id_checksum_ok(m.group(0)) else m.group(0)

    steps: list[Callable[[str], str]] = []
    if p.record_numbers:
        steps.append(sub(_RECORD, lambda m: m.group("label") + m.group("sep") + "[RECORD]"))
    if p.id_numbers:
        steps.append(sub(_ID, id_repl))
    if p.emails:
        steps.append(sub(_EMAIL, "[EMAIL]"))
    if p.urls:
        steps.append(sub(_URL, "[URL]"))
    if p.phones:
        steps.append(sub(_MOBILE, "[PHONE]"))
    if p.landlines:
        steps.append(sub(_LANDLINE, "[PHONE]"))
    if p.names:
        steps.append(sub(_NAME_LABELLED, lambda m: m.group("label") + "[NAME]"))
        steps.append(sub(_NAME_TITLED, "[NAME]"))
        steps.append(sub(_NAME_INTRODUCED, lambda m: m.group("label") + "[NAME]"))
    return steps


def redact(text: str, params: RedactIdentifiersParams | None = None) -> str:
    """``text`` with the identifiers that ``params`` enables replaced by their placeholders."""
    for step in _steps(params or RedactIdentifiersParams()):
        text = step(text)
    return text


@register_operator
class RedactIdentifiers(Operator):
    name = "redact_identifiers"
    team = Team.CLEANING
    version = "1"
    Params = RedactIdentifiersParams

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        steps = _steps(cast(RedactIdentifiersParams, self.params))
        out = dict(batch)
        for col in ("instruction", "answer"):
            texts = batch[col]
            for step in steps:
                texts = [step(t) for t in texts]
            out[col] = texts
        return out, [True] * len(batch["answer"])
