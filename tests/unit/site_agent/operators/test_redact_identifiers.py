import random

import pytest

from site_agent.data.benchmark import LabelledRow, generate_qa_pairs, inject_noise, load_cmekg
from site_agent.data.benchmark.pii import PII_PATTERNS
from site_agent.data.toy import make_toy_dataset
from site_agent.operators import create_operator
from site_agent.operators.cleaning.redact_identifiers import RedactIdentifiersParams, id_checksum_ok, redact

# Realistic rows of a hospital QA export; the identifiers are synthetic (valid-shaped, checksummed).
ROWS = [
    ("患者张伟，住院号：20230145，男，56岁，反复胸闷3天，应做哪些检查？",
     "建议完善心电图、心肌酶谱和冠脉CTA检查。如有疑问请拨打心内科电话 0755-26543210 咨询。"),
    ("我的身份证号是440308199001011239，可以在线预约内分泌科吗？",
     "可以，请在公众号填写身份证号和手机号13812345678后选择内分泌科门诊。"),
    ("孩子发烧38.5℃要不要去医院？联系方式：+86 139-1234-5678",
     "体温38.5℃可先物理降温，若持续超过24小时请就医。也可发邮件至 zhang.wei@hospital.cn 咨询。"),
    ("病历号为MZ0098123的患者术后需要注意什么？", "术后一周内避免剧烈运动，按时换药，伤口红肿请及时复诊。"),
    ("What should patient MRN 55012345 do before the CT scan?",
     "Fast for four hours. Call (010)62345678 or see www.example-hospital.org/ct for details."),
]


def _batch() -> dict[str, list[str]]:
    return {"instruction": [q for q, _ in ROWS], "answer": [a for _, a in ROWS]}


def test_redacts_each_kind_with_its_placeholder() -> None:
    out, stats = create_operator("redact_identifiers", {}).run(_batch())
    assert stats.kept == len(ROWS) and stats.dropped == 0 and stats.changed == len(ROWS)
    q, a = out["instruction"], out["answer"]
    assert q[0] == "患者张伟，住院号：[RECORD]，男，56岁，反复胸闷3天，应做哪些检查？"
    assert a[0].endswith("请拨打心内科电话 [PHONE] 咨询。")
    assert q[1] == "我的身份证号是[ID]，可以在线预约内分泌科吗？"
    assert "手机号[PHONE]后" in a[1]
    assert q[2].endswith("联系方式：[PHONE]") and "发邮件至 [EMAIL] 咨询" in a[2]
    assert q[3] == "病历号为[RECORD]的患者术后需要注意什么？"
    assert q[4] == "What should patient MRN [RECORD] do before the CT scan?"
    # urls and names are off by default: links to guidance and free-standing names are left alone
    assert "Call [PHONE] or see www.example-hospital.org/ct" in a[4] and "张伟" in q[0]
    # medical numbers are not identifiers
    assert "38.5℃" in q[2] and "24小时" in a[2] and "56岁" in q[0]


def test_options_switch_kinds_on_and_off() -> None:
    params = {"phones": False, "landlines": False, "emails": False, "urls": True, "names": True}
    out, _ = create_operator("redact_identifiers", params).run(_batch())
    assert "13812345678" in out["answer"][1] and "0755-26543210" in out["answer"][0]
    assert "zhang.wei@hospital.cn" in out["answer"][2]
    assert "see [URL] for details" in out["answer"][4]
    off, stats = create_operator("redact_identifiers", {k: False for k in RedactIdentifiersParams.model_fields
                                                        }).run(_batch())
    assert off == _batch() and stats.changed == 0


def test_id_numbers_are_checksum_validated_by_default() -> None:
    assert id_checksum_ok("11010519491231002X") and id_checksum_ok("440308199001011239")
    assert not id_checksum_ok("440308199001011238")
    text = "订单号440308199001011238已支付，身份证11010519491231002x已核验"
    assert redact(text) == "订单号440308199001011238已支付，身份证[ID]已核验"
    loose = RedactIdentifiersParams(validate_id_checksum=False)
    assert redact(text, loose) == "订单号[ID]已支付，身份证[ID]已核验"


def test_labelled_and_titled_names() -> None:
    p = RedactIdentifiersParams(names=True)
    assert redact("姓名：李小明，性别：男", p) == "姓名：[NAME]，性别：男"
    assert redact("王女士血压偏高，张伟先生血糖正常", p) == "[NAME]女士血压偏高，[NAME]先生血糖正常"
    assert redact("Patient name: John Smith was admitted", p) == "Patient name: [NAME] was admitted"
    introduced = "我叫李娜，最近头痛。请联系主治医生张轩丽，电话"
    assert redact(introduced, p) == "我叫[NAME]，最近头痛。请联系主治医生[NAME]，电话"
    # a clinical word after an introduction is not a name
    for text in ("患者高血压，应低盐饮食", "病人高烧，", "医生建议，多喝水"):
        assert redact(text, p) == text


def test_toy_rows_have_no_identifiers_and_stay_unchanged() -> None:
    batch, _ = make_toy_dataset(300, seed=2)
    out, stats = create_operator("redact_identifiers", {"urls": True, "names": True}).run(batch)
    assert out == batch and stats.changed == 0 and stats.dropped == 0


@pytest.fixture(scope="module")
def cmekg_rows() -> list[LabelledRow]:
    graph = load_cmekg()
    pairs = generate_qa_pairs({s: graph[s] for s in sorted(graph)[:600]}, seed=0)
    pairs = random.Random(0).sample(pairs, 400)
    return inject_noise(pairs, rate=0.3, mix={"pii": 1.0}, seed=1)


@pytest.mark.slow
def test_benchmark_pii_rows_lose_every_identifier_and_clean_rows_stay(cmekg_rows: list[LabelledRow]) -> None:
    batch = {"instruction": [r.instruction for r in cmekg_rows], "answer": [r.answer for r in cmekg_rows]}
    pii = [i for i, r in enumerate(cmekg_rows) if r.label == "pii"]
    out, stats = create_operator("redact_identifiers", {"names": True}).run(batch)
    assert len(pii) > 50 and stats.changed == len(pii) and stats.dropped == 0
    for i in range(len(cmekg_rows)):
        texts = (out["instruction"][i], out["answer"][i])
        assert not any(p.search(t) for p in PII_PATTERNS.values() for t in texts)
        if i not in pii:
            assert texts == (batch["instruction"][i], batch["answer"][i])
    # the injected identifiers come with a name, except in the variant that only gives a mobile number
    for i in pii:
        text = out["instruction"][i] + out["answer"][i]
        assert "[NAME]" in text or "我的手机号是[PHONE]" in text
