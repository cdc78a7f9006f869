import os
import pickle
import pickletools
from pathlib import Path

import pytest

from site_agent.data.benchmark import cmekg
from site_agent.data.benchmark.cmekg import restricted_loads, validate_graph
from site_agent.errors import DataError


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


class Plain:
    def __init__(self) -> None:
        self.x = 1


def test_plain_containers_load() -> None:
    data = {"高血压": {"常见症状": ["头痛", "头晕"], "n": [1, 2.5, None, True]}, "t": ("a", 10**30)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert restricted_loads(pickle.dumps(data, protocol=protocol)) == data
    # Older protocols spell bytes and sets as calls to builtins, which are refused like any global.
    richer = {"b": b"\x00raw", "s": {"x", "y"}, "f": frozenset({1})}
    assert restricted_loads(pickle.dumps(richer, protocol=4)) == richer


@pytest.mark.parametrize("obj", [os.system, Payload(), Plain(), print, Path("/etc")])
def test_callables_and_instances_are_refused(obj: object) -> None:
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        data = pickle.dumps(obj, protocol=protocol)
        with pytest.raises(DataError, match="refused") as e:
            restricted_loads(data)
        assert "system" not in str(e.value) and "posix" not in str(e.value)


def test_crafted_global_reduce_is_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # GLOBAL 'os system', the argument tuple, REDUCE: what an attacker would hand-write.
    crafted = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    assert [op.name for op, _, _ in pickletools.genops(crafted)][:2] == ["GLOBAL", "MARK"]  # well-formed
    with pytest.raises(DataError, match="refused"):
        restricted_loads(crafted)
    assert not marker.exists()
    # The same in the newer opcodes (STACK_GLOBAL), hidden inside a plain-looking dict.
    nested = pickle.dumps({"ok": ["x"], "bad": Payload()}, protocol=4)
    with pytest.raises(DataError, match="refused"):
        restricted_loads(nested)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="could not be read"):
        restricted_loads(b"not a pickle")
    with pytest.raises(DataError):
        restricted_loads(b"")


def test_validate_graph_skips_malformed_parts_with_counts() -> None:
    graph, stats = validate_graph({
        "高血压": {"常见症状": ["头痛", " ", 3], "bad": "not a list", 7: ["x"]},
        "": {"p": ["x"]},
        "空": {"p": []},
        5: {"p": ["x"]},
        "坏": ["not a dict"],
        "感冒": {"常见症状": ["发热"]},
    })
    assert graph == {"高血压": {"常见症状": ["头痛"]}, "感冒": {"常见症状": ["发热"]}}
    assert (stats.subjects, stats.skipped_subjects) == (2, 4)
    assert stats.skipped_predicates == 3 and stats.skipped_objects == 2
    with pytest.raises(DataError):
        validate_graph(["not", "a", "dict"])
    with pytest.raises(DataError, match="no usable subjects"):
        validate_graph({1: 2})


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match="pycmekg package is not installed"):
        cmekg.load_cmekg()


def test_load_from_a_given_file(tmp_path: Path) -> None:
    path = tmp_path / "kg.pkl"
    path.write_bytes(pickle.dumps({"感冒": {"常见症状": ["发热", "咳嗽"]}}, protocol=0))
    graph, stats = cmekg.load_cmekg_with_stats(path)
    assert graph == {"感冒": {"常见症状": ["发热", "咳嗽"]}} and stats.subjects == 1
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="refused"):
        cmekg.load_cmekg_with_stats(path)
    with pytest.raises(DataError, match="could not be read"):
        cmekg.load_cmekg_with_stats(tmp_path / "missing.pkl")
