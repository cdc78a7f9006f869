"""A site's ClientApp for federated LoRA training, driven with Flower messages built as the coordinator
builds them (no network): it trains from the global adapter and returns only the adapter and its row
count, audits every exchange, refuses what its config does not allow (with a fixed reason, no detail),
charges DP-SGD to the privacy ledger, and scores the final adapter against the base model locally.
The phase is off by default."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from protos.audit import AuditLog, read_log, verify
from protos.federated import (
    FINAL_MESSAGE_TYPE,
    ExchangeKind,
    Failure,
    RoundSettings,
    adapter_digest,
    final_config,
    pb,
    round_config,
)
from site_agent.config import SiteConfig
from site_agent.data.toy import make_toy_dataset
from site_agent.evaluation.dp import DPConfig
from site_agent.federated.client_app import REPORT_NAME, SiteSession, make_client_app
from site_agent.federated.settings import FederatedTrainingSettings
from site_agent.federated.trainer import TrainerOptions
from site_agent.privacy import PrivacyLedger, PrivacySettings
from site_agent.privacy.settings import DPSGDSettings
from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

SETTINGS = RoundSettings(local_steps=10, lr=0.01, lora_r=4, lora_alpha=8, seq_len=64, batch_size=8, seed=0)
RUN = 4242


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clean, _ = make_toy_dataset(300, seed=7, noise_rate=0.0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), clean["instruction"] + clean["answer"])


@pytest.fixture(autouse=True)
def flower_task() -> Iterator[None]:
    """Flower stamps every message with the task it runs in; a test plays that task."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN, 0
    yield
    torch.set_num_threads(threads)


def _session(tmp: Path, tiny: Path, *, rows: int = 80, fed: dict[str, Any] | None = None,
             privacy: PrivacySettings | None = None, dp: bool = False) -> SiteSession:
    train, _ = make_toy_dataset(rows, seed=1, noise_rate=0.0)
    held_out, _ = make_toy_dataset(16, seed=2, noise_rate=0.0)
    privacy = privacy or PrivacySettings(min_cohort=10)
    ledger = PrivacyLedger(tmp / "privacy.db", privacy) if dp else None
    dp_cfg = DPConfig(**privacy.dp_sgd.model_dump()) if dp and privacy.dp_sgd else None
    return SiteSession(
        site_id="hospital-a", coordinator_party="coordinator", search_id="search-1", train_batch=train,
        eval_batch=held_out, settings=FederatedTrainingSettings(enabled=True, **(fed or {})),
        trainer_options=TrainerOptions(model_path=tiny, device="cpu", dtype="float32", threads=1, dp=dp_cfg,
                                       secret_dir=tmp),
        audit=AuditLog.open(tmp / "audit.log", Ed25519PrivateKey.generate(), "site", "hospital-a"),
        output_dir=tmp / "out", privacy=privacy, ledger=ledger)


def _message(arrays: dict[str, np.ndarray], config: dict[str, Any], kind: str = "train",
             extra: RecordDict | None = None) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "config": ConfigRecord(config)})
    for k, v in (extra or RecordDict()).items():
        content[k] = v
    msg = Message(content, message_type=kind, dst_node_id=7)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _round(n: int, settings: RoundSettings = SETTINGS, search: str = "search-1", rounds: int = 2) -> dict[str, Any]:
    return {**round_config(search, rounds, settings), "server-round": n}


def _records(path: Path) -> list[tuple[str, Any]]:
    return [(e.direction, pb.AdapterExchange.FromString(e.payload))
            for e in read_log(path).entries if e.kind == "message"]


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}


def test_off_by_default() -> None:
    assert FederatedTrainingSettings().enabled is False
    cfg = SiteConfig.model_validate({"site_id": "h", "tls": {"cert": "c", "key": "k", "ca": "a"},
                                     "audit_key": "a.key", "policy": "p.yaml", "data": {"path": "d.jsonl"}})
    assert cfg.federated_training.enabled is False


def test_the_command_refuses_a_site_that_did_not_enable_it(tmp_path: Path) -> None:
    from site_agent.federated.cli import app

    (tmp_path / "site.yaml").write_text(yaml.safe_dump({
        "site_id": "h", "tls": {"cert": "c", "key": "k", "ca": "a"}, "audit_key": "a.key", "policy": "p.yaml",
        "data": {"path": "d.jsonl"}}))
    result = CliRunner().invoke(app, ["join", "--config", str(tmp_path / "site.yaml"), "--recipe", "r.yaml"])
    assert result.exit_code == 2 and "federated training is off" in result.output


def test_a_sigterm_while_the_site_prepares_stops_the_command_at_once(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing the data and loading the model can take minutes: a stop then does not wait for their end."""
    import contextlib
    import os
    import signal
    import time

    import site_agent.federated.session
    from site_agent.federated.cli import app

    @contextlib.contextmanager
    def preparing(*args: object, **kwargs: object) -> Iterator[None]:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("preparing was not interrupted")
        yield  # a generator, as open_session is

    monkeypatch.setattr(site_agent.federated.session, "open_session", preparing)
    (tmp_path / "site.yaml").write_text(yaml.safe_dump({
        "site_id": "h", "tls": {"cert": "c", "key": "k", "ca": "a"}, "audit_key": "a.key", "policy": "p.yaml",
        "data": {"path": "d.jsonl"}, "federated_training": {"enabled": True}}))
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        t0 = time.monotonic()
        result = CliRunner().invoke(app, ["join", "--config", str(tmp_path / "site.yaml"), "--recipe", "r.yaml"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert result.exit_code == 0, result.output
    assert "stopped before joining the training" in result.output and time.monotonic() - t0 < 9


def test_rounds_train_from_the_global_adapter_and_the_final_one_beats_the_base_model(tmp_path: Path,
                                                                                     tiny: Path) -> None:
    session = _session(tmp_path, tiny)
    app = make_client_app(session)
    ctx: Any = None
    first = app(message=_message({}, _round(1)), context=ctx)
    assert not first.has_error()
    update = _arrays(first)
    assert set(first.content.metric_records["metrics"]) == {"num-examples", "epsilon"}
    assert first.content.metric_records["metrics"]["num-examples"] == 80
    assert set(first.content.array_records) == {"arrays"} and not first.content.config_records
    assert len(update) == 28 and all(a.dtype == np.float32 for a in update.values())
    # round 2 starts from what the coordinator sends (here: the update itself, as with a single site)
    second = app(message=_message(update, _round(2)), context=ctx)
    assert not second.has_error() and adapter_digest(_arrays(second)) != adapter_digest(update)
    final = _arrays(second)
    ack = app(message=_message(final, final_config("search-1", 2), kind=FINAL_MESSAGE_TYPE), context=ctx)
    assert not ack.has_error() and len(ack.content) == 0 and session.done
    report = session.report
    assert report is not None and report["final_loss"] < report["base_loss"]
    assert report["final_sha256"] == adapter_digest(final).hex and (tmp_path / "out" / REPORT_NAME).is_file()
    session.audit.close()
    verify(tmp_path / "audit.log")
    recs = _records(tmp_path / "audit.log")
    assert [(d, ExchangeKind(r.kind).name, r.round) for d, r in recs] == [
        ("in", "GLOBAL_ADAPTER", 1), ("out", "ADAPTER_UPDATE", 1), ("in", "GLOBAL_ADAPTER", 2),
        ("out", "ADAPTER_UPDATE", 2), ("in", "FINAL_ADAPTER", 2), ("out", "FINAL_ACK", 2)]
    assert recs[1][1].adapter_sha256 == adapter_digest(update).sha256 and recs[1][1].examples == 80
    assert recs[2][1].adapter_sha256 == adapter_digest(update).sha256
    assert recs[0][1].settings.local_steps == 10 and recs[0][1].run_id == f"flwr-{RUN}"


def _assert_refused(reply: Message, failure: Failure, audit: Path) -> None:
    assert reply.has_error() and reply.error.code == failure.code and reply.error.reason == failure.reason
    direction, last = _records(audit)[-1]
    assert direction == "out" and last.kind == ExchangeKind.FAILURE and last.failure == failure


def test_refusals_carry_a_fixed_reason_and_are_audited(tmp_path: Path, tiny: Path) -> None:
    session = _session(tmp_path, tiny, fed={"max_local_steps": 10, "max_rounds": 5})
    app = make_client_app(session)
    ctx: Any = None
    log = tmp_path / "audit.log"
    _assert_refused(app(message=_message({}, _round(1, search="search-2")), context=ctx), Failure.REFUSED, log)
    too_many = SETTINGS.model_copy(update={"local_steps": 11})
    _assert_refused(app(message=_message({}, _round(1, too_many)), context=ctx), Failure.REFUSED, log)
    _assert_refused(app(message=_message({}, _round(1, rounds=6)), context=ctx), Failure.REFUSED, log)
    bad_config = {**_round(1), "note": "free text"}
    _assert_refused(app(message=_message({}, bad_config), context=ctx), Failure.REFUSED, log)
    extra = RecordDict({"metrics": MetricRecord({"x": 1.0})})
    _assert_refused(app(message=_message({}, _round(1), extra=extra), context=ctx), Failure.REFUSED, log)
    assert session.trainer is None  # nothing above loaded the model or touched the rows
    ok = app(message=_message({}, _round(1)), context=ctx)
    assert not ok.has_error()
    _assert_refused(app(message=_message({}, _round(1)), context=ctx), Failure.REFUSED, log)  # a replayed round
    as_float64 = {k: v.astype(np.float64) for k, v in _arrays(ok).items()}
    _assert_refused(app(message=_message(as_float64, _round(2)), context=ctx), Failure.REFUSED, log)
    wrong_shape = {k: np.zeros((v.shape[0] + 1, *v.shape[1:]), np.float32) for k, v in _arrays(ok).items()}
    _assert_refused(app(message=_message(wrong_shape, _round(2)), context=ctx), Failure.REFUSED, log)
    other_rank = SETTINGS.model_copy(update={"lora_r": 8})
    _assert_refused(app(message=_message({}, _round(2, other_rank)), context=ctx), Failure.REFUSED, log)
    TaskIdentity.run_id = RUN + 1  # another run: this site is already in one
    _assert_refused(app(message=_message({}, _round(2)), context=ctx), Failure.REFUSED, log)
    session.audit.close()
    verify(log)


def test_small_cohort_is_refused(tmp_path: Path, tiny: Path) -> None:
    session = _session(tmp_path, tiny, rows=30, privacy=PrivacySettings(min_cohort=50))
    reply = make_client_app(session)(message=_message({}, _round(1)), context=None)  # type: ignore[arg-type]
    _assert_refused(reply, Failure.COHORT, tmp_path / "audit.log")


def test_dp_sgd_rounds_are_charged_to_the_ledger_until_the_budget_runs_out(tmp_path: Path, tiny: Path) -> None:
    dp = DPSGDSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4, accountant="rdp")
    from site_agent.federated.trainer import dp_round_epsilon

    per_round = dp_round_epsilon(DPConfig(**dp.model_dump()), 80, SETTINGS)
    privacy = PrivacySettings(min_cohort=10, total_epsilon=per_round * 1.5, dp_sgd=dp, budget_scope="search")
    session = _session(tmp_path, tiny, privacy=privacy, dp=True)
    app = make_client_app(session)
    first = app(message=_message({}, _round(1)), context=None)  # type: ignore[arg-type]
    assert not first.has_error()
    spent = first.content.metric_records["metrics"]["epsilon"]
    assert isinstance(spent, float) and 0 < spent <= per_round + 1e-9
    assert session.ledger is not None and abs(session.ledger.spent("search-1") - spent) < 1e-9
    second = app(message=_message(_arrays(first), _round(2)), context=None)  # type: ignore[arg-type]
    _assert_refused(second, Failure.BUDGET, tmp_path / "audit.log")
    assert abs(session.ledger.spent("search-1") - spent) < 1e-9  # the refused round spent nothing
    updates = [r for d, r in _records(tmp_path / "audit.log") if r.kind == ExchangeKind.ADAPTER_UPDATE]
    assert len(updates) == 1 and updates[0].epsilon == spent


def test_token_averaging_trains_with_the_evaluator_loop_token_mean(tmp_path: Path, tiny: Path) -> None:
    from site_agent.evaluation.lora_train import train

    token = SETTINGS.model_copy(update={"loss_mean": "token", "local_steps": 4})
    session = _session(tmp_path, tiny, rows=40)
    # answers of different lengths (the rows fill seq_len otherwise, and both means are then the same)
    answers = session.train_batch["answer"]
    session.train_batch = {**session.train_batch, "answer": [a[:20 * (i % 4)] for i, a in enumerate(answers)]}
    reply = make_client_app(session)(message=_message({}, _round(1, token)), context=None)  # type: ignore[arg-type]
    assert not reply.has_error()
    update = _arrays(reply)
    assert _records(tmp_path / "audit.log")[0][1].settings.loss_mean == pb.LOSS_MEAN_TOKEN
    trainer = session.trainer
    assert trainer is not None
    # the same round again from the seeded initialisation: with the round's settings but row averaging, and
    # with the LoRA evaluator's own loop in token mode
    trainer.load_adapter({})
    trainer.train_round(token.model_copy(update={"loss_mean": "row"}), 1, f"flwr-{RUN}")
    row = trainer.export()
    trainer.load_adapter({})
    cfg = replace(trainer.template, steps=4, lr=token.lr, batch_size=token.batch_size, seed=token.seed + 1,
                  loss_mean="token")
    train(trainer.model, trainer.rows, cfg, trainer.tok.pad_token_id)
    by_hand = trainer.export()
    assert all(np.array_equal(update[k], by_hand[k]) for k in update)
    assert max(float(np.abs(update[k] - row[k]).max()) for k in update) > 1e-3


def test_a_dp_sgd_site_refuses_token_averaging(tmp_path: Path, tiny: Path, caplog: pytest.LogCaptureFixture) -> None:
    dp = DPSGDSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4, accountant="rdp")
    privacy = PrivacySettings(min_cohort=10, total_epsilon=100.0, dp_sgd=dp, budget_scope="search")
    session = _session(tmp_path, tiny, privacy=privacy, dp=True)
    token = SETTINGS.model_copy(update={"loss_mean": "token"})
    with caplog.at_level(logging.WARNING, logger="autodp.site.federated"):
        reply = make_client_app(session)(message=_message({}, _round(1, token)), context=None)  # type: ignore[arg-type]
    _assert_refused(reply, Failure.REFUSED, tmp_path / "audit.log")
    assert session.trainer is None  # refused before the model was loaded
    assert session.ledger is not None and session.ledger.spent("search-1") == 0
    [record] = [r for r in caplog.records if r.name == "autodp.site.federated"]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "loss mean 'token'" in record.getMessage() and "DP-SGD" in record.getMessage()


def test_node_key_is_the_site_certificate_key_in_openssh_form(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    from protos.tls import init_ca, issue_site, load_certificate
    from site_agent.federated.node import write_node_key

    init_ca(tmp_path)
    paths = issue_site(tmp_path, "hospital-a")
    write_node_key(paths.key, tmp_path / "node.key")
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    key = load_ssh_private_key((tmp_path / "node.key").read_bytes(), None)
    assert key.public_key() == load_certificate(paths.cert).public_key()
