from protos.catalog import check_strategy, index_catalog
from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, Strategy, TaskStatus, Team

CATALOG = index_catalog([OperatorSpec(name="length_filter", team=Team.CLEANING, version="1", params=(
    ParamSpec(name="min_chars", type=ParamType.INT, int_min=0, int_max=100, int_default=2),))])


def statuses(s: Strategy) -> list[TaskStatus]:
    return [p.status for p in check_strategy(s, CATALOG, max_length=2)]


def test_valid() -> None:
    assert statuses(Strategy(calls=(OperatorCall.of("length_filter", min_chars=5),))) == []


def test_problems_are_typed() -> None:
    assert statuses(Strategy(calls=(OperatorCall.of("nope"),))) == [TaskStatus.REJECTED_UNKNOWN_OPERATOR]
    assert statuses(Strategy(calls=(OperatorCall.of("length_filter", min_chars=500),))) == [
        TaskStatus.REJECTED_BAD_PARAMETER]
    assert statuses(Strategy(calls=(OperatorCall.of("length_filter", extra=1),))) == [
        TaskStatus.REJECTED_UNEXPECTED_FIELD]
    assert statuses(Strategy(calls=(OperatorCall.of("length_filter"),) * 3)) == [TaskStatus.REJECTED_SETTINGS]
