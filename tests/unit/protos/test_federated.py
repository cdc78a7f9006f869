"""The contract of federated LoRA training: config records are checked strictly, an adapter's digest
depends on its tensors only, audit records are identical for identical messages and verify in a log,
and the committed stub matches federated_training.proto."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.audit import AuditLog, read_log, verify
from protos.federated import (
    ExchangeKind,
    Failure,
    LossMean,
    RoundSettings,
    SettingsRefused,
    adapter_digest,
    adapter_problems,
    describe_exchange,
    exchange_record,
    failure_from_code,
    final_config,
    parse_round_config,
    pb,
    round_config,
)

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = RoundSettings(local_steps=5, lr=0.01, lora_r=4, lora_alpha=8, seq_len=64, batch_size=4, seed=3)


def _config(**changes: object) -> dict[str, object]:
    return {**round_config("search-1", 3, SETTINGS), "server-round": 2, **changes}


def test_round_config_round_trips() -> None:
    info = parse_round_config(_config())
    assert (info.search_id, info.round, info.rounds, info.settings) == ("search-1", 2, 3, SETTINGS)
    final = parse_round_config(final_config("search-1", 3), final=True)
    assert final.round == 3 and final.settings is None


@pytest.mark.parametrize("changes", [
    {"extra": 1}, {"search-id": "has space"}, {"search-id": 5}, {"server-round": 4}, {"server-round": True},
    {"lr": "0.1"}, {"lr": 2.0}, {"lora-r": 2.5}, {"local-steps": 0}, {"seed": -1}, {"batch-size": True},
])
def test_round_config_refuses(changes: dict[str, object]) -> None:
    with pytest.raises(SettingsRefused):
        parse_round_config(_config(**changes))


def test_loss_mean_round_trips_through_config_and_pb() -> None:
    token = SETTINGS.model_copy(update={"loss_mean": "token"})
    config = {**round_config("search-1", 3, token), "server-round": 2}
    assert config["loss-mean"] == 1 and type(config["loss-mean"]) is int
    info = parse_round_config(config)
    assert info.settings == token and info.settings.loss_mean == "token"
    assert token.to_pb().loss_mean == pb.LOSS_MEAN_TOKEN == LossMean.TOKEN
    assert SETTINGS.to_pb().loss_mean == pb.LOSS_MEAN_ROW == LossMean.ROW
    # row is the zero value: a record of row settings is byte for byte what it was before the field existed
    old = pb.RoundSettings(**SETTINGS.model_dump(exclude={"loss_mean"}))
    assert SETTINGS.to_pb().SerializeToString(deterministic=True) == old.SerializeToString(deterministic=True)
    assert pb.RoundSettings.FromString(old.SerializeToString()).loss_mean == pb.LOSS_MEAN_ROW


def test_a_config_without_loss_mean_means_row() -> None:
    """What a coordinator from before the setting sends (and what one sends now for row: an older site
    accepts it)."""
    config = _config()
    assert "loss-mean" not in config
    settings = parse_round_config(config).settings
    assert settings is not None and settings.loss_mean == "row"
    explicit = parse_round_config(_config(**{"loss-mean": 0})).settings
    assert explicit is not None and explicit.loss_mean == "row"


@pytest.mark.parametrize("value", [2, -1, True, 1.0, "token", None])
def test_an_unknown_loss_mean_is_refused(value: object) -> None:
    with pytest.raises(SettingsRefused, match=r"^config 'loss-mean' must be 0 \(row\) or 1 \(token\)$"):
        parse_round_config(_config(**{"loss-mean": value}))
    with pytest.raises(SettingsRefused, match="unknown"):  # the final adapter carries no settings
        parse_round_config({**final_config("search-1", 3), "loss-mean": 0}, final=True)


def test_round_config_refuses_missing_keys_and_a_final_that_is_not_last() -> None:
    config = _config()
    del config["lr"]
    with pytest.raises(SettingsRefused, match="missing"):
        parse_round_config(config)
    with pytest.raises(SettingsRefused):
        parse_round_config({**final_config("search-1", 3), "server-round": 2}, final=True)


def test_digest_depends_on_content_not_order() -> None:
    rng = np.random.default_rng(0)
    a = {"x.lora_A.weight": rng.standard_normal((4, 6)).astype("<f4"),
         "x.lora_B.weight": np.zeros((6, 4), "<f4")}
    d = adapter_digest(a)
    assert adapter_digest(dict(reversed(list(a.items())))) == d
    assert (d.tensors, d.parameters, d.payload_bytes) == (2, 48, 192)
    flipped = {k: v.copy() for k, v in a.items()}
    flipped["x.lora_B.weight"][0, 0] = 1e-30
    assert adapter_digest(flipped).sha256 != d.sha256
    renamed = {"y.lora_A.weight": a["x.lora_A.weight"], "x.lora_B.weight": a["x.lora_B.weight"]}
    assert adapter_digest(renamed).sha256 != d.sha256
    with pytest.raises(SettingsRefused, match="float32"):
        adapter_digest({"x": np.zeros(3)})


def test_adapter_problems() -> None:
    ref = {"a": (2, 3), "b": (3,)}
    ok = {"a": np.zeros((2, 3), "<f4"), "b": np.ones(3, "<f4")}
    assert adapter_problems(ok, ref) == [] and adapter_problems(ok, None) == []
    assert "1 unexpected and 1 missing" in adapter_problems({"a": ok["a"], "c": ok["b"]}, ref)[0]
    assert "wrong shape" in adapter_problems({"a": np.zeros((3, 2), "<f4"), "b": ok["b"]}, ref)[0]
    assert "not finite" in adapter_problems({"a": ok["a"], "b": np.array([1, np.nan, 0], "<f4")}, ref)[0]
    assert "float32" in adapter_problems({"a": ok["a"].astype("f8"), "b": ok["b"]}, ref)[0]


def test_enums_match_the_proto_and_failure_codes_are_ours() -> None:
    assert all(pb.ExchangeKind.Value(f"EXCHANGE_KIND_{k.name}") == k.value for k in ExchangeKind)
    assert all(pb.Failure.Value(f"FAILURE_{f.name}") == f.value for f in Failure)
    assert all(pb.LossMean.Value(f"LOSS_MEAN_{m.name}") == m.value for m in LossMean)
    assert set(pb.LossMean.values()) == {m.value for m in LossMean}
    for f in Failure:
        assert failure_from_code(f.code) is f and f.reason
    assert all(failure_from_code(code) is None for code in range(0, 9))  # Flower's own error codes


def test_records_are_deterministic_verify_in_a_log_and_read_in_plain_words(tmp_path: Path) -> None:
    d = adapter_digest({"t": np.arange(6, dtype="<f4")})
    records = [
        exchange_record(ExchangeKind.GLOBAL_ADAPTER, run_id="flwr-1", search_id="s-1", round=1, digest=d,
                        settings=SETTINGS),
        exchange_record(ExchangeKind.ADAPTER_UPDATE, run_id="flwr-1", search_id="s-1", round=1, digest=d,
                        examples=120, epsilon=0.75),
        exchange_record(ExchangeKind.FINAL_ADAPTER, run_id="flwr-1", search_id="s-1", round=3, digest=d),
        exchange_record(ExchangeKind.FINAL_ACK, run_id="flwr-1", search_id="s-1", round=3),
        exchange_record(ExchangeKind.FAILURE, run_id="flwr-1", search_id="s-1", round=2, failure=Failure.BUDGET),
    ]
    again = exchange_record(ExchangeKind.ADAPTER_UPDATE, run_id="flwr-1", search_id="s-1", round=1, digest=d,
                            examples=120, epsilon=0.75)
    assert again.SerializeToString(deterministic=True) == records[1].SerializeToString(deterministic=True)
    words = [describe_exchange(r) for r in records]
    assert "train 5 steps" in words[0] and "120 training rows" in words[1] and "epsilon 0.75" in words[1]
    assert words[0].endswith("loss mean per row")
    token = SETTINGS.model_copy(update={"loss_mean": "token"})
    assert describe_exchange(exchange_record(ExchangeKind.GLOBAL_ADAPTER, run_id="flwr-1", search_id="s-1",
                                             round=1, digest=d, settings=token)).endswith("loss mean per token")
    assert words[2].startswith("Final averaged") and "acknowledged" in words[3] and "budget" in words[4]
    with AuditLog.open(tmp_path / "log", Ed25519PrivateKey.generate(), "site", "hospital-a") as log:
        for r in records:
            log.record("out", "coordinator", r)
    assert verify(tmp_path / "log").messages == len(records)
    types = {e.msg_type for e in read_log(tmp_path / "log").entries if e.kind == "message"}
    assert types == {"autodp.fedlora.v1.AdapterExchange"}
    # `autodp audit show` reads them in the same words
    from protos.audit_cli import describe_entry

    shown = [describe_entry(e)[1] for e in read_log(tmp_path / "log").entries if e.kind == "message"]
    assert shown == words
    with pytest.raises(SettingsRefused):
        exchange_record(ExchangeKind.ADAPTER_UPDATE, run_id="r", search_id="s", round=1, epsilon=float("nan"))


def test_committed_stub_is_fresh(tmp_path: Path) -> None:
    """Regenerate with `python -m grpc_tools.protoc -I. --python_out=. protos/federated_training.proto`."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT}", f"--python_out={tmp_path}", str(ROOT / "protos" / "federated_training.proto")]
    assert protoc.main(args) == 0
    assert filecmp.cmp(tmp_path / "protos" / "federated_training_pb2.py",
                       ROOT / "protos" / "federated_training_pb2.py", shallow=False)
