"""Subject kind (disease / drug / other) and a coarse hospital department for every graph subject.

The graph names about 200 raw clinic names (``就诊科室``: 心内科, 心血管内科, 心外科 ...). Sites differ by
department mix, so the raw names are folded into about twenty coarse departments by keyword. A drug has
no clinic of its own: it takes the department most of its indications (``适应症``) are seen in, which is
how a hospital's pharmacy questions follow its clinics; failing that, a coarse class from ``分类``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

__all__ = [
    "DEPARTMENTS",
    "assign_departments",
    "coarse_department",
    "subject_kind",
]

# First match wins, so the narrower keywords come first (精神心理科 before 心; 儿 before 外科).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("儿科", ("儿", "新生")),
    ("妇产科", ("妇", "产", "乳腺", "生殖")),
    ("肿瘤科", ("肿瘤", "癌")),
    ("眼科", ("眼",)),
    ("耳鼻喉科", ("耳", "鼻", "喉", "咽")),
    ("口腔科", ("口腔", "牙", "颌")),
    ("皮肤科", ("皮肤", "性病", "烧伤", "整形")),
    ("精神心理科", ("精神", "心理")),
    ("骨科", ("骨", "脊柱", "关节", "运动医学", "康复")),
    ("心血管科", ("心", "血管")),
    ("神经科", ("神经", "脑")),
    ("呼吸科", ("呼吸", "胸", "肺")),
    ("消化科", ("消化", "肝", "胆", "胃", "肠", "肛")),
    ("肾脏泌尿科", ("肾", "泌尿", "男科")),
    ("内分泌科", ("内分泌", "代谢", "营养")),
    ("感染科", ("感染", "传染", "微生物")),
    ("风湿免疫科", ("风湿", "免疫", "变态反应", "过敏")),
    ("血液科", ("血液",)),
    ("中医科", ("中医",)),
    ("急诊科", ("急诊", "重症", "危重")),
    ("外科", ("外科",)),
    ("内科", ("内科",)),
)
# Department-like names a subject can get without a clinic of its own.
_TCM, _PHARMACY, _LAB, _OTHER = "中医科", "药剂科", "检验科", "其他"
DEPARTMENTS: tuple[str, ...] = tuple(dict.fromkeys([d for d, _ in _RULES] + [_PHARMACY, _LAB, _OTHER]))

_DISEASE_KEYS = frozenset({"常见症状", "就诊科室", "常见病因", "并发症", "多发群体", "常见发病部位", "治疗",
                           "临床症状及体征", "传染性", "ICD10", "病因"})
_DRUG_KEYS = frozenset({"成份", "适应症", "不良反应", "OTC类型", "药品类型", "药品监管分级", "功能主治", "规格",
                        "通用名", "用法用量", "禁忌"})
_HERB_KEYS = frozenset({"入药部位", "性味", "功效", "主治", "功用"})
_TCM_CLASSES = ("中成药", "中药", "益气", "清热", "活血", "补", "祛", "解表", "安神", "理气")


def coarse_department(raw: str) -> str | None:
    """The coarse department a raw clinic name folds into, or None when no keyword matches."""
    for department, keywords in _RULES:
        if any(k in raw for k in keywords):
            return department
    return None


def subject_kind(props: Mapping[str, list[str]]) -> str:
    """``disease`` when the subject has clinical predicates, ``drug`` for medicines, else ``other``."""
    keys = props.keys()
    if _DISEASE_KEYS & keys:
        return "disease"
    if _DRUG_KEYS & keys:
        return "drug"
    return "other"


def _clinic(props: Mapping[str, list[str]]) -> str | None:
    for raw in props.get("就诊科室", ()):
        if (department := coarse_department(raw)) is not None:
            return department
    return None


def _drug_department(props: Mapping[str, list[str]], disease_department: Mapping[str, str]) -> str:
    votes = Counter(disease_department[x] for x in props.get("适应症", ()) if x in disease_department)
    if votes:
        # Ties go to the department name that sorts first, so the result never depends on dict order.
        return min(votes, key=lambda d: (-votes[d], d))
    classes = props.get("分类", ())
    if any(k in c for c in classes for k in _TCM_CLASSES) or "功能主治" in props:
        return _TCM
    return _PHARMACY


def _other_department(props: Mapping[str, list[str]]) -> str:
    for raw in props.get("所属分类", ()):
        if (department := coarse_department(raw)) is not None:
            return department
    if "所属分类" in props or "相关疾病" in props:
        return _LAB  # examinations and laboratory tests
    if _HERB_KEYS & props.keys():
        return _TCM  # medicinal herbs and classical formulas
    return _OTHER


def assign_departments(graph: Mapping[str, Mapping[str, list[str]]]) -> dict[str, tuple[str, str]]:
    """``{subject: (subject_kind, department)}`` for every subject of the graph."""
    kinds = {s: subject_kind(p) for s, p in graph.items()}
    disease_department: dict[str, str] = {}
    for s, props in graph.items():
        if kinds[s] == "disease" and (clinic := _clinic(props)) is not None:
            disease_department[s] = clinic
    out: dict[str, tuple[str, str]] = {}
    for s, props in graph.items():
        kind = kinds[s]
        if kind == "disease":
            department = disease_department.get(s, _OTHER)
        elif kind == "drug":
            department = _drug_department(props, disease_department)
        else:
            department = _other_department(props)
        out[s] = (kind, department)
    return out
