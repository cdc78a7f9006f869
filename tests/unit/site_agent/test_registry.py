from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from protos import serde
from protos.views import Hello, ParamType, Team
from site_agent.errors import OperatorError
from site_agent.operators import (
    Batch,
    Operator,
    OperatorParams,
    create_operator,
    load_plugins,
    operator_spec,
    register_operator,
    registered_operators,
    registry,
)

BUILTINS = {"remove_markup", "normalize_text", "length_filter", "exact_dedup"}


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    registered_operators()  # built-ins in before the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


class _Params(OperatorParams):
    rate: float = Field(default=0.5, ge=0.0, le=1.0)
    mode: Literal["fast", "exact"] = "fast"


class _Upper(Operator):
    name = "upper_case"
    team = Team.OPTIMIZATION
    Params: ClassVar[type[BaseModel]] = _Params

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        return {**batch, "answer": [a.upper() for a in batch["answer"]]}, [bool(a) for a in batch["answer"]]


def test_builtins_are_registered_with_valid_specs() -> None:
    ops = registered_operators()
    assert BUILTINS <= set(ops)
    specs = tuple(operator_spec(ops[name]) for name in sorted(BUILTINS))
    assert all(s.team is Team.CLEANING and s.version == ("2" if s.name == "normalize_text" else "1") for s in specs)
    hello = Hello(site_id="site-a", software_version="0.1.0", catalog=specs)
    assert serde.from_pb(serde.to_pb(hello)) == hello
    lf = next(s for s in specs if s.name == "length_filter").param("min_answer_chars")
    assert lf is not None and (lf.type, lf.int_min, lf.int_max, lf.int_default) == (ParamType.INT, 0, 10_000, 2)
    form = next(s for s in specs if s.name == "normalize_text").param("form")
    assert form is not None and form.choices == ("NFC", "NFKC") and form.enum_default == "NFKC"


def test_register_and_run_a_new_operator() -> None:
    register_operator(_Upper)
    spec = operator_spec(_Upper)
    assert [(p.name, p.type) for p in spec.params] == [("rate", ParamType.FLOAT), ("mode", ParamType.ENUM)]
    op = create_operator("upper_case", {"rate": 1, "mode": "exact"})  # an int is a valid float
    assert op.params == _Params(rate=1.0, mode="exact")
    out, stats = op.run({"instruction": ["q1", "q2", "q3"], "answer": ["ab", "", "CD"], "id": ["1", "2", "3"]})
    assert out == {"instruction": ["q1", "q3"], "answer": ["AB", "CD"], "id": ["1", "3"]}
    assert (stats.op, stats.kept, stats.dropped, stats.changed) == ("upper_case", 2, 1, 1)


def test_duplicate_name_is_an_error() -> None:
    register_operator(_Upper)

    class Other(_Upper):
        pass

    with pytest.raises(OperatorError, match="already registered"):
        register_operator(Other)
    with pytest.raises(OperatorError, match="already registered"):
        register_operator(registered_operators()["exact_dedup"])


def _op_with(params_model: type[BaseModel]) -> type[Operator]:
    class Op(_Upper):
        name = "bad_op"
        Params = params_model

    return Op


def test_params_models_that_cannot_be_published_are_refused() -> None:
    class NoUpper(OperatorParams):
        n: int = Field(default=1, ge=0)

    class NoDefault(OperatorParams):
        n: int = Field(ge=0, le=3)

    class FreeText(OperatorParams):
        s: str = "x"

    class Open(BaseModel):
        model_config = ConfigDict(frozen=True)
        n: int = Field(default=1, ge=0, le=3)

    class DefaultOutside(OperatorParams):
        n: int = Field(default=9, ge=0, le=3)

    cases: list[tuple[type[BaseModel], str]] = [
        (NoUpper, "ge and le"), (NoDefault, "default"), (FreeText, "bounded int"),
        (Open, "extra='forbid'"), (DefaultOutside, "invalid schema")]
    for model, why in cases:
        with pytest.raises(OperatorError, match=why):
            register_operator(_op_with(model))
    assert "bad_op" not in registered_operators()


def test_create_operator_validates_strictly() -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("no_such_op", {}, "unknown operator"),
        ("length_filter", {"min_chars": 3}, "no parameter 'min_chars'"),
        ("length_filter", {"min_answer_chars": -1}, "outside"),
        ("length_filter", {"min_answer_chars": True}, "must be an int"),
        ("length_filter", {"min_answer_chars": 2.0}, "must be an int"),
        ("exact_dedup", {"case_insensitive": 1}, "must be a bool"),
        ("exact_dedup", {"key": "row"}, "must be one of"),
    ]
    for name, params, why in cases:
        with pytest.raises(OperatorError, match=why):
            create_operator(name, params)
    with pytest.raises(OperatorError) as e:
        create_operator("no such <op>", {})
    assert "<op>" not in str(e.value)


def test_run_checks_shapes_and_hides_exception_messages() -> None:
    class Broken(_Upper):
        name = "broken"

        def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
            raise ValueError(f"cannot parse {batch['answer'][0]}")

    class Short(_Upper):
        name = "short"

        def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
            return batch, [True]

    batch = {"instruction": ["q", "r"], "answer": ["patient secret", "x"]}
    with pytest.raises(OperatorError) as e:
        Broken(_Params()).run(batch)
    assert "ValueError" in str(e.value) and "secret" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(OperatorError, match="wrong shape"):
        Short(_Params()).run(batch)
    with pytest.raises(OperatorError, match="wrong model"):
        Short(registered_operators()["exact_dedup"].Params())


@dataclass
class _FakeEntryPoint:
    name: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def test_plugins_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [_FakeEntryPoint("upper", _Upper)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "autodp.operators" else [])
    assert load_plugins() == ["upper_case"]
    assert load_plugins() == ["upper_case"]  # loading again is not a duplicate registration
    assert registered_operators()["upper_case"] is _Upper

    eps[:] = [_FakeEntryPoint("broken", ImportError("no module named hospital_secret"))]
    with pytest.raises(OperatorError, match="'broken' failed to load: ImportError") as e:
        load_plugins()
    assert "hospital_secret" not in str(e.value)

    eps[:] = [_FakeEntryPoint("not_an_op", object)]
    with pytest.raises(OperatorError, match="not an Operator subclass"):
        load_plugins()


def test_abstract_and_foreign_classes_cannot_register() -> None:
    class Abstract(Operator):
        name = "abstract_op"
        team = Team.CLEANING
        Params: ClassVar[type[BaseModel]] = _Params

    with pytest.raises(OperatorError, match="concrete"):
        register_operator(Abstract)  # type: ignore[type-abstract]
    with pytest.raises(OperatorError, match="concrete"):
        register_operator(dict)  # type: ignore[arg-type]
