"""The coordinator's side of federated LoRA training, without a network: sites' keys come only from
certificates the federation CA signed; the app bundle holds no code; FedAvg averages the usable updates
only and audits every reply; the final adapter is written so that PEFT loads it."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.config import CoordinatorConfig
from coordinator.federated.launch import app_bundle, site_public_keys
from coordinator.federated.server_app import TrainingJob, peft_config, write_outputs
from coordinator.federated.strategy import AuditedFedAvg, arrays_of
from protos.audit import AuditLog, read_log, verify
from protos.config import TLSFiles
from protos.errors import CertificateError
from protos.federated import (
    CLIENTAPP_REF,
    SERVERAPP_REF,
    ExchangeKind,
    Failure,
    RoundSettings,
    adapter_digest,
    pb,
    round_config,
)
from protos.tls import init_ca, issue_coordinator, issue_site

SITES = {11: "hospital-a", 22: "hospital-b", 33: "hospital-c"}
SETTINGS = RoundSettings(local_steps=5, lora_r=2, lora_alpha=4, seq_len=32, batch_size=2)


@pytest.fixture(autouse=True)
def flower_task() -> Iterator[None]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 99, 0
    yield


def _cfg(certs: Path, sites: list[str]) -> CoordinatorConfig:
    return CoordinatorConfig(state_dir=certs / "state", sites=sites, audit_key=certs / "coordinator.audit.key",
                             tls=TLSFiles(cert=certs / "coordinator.crt", key=certs / "coordinator.key",
                                          ca=certs / "ca.crt"))


def test_site_keys_come_from_certificates_of_our_ca(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other"
    init_ca(certs)
    issue_coordinator(certs)
    issue_site(certs, "hospital-a")
    issue_site(certs, "hospital-b")
    init_ca(other)
    issue_site(other, "hospital-b")
    keys = site_public_keys(_cfg(certs, ["hospital-a", "hospital-b"]))
    assert set(keys) == {"hospital-a", "hospital-b"} and all(len(k) > 32 for k in keys.values())
    with pytest.raises(CertificateError, match="not signed by the federation CA"):
        site_public_keys(_cfg(certs, ["hospital-b"]), {"hospital-b": other / "site-hospital-b.crt"})
    with pytest.raises(CertificateError, match="not the certificate of site"):
        site_public_keys(_cfg(certs, ["hospital-b"]), {"hospital-b": certs / "site-hospital-a.crt"})
    revoked = _cfg(certs, ["hospital-a", "hospital-b"]).model_copy(update={"revoked_sites": ["hospital-b"]})
    assert set(site_public_keys(revoked)) == {"hospital-a"}


def test_the_app_bundle_holds_no_code() -> None:
    with zipfile.ZipFile(io.BytesIO(app_bundle())) as fab:
        names = fab.namelist()
        pyproject = fab.read("pyproject.toml").decode()
    assert not [n for n in names if n.endswith((".py", ".pyc", ".so", ".whl"))], names
    assert f'serverapp = "{SERVERAPP_REF}"' in pyproject and f'clientapp = "{CLIENTAPP_REF}"' in pyproject


def _adapter(value: float, shape: tuple[int, int] = (2, 4)) -> dict[str, np.ndarray]:
    return {"m.q_proj.lora_A.weight": np.full(shape, value, np.float32),
            "m.q_proj.lora_B.weight": np.full(shape[::-1], -value, np.float32)}


def _reply(sent: Message, arrays: dict[str, np.ndarray] | None, examples: int = 10,
           error: Failure | None = None) -> Message:
    if error is not None:
        return Message(Error(code=error.code, reason=error.reason), reply_to=sent)
    assert arrays is not None
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": examples, "epsilon": 0.5})})
    return Message(content, reply_to=sent)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [*SITES, 44]  # 44: connected, but not a site of this run


def test_fedavg_averages_usable_updates_only_and_audits_every_reply(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit.log", Ed25519PrivateKey.generate(), "coordinator", "coordinator")
    strategy = AuditedFedAvg(audit=audit, run_id="flwr-99", search_id="search-1", settings=SETTINGS, nodes=SITES,
                             connect_timeout_s=1.0)
    config = ConfigRecord(dict(round_config("search-1", 2, SETTINGS)))
    grid: Any = _Grid()
    sent = list(strategy.configure_train(1, ArrayRecord(), config, grid))
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(SITES)  # node 44 gets nothing
    for m in sent:
        m.metadata.__dict__["_message_id"] = m.object_id
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [_reply(by_node[11], _adapter(1.0), examples=30), _reply(by_node[22], _adapter(3.0), examples=10),
               _reply(by_node[33], None, error=Failure.BUDGET)]
    averaged, _ = strategy.aggregate_train(1, replies)
    assert averaged is not None
    assert np.allclose(arrays_of(averaged)["m.q_proj.lora_A.weight"], 1.5)  # (30 * 1 + 10 * 3) / 40
    # round 2: a reply whose adapter has another shape is recorded, then left out
    sent = list(strategy.configure_train(2, averaged, config, grid))
    for m in sent:
        m.metadata.__dict__["_message_id"] = m.object_id
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [_reply(by_node[11], _adapter(2.0)), _reply(by_node[22], _adapter(9.0, (3, 4)))]
    averaged, _ = strategy.aggregate_train(2, replies)
    assert averaged is not None and np.allclose(arrays_of(averaged)["m.q_proj.lora_A.weight"], 2.0)
    assert "wrong shape" in strategy.log[1].sites["hospital-b"]["left_out"]
    assert strategy.log[0].sites["hospital-c"] == {"failure": "budget"}
    audit.close()
    verify(tmp_path / "audit.log")
    recs = [(e.direction, e.peer, pb.AdapterExchange.FromString(e.payload))
            for e in read_log(tmp_path / "audit.log").entries if e.kind == "message"]
    assert [(d, peer, ExchangeKind(r.kind).name, r.round) for d, peer, r in recs] == [
        ("out", "hospital-a", "GLOBAL_ADAPTER", 1), ("out", "hospital-b", "GLOBAL_ADAPTER", 1),
        ("out", "hospital-c", "GLOBAL_ADAPTER", 1),
        ("in", "hospital-a", "ADAPTER_UPDATE", 1), ("in", "hospital-b", "ADAPTER_UPDATE", 1),
        ("in", "hospital-c", "FAILURE", 1),
        ("out", "hospital-a", "GLOBAL_ADAPTER", 2), ("out", "hospital-b", "GLOBAL_ADAPTER", 2),
        ("out", "hospital-c", "GLOBAL_ADAPTER", 2),
        ("in", "hospital-a", "ADAPTER_UPDATE", 2), ("in", "hospital-b", "ADAPTER_UPDATE", 2)]
    assert recs[3][2].examples == 30 and recs[3][2].adapter_sha256 == adapter_digest(_adapter(1.0)).sha256
    assert recs[5][2].failure == Failure.BUDGET


def test_the_final_adapter_loads_with_peft(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny", ["what helps a headache", "rest and water help"], vocab=300)
    torch.manual_seed(0)
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                             LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    arrays = {k: (v.detach().numpy() + 0.25).astype(np.float32) for k, v in get_peft_model_state_dict(trained).items()}
    job = TrainingJob(search_id="search-1", rounds=1, settings=SETTINGS, nodes=SITES, output=tmp_path / "out")
    digest = adapter_digest(arrays)
    write_outputs(job.output, arrays, digest, job, {"final_sha256": digest.hex})
    assert set(peft_config(arrays, SETTINGS)["target_modules"]) >= {"q_proj", "down_proj"}
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(job.output))
    state = get_peft_model_state_dict(loaded)
    assert set(state) == set(arrays)
    assert all(np.array_equal(state[k].numpy(), arrays[k]) for k in arrays)


def test_the_train_command_asks_for_the_loss_mean_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import coordinator.config
    import coordinator.federated.launch
    import protos.recipe
    from coordinator.train_cli import app

    asked: list[RoundSettings] = []

    def fake_train(cfg: Any, search_id: str, rounds: int, settings: RoundSettings, opts: Any, say: Any) -> Any:
        asked.append(settings)
        return {"adapter": "a", "final_sha256": "0" * 64, "parameters": 1, "run_id": "flwr-1", "search_id": search_id,
                "rounds": rounds, "sites": [], "final_delivery": {}}

    recipe = SimpleNamespace(search_id="search-1", to_strategy=lambda: SimpleNamespace(describe=lambda: "no-op"))
    monkeypatch.setattr(coordinator.config, "load_config", lambda _p: object())
    monkeypatch.setattr(protos.recipe, "load_recipe", lambda _p: recipe)
    monkeypatch.setattr(coordinator.federated.launch, "train_federated", fake_train)
    base = ["federated", "-c", "c.yaml", "-r", "r.yaml", "-o", str(tmp_path)]
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        for extra, expected in (([], "row"), (["--loss-mean", "token"], "token"), (["--loss-mean", "row"], "row")):
            result = CliRunner().invoke(app, base + extra)
            assert result.exit_code == 0, result.output
            assert asked[-1].loss_mean == expected
        bad = CliRunner().invoke(app, [*base, "--loss-mean", "median"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert bad.exit_code == 2 and "'median' is not one of 'row', 'token'" in bad.output and len(asked) == 3
