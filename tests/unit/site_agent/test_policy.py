from pathlib import Path

import pytest

from protos.errors import ConfigError
from protos.views import EvalSettings, EvaluatorKind, Metric, OperatorCall, Strategy, Task, TaskStatus
from site_agent.errors import PolicyError
from site_agent.policy import Bound, Policy, apply_policy_defaults, check_task, load_policy, published_catalog

ALL_FOUR = ["remove_markup", "normalize_text", "length_filter", "exact_dedup"]
EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "examples" / "policy.yaml"


def _task(*calls: OperatorCall, **settings: object) -> Task:
    return Task(task_id="t-1", search_id="s-1", strategy=Strategy(calls=calls),
                settings=EvalSettings(**settings))  # type: ignore[arg-type]


def _statuses(task: Task, policy: Policy) -> list[TaskStatus]:
    return [p.status for p in check_task(task, policy)]


POLICY = Policy(allowed_operators=["remove_markup", "normalize_text", "length_filter"],
                allowed_evaluators=[EvaluatorKind.QUALITY_PROXY], max_strategy_length=3,
                max_train_steps=100, min_sample_rate_permille=50)


def test_the_example_policy_loads_and_publishes_all_four() -> None:
    policy = load_policy(EXAMPLE)
    assert sorted(s.name for s in published_catalog(policy)) == sorted(ALL_FOUR)


def test_a_valid_task_passes() -> None:
    task = _task(OperatorCall.of("remove_markup"), OperatorCall.of("length_filter", min_answer_chars=20))
    assert check_task(task, POLICY) == []


def test_each_kind_of_rejection_has_its_status() -> None:
    ok = OperatorCall.of("remove_markup")
    cases = [
        (_task(OperatorCall.of("no_such_op")), TaskStatus.REJECTED_UNKNOWN_OPERATOR),
        (_task(OperatorCall.of("exact_dedup")), TaskStatus.REJECTED_OPERATOR_NOT_ALLOWED),
        (_task(OperatorCall.of("length_filter", min_answer_chars=10_001)), TaskStatus.REJECTED_BAD_PARAMETER),
        (_task(OperatorCall.of("length_filter", min_answer_chars=True)), TaskStatus.REJECTED_BAD_PARAMETER),
        (_task(OperatorCall.of("length_filter", min_chars=3)), TaskStatus.REJECTED_UNEXPECTED_FIELD),
        (_task(ok, ok, ok, ok), TaskStatus.REJECTED_SETTINGS),
        (_task(ok, evaluator=EvaluatorKind.LORA, metric=Metric.NEG_TOKEN_LOSS), TaskStatus.REJECTED_SETTINGS),
        (_task(ok, metric=Metric.NEG_TOKEN_LOSS), TaskStatus.REJECTED_SETTINGS),
        (_task(ok, train_steps=101), TaskStatus.REJECTED_SETTINGS),
        (_task(ok, sample_rate_permille=49), TaskStatus.REJECTED_SETTINGS),
    ]
    for task, status in cases:
        assert _statuses(task, POLICY) == [status], task


def test_not_allowed_comes_first_and_problems_never_raise() -> None:
    task = _task(OperatorCall.of("exact_dedup", key="row"), OperatorCall.of("nope"), train_steps=1000)
    statuses = _statuses(task, POLICY)
    assert statuses[0] is TaskStatus.REJECTED_OPERATOR_NOT_ALLOWED
    assert set(statuses) >= {TaskStatus.REJECTED_UNKNOWN_OPERATOR, TaskStatus.REJECTED_SETTINGS}


def test_an_evaluator_that_is_allowed_but_not_installed_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from site_agent.evaluation import base

    # a site without the LoRA evaluator's module (e.g. a slim install): it must refuse, not crash
    monkeypatch.setattr(base, "_FACTORIES", {k: v for k, v in base._FACTORIES.items() if k is not EvaluatorKind.LORA})
    monkeypatch.setattr(base, "_BUILTIN_MODULES", {EvaluatorKind.QUALITY_PROXY: "site_agent.evaluation.quality_proxy"})
    policy = Policy(allowed_operators=ALL_FOUR)  # allows lora by default
    task = _task(evaluator=EvaluatorKind.LORA, metric=Metric.NEG_TOKEN_LOSS, train_steps=10)
    problems = check_task(task, policy)
    assert [p.status for p in problems] == [TaskStatus.REJECTED_SETTINGS]
    assert "not installed" in problems[0].reason


def test_tightened_bounds_show_in_the_catalog_and_are_enforced() -> None:
    policy = Policy(allowed_operators=ALL_FOUR, parameter_bounds={
        "length_filter": {"min_answer_chars": Bound(min=5, max=50), "max_answer_chars": Bound(max=1000)},
        "exact_dedup": {"key": Bound(choices=("answer", "pair"))},
    })
    catalog = {s.name: s for s in published_catalog(policy)}
    lf = catalog["length_filter"]
    p = lf.param("min_answer_chars")
    assert p is not None and (p.int_min, p.int_max, p.int_default) == (5, 50, 5)  # default moved inside
    p = lf.param("max_answer_chars")
    assert p is not None and (p.int_min, p.int_max, p.int_default) == (1, 1000, 1000)
    key = catalog["exact_dedup"].param("key")
    assert key is not None and key.choices == ("pair", "answer") and key.enum_default == "pair"

    over = _task(OperatorCall.of("length_filter", min_answer_chars=60, max_answer_chars=900))
    assert _statuses(over, policy) == [TaskStatus.REJECTED_BAD_PARAMETER]
    assert _statuses(_task(OperatorCall.of("exact_dedup", key="instruction")), policy) == [
        TaskStatus.REJECTED_BAD_PARAMETER]
    # Omitting a parameter whose operator default the policy excludes would run that default: refused,
    # until the published defaults are filled in.
    omitted = _task(OperatorCall.of("length_filter", min_answer_chars=10))
    assert _statuses(omitted, policy) == [TaskStatus.REJECTED_SETTINGS]
    filled = omitted.model_copy(update={"strategy": apply_policy_defaults(omitted.strategy, policy)})
    assert check_task(filled, policy) == []
    assert filled.strategy.calls[0].kwargs == {"min_answer_chars": 10, "max_answer_chars": 1000,
                                               "min_instruction_chars": 3}


@pytest.mark.parametrize(("bounds", "why"), [
    ({"length_filter": {"min_answer_chars": Bound(max=20_000)}}, "widen"),
    ({"length_filter": {"min_answer_chars": Bound(min=30, max=20)}}, "above max"),
    ({"length_filter": {"min_answer_chars": Bound(min=2.5)}}, "whole number"),
    ({"length_filter": {"min_answer_chars": Bound(choices=("a",))}}, "min'/'max' only"),
    ({"length_filter": {"no_param": Bound(min=1)}}, "no such parameter"),
    ({"exact_dedup": {"key": Bound(choices=("pair", "row"))}}, "subset"),
    ({"exact_dedup": {"key": Bound(min=1)}}, "choices' only"),
    ({"exact_dedup": {"case_insensitive": Bound(min=1)}}, "bool parameter"),
])
def test_bounds_can_only_narrow(bounds: dict[str, dict[str, Bound]], why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        published_catalog(Policy(allowed_operators=ALL_FOUR, parameter_bounds=bounds))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "why"), [
    ("allowed_operators: [remove_markup]\nmax_strategy_lenght: 3\n", "line 2: 'max_strategy_lenght': unknown key"),
    ("allowed_operators:\n  - remove_markup\n  - remove_markp\n", "line 3: 'allowed_operators.1': no operator"),
    ("max_strategy_length: 3\n", "'allowed_operators': Field required"),
    ("allowed_operators: [remove_markup]\nmax_strategy_length: 99\n", "line 2: 'max_strategy_length'"),
    ("allowed_operators: [remove_markup]\nallowed_evaluators: [gpt]\n", "line 2: 'allowed_evaluators.0'"),
    ("allowed_operators: [length_filter]\nparameter_bounds:\n  length_filter:\n"
     "    min_answer_chars: {min: 0, max: 99999}\n", "line 4: 'parameter_bounds.length_filter.min_answer_chars.max'"),
    ("allowed_operators: [length_filter]\nparameter_bounds:\n  length_filter:\n"
     "    min_answer_chars: {min: true}\n", "line 4: 'parameter_bounds.length_filter.min_answer_chars.min'"),
    ("allowed_operators: [length_filter]\nparameter_bounds:\n  exact_dedup: {}\n",
     "line 3: 'parameter_bounds.exact_dedup'"),
    ("allowed_operators: [a\nb: [\n", "not valid YAML"),
    ("", "empty"),
    ("- remove_markup\n", "mapping"),
])
def test_load_policy_names_key_and_line(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policy(_write(tmp_path, text))
    assert why in str(e.value)
    assert isinstance(e.value, ConfigError)


def test_missing_or_undecodable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "absent.yaml")
    path = tmp_path / "latin.yaml"
    path.write_bytes("allowed_operators: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy(path)
