import random

from site_agent.data.benchmark.departments import DEPARTMENTS, assign_departments, coarse_department, subject_kind
from site_agent.data.benchmark.qa import Fact, extract_facts, generate_qa_pairs, render_fact
from site_agent.data.benchmark.templates import TEMPLATES

GRAPH = {
    "高血压": {"常见症状": ["头痛", "头晕", "心悸"], "就诊科室": ["心内科"], "常见病因": ["遗传", "高盐饮食"],
            "传染性": ["无"], "检查": ["血压测量"], "并发症": [f"并发症{i}" for i in range(12)]},
    "小儿肺炎": {"常见症状": ["发热", "咳嗽"], "就诊科室": ["儿科"], "多发群体": ["婴幼儿"], "传染性": ["有"]},
    "降压片": {"适应症": ["高血压"], "不良反应": ["尚不明确"], "用法用量": ["口服", "一次1片，一日2次。"],
            "分类": ["钙拮抗药"], "禁忌": ["孕妇禁用"]},
    "清热丸": {"功能主治": ["清热解毒"], "成份": ["金银花", "连翘"], "分类": ["中成药"]},
    "白芷": {"入药部位": ["根"], "性味": ["味辛", "性温"], "功效": ["解表散寒"]},
    "血常规": {"所属分类": ["血"], "相关疾病": ["贫血"]},
    "眼底检查": {"所属分类": ["眼科"], "相关疾病": ["青光眼"]},
}


def test_kinds_and_departments() -> None:
    assert subject_kind(GRAPH["高血压"]) == "disease" and subject_kind(GRAPH["降压片"]) == "drug"
    assert subject_kind(GRAPH["白芷"]) == "other"
    meta = assign_departments(GRAPH)
    assert meta["高血压"] == ("disease", "心血管科") and meta["小儿肺炎"] == ("disease", "儿科")
    assert meta["降压片"] == ("drug", "心血管科")  # follows the clinic of its indication
    assert meta["清热丸"] == ("drug", "中医科") and meta["白芷"] == ("other", "中医科")
    assert meta["血常规"] == ("other", "检验科") and meta["眼底检查"] == ("other", "眼科")
    assert coarse_department("精神心理科") == "精神心理科" and coarse_department("小儿外科") == "儿科"
    assert coarse_department("心血管内科") == "心血管科" and coarse_department("???") is None
    assert {d for _, d in meta.values()} <= set(DEPARTMENTS)


def test_pairs_read_naturally_and_keep_metadata() -> None:
    pairs = generate_qa_pairs(GRAPH, seed=0)
    by = {(p.subject, p.predicate): p for p in pairs}
    sym = by[("高血压", "常见症状")]
    assert "高血压" in sym.instruction and sym.instruction.endswith("？")
    assert all(s in sym.answer for s in ("头痛", "头晕", "心悸")) and sym.answer.endswith("。")
    assert (sym.department, sym.subject_kind) == ("心血管科", "disease")
    assert by[("高血压", "传染性")].answer == "高血压一般没有传染性。"
    assert by[("小儿肺炎", "传染性")].answer.startswith("小儿肺炎具有传染性")
    assert "尚不明确" in by[("降压片", "不良反应")].answer
    assert "；" in by[("降压片", "用法用量")].answer  # long items are separated like sentences
    complications = by[("高血压", "并发症")].answer
    assert sum(f"并发症{i}" in complications for i in range(12)) == 8 and "等" in complications
    assert all(p.instruction and p.answer for p in pairs)
    assert len({p.instruction for p in pairs}) == len(pairs)


def test_deterministic_for_a_seed_and_phrasing_varies() -> None:
    assert generate_qa_pairs(GRAPH, seed=3) == generate_qa_pairs(GRAPH, seed=3)
    fact = Fact("高血压", "常见症状", 0, ("头痛", "头晕"), "心血管科", "disease")
    questions = {render_fact(fact, random.Random(k)).instruction for k in range(40)}
    answers = {render_fact(fact, random.Random(k)).answer for k in range(40)}
    assert len(questions) == len(TEMPLATES[0].questions) and len(answers) == len(TEMPLATES[0].answers)


def test_one_fact_per_subject_and_predicate_group() -> None:
    graph = {"某病": {"常见症状": ["a"], "临床症状及体征": ["b"], "常见病因": ["c"], "病因": ["d"]}}
    facts = extract_facts(graph)
    assert [(f.predicate, f.objects) for f in facts] == [("常见症状", ("a",)), ("常见病因", ("c",))]
