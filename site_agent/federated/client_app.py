"""The site's Flower ClientApp for federated LoRA training: one :class:`SiteSession` per run.

Every message from the coordinator is recorded in the site's audit log (an
:class:`~protos.federated_training_pb2.AdapterExchange`: digest and sizes, not tensors) before it is acted
on, and every reply is recorded before it is returned. A training round:

1. check the config record (:func:`~protos.federated.parse_round_config`), that it is this site's search
   and run, and that the settings are within this site's bounds (``federated_training`` caps; with
   DP-SGD, a loss averaged per row);
2. build the local model on the first round, load the global adapter (names, shapes, float32, finite);
3. refuse when the processed data is below the minimum cohort; with DP-SGD, reserve the round's epsilon
   in the privacy ledger (scope: the search id), refuse when it does not fit;
4. train the round's local steps, commit the epsilon actually spent, reply with the adapter and the
   number of training rows (and the epsilon).

A refused or failed round is answered with a Flower error that carries only a
:class:`~protos.federated.Failure` code and its fixed reason; the detail goes to the site's own log.
The final adapter is loaded, scored on the site's held-out set against the base model, saved with a
local report (both stay at the site), and acknowledged with an empty reply.

``app`` at module level exists because a Flower app bundle must name a ClientApp; it refuses every
message. Sites run :func:`make_client_app` of their own installed autodp through
:mod:`site_agent.federated.node`, never code from the bundle.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from protos.audit import AuditLog
from protos.errors import AutodpError
from protos.federated import (
    ARRAYS,
    CONFIG,
    EPSILON,
    NUM_EXAMPLES,
    AdapterDigest,
    ExchangeKind,
    Failure,
    RoundInfo,
    RoundSettings,
    SettingsRefused,
    adapter_digest,
    exchange_record,
    parse_round_config,
    run_label,
)
from protos.files import write_text_atomic
from protos.views import IDENT_PATTERN
from site_agent.federated.errors import RoundRefused
from site_agent.federated.settings import FederatedTrainingSettings
from site_agent.federated.trainer import LocalTrainer, TrainerOptions
from site_agent.operators.base import Batch
from site_agent.operators.base import batch_size as n_rows
from site_agent.privacy import PrivacyLedger, PrivacySettings, check_cohort

__all__ = ["REPORT_NAME", "SiteSession", "app", "make_client_app"]

log = logging.getLogger("autodp.site.federated")
REPORT_NAME = "federated-report.json"
ADAPTER_NAME = "final-adapter.safetensors"


@dataclass
class RoundLog:
    round: int
    examples: int
    epsilon: float
    global_sha256: str
    update_sha256: str


@dataclass
class SiteSession:
    """What one site holds during one federated run. Handlers are called one message at a time."""

    site_id: str
    coordinator_party: str
    search_id: str  # of the recipe this site applied: the run must be for the same search
    train_batch: Batch
    eval_batch: Batch
    settings: FederatedTrainingSettings
    trainer_options: TrainerOptions
    audit: AuditLog
    output_dir: Path
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    ledger: PrivacyLedger | None = None  # required when trainer_options.dp is set
    trainer: LocalTrainer | None = None
    run_id: str | None = None
    rounds: list[RoundLog] = field(default_factory=list)
    epsilon_spent: float = 0.0
    done: bool = False
    report: dict[str, Any] | None = None

    # ------------------------------------------------------------ helpers

    def _unpack(self, msg: Message) -> tuple[dict[str, np.ndarray], dict[str, Any], AdapterDigest | None, str]:
        """The message's adapter, config and the adapter's digest, and why it is unusable ("" if it is).
        The config is returned whatever happens: the audit record is made from what can be read."""
        content = msg.content
        arrays: dict[str, np.ndarray] = {}
        config: dict[str, Any] = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
        extra = (set(content.array_records) - {ARRAYS}) | (set(content.config_records) - {CONFIG})
        if extra or content.metric_records:
            return {}, config, None, "message carries records this contract does not define"
        try:
            if ARRAYS in content.array_records:
                arrays = {k: a.numpy() for k, a in content.array_records[ARRAYS].items()}
            return arrays, config, adapter_digest(arrays), ""
        except (SettingsRefused, TypeError, ValueError) as e:
            why = str(e) if isinstance(e, SettingsRefused) else "adapter tensors are not plain numpy arrays"
            return {}, config, None, why

    def _loose(self, config: dict[str, Any], final: bool) -> tuple[RoundInfo | None, str, int]:
        """The config as well as it can be read, for the audit record of a message that may be refused."""
        try:
            info = parse_round_config(config, final=final)
            return info, info.search_id, info.round
        except SettingsRefused:
            search = config.get("search-id")
            rnd = config.get("server-round")
            ok_search = isinstance(search, str) and re.fullmatch(IDENT_PATTERN, search) is not None
            return (None, search if ok_search and isinstance(search, str) else "invalid",
                    rnd if type(rnd) is int and 0 <= rnd < 2**32 else 0)

    def _record(self, direction: str, kind: ExchangeKind, run_id: str, search_id: str, rnd: int, *,
                digest: AdapterDigest | None = None, examples: int = 0, epsilon: float = 0.0,
                settings: RoundSettings | None = None, failure: Failure | None = None) -> None:
        rec = exchange_record(kind, run_id=run_id, search_id=search_id, round=rnd, digest=digest,
                              examples=examples, epsilon=epsilon, settings=settings, failure=failure)
        self.audit.record("in" if direction == "in" else "out", self.coordinator_party, rec)

    def _check_run(self, run_id: str, info: RoundInfo | None) -> RoundInfo:
        if info is None:
            raise RoundRefused("the message's config record does not follow the contract")
        if info.search_id != self.search_id:
            raise RoundRefused(f"the run trains for search {info.search_id}; this site applied the recipe of "
                               f"search {self.search_id}")
        if self.run_id is None:
            self.run_id = run_id
        elif run_id != self.run_id:
            raise RoundRefused(f"this site is already in run {self.run_id}")
        if info.rounds > self.settings.max_rounds:
            raise RoundRefused(f"{info.rounds} rounds asked, this site allows {self.settings.max_rounds}")
        return info

    def _check_settings(self, s: RoundSettings) -> None:
        caps = self.settings
        over = [name for name, value, cap in (("local_steps", s.local_steps, caps.max_local_steps),
                                              ("seq_len", s.seq_len, caps.max_seq_len),
                                              ("lora_r", s.lora_r, caps.max_lora_r)) if value > cap]
        if over:
            raise RoundRefused(f"settings above this site's bounds: {', '.join(over)}")
        if self.trainer_options.dp is not None and s.loss_mean != "row":
            raise RoundRefused(f"loss mean '{s.loss_mean}' asked; this site trains with DP-SGD, which clips each "
                               "row's gradient, so it averages the loss per row only")

    def _trainer_for(self, s: RoundSettings) -> LocalTrainer:
        if self.trainer is None:
            log.info("loading the base model and the processed rows (%d training, %d held-out)",
                     n_rows(self.train_batch), n_rows(self.eval_batch))
            self.trainer = LocalTrainer(self.trainer_options, self.train_batch, self.eval_batch, s)
            log.info("base model held-out loss %.4f", self.trainer.base_loss)
        self.trainer.check(s)
        return self.trainer

    def _fail(self, msg: Message, failure: Failure, run_id: str, search_id: str, rnd: int, why: str) -> Message:
        log.warning("round %d of %s not trained: %s", rnd, run_id, why)
        self._record("out", ExchangeKind.FAILURE, run_id, search_id, rnd, failure=failure)
        return Message(Error(code=failure.code, reason=failure.reason), reply_to=msg)

    # ------------------------------------------------------------ training round

    def on_train(self, msg: Message) -> Message:
        run_id = run_label(msg.metadata.run_id)
        arrays, config, digest, unreadable = self._unpack(msg)
        info, search, rnd = self._loose(config, final=False)
        self._record("in", ExchangeKind.GLOBAL_ADAPTER, run_id, search, rnd, digest=digest,
                     settings=info.settings if info else None)
        try:
            if unreadable:
                raise RoundRefused(unreadable)
            info = self._check_run(run_id, info)
            assert info.settings is not None
            return self._train(msg, run_id, info, info.settings, arrays, digest)
        except RoundRefused as e:
            return self._fail(msg, e.failure, run_id, search, rnd, str(e))
        except AutodpError as e:
            return self._fail(msg, Failure.INTERNAL, run_id, search, rnd, str(e))
        except Exception as e:  # a bug or a library failure: the coordinator gets the fixed reason only
            return self._fail(msg, Failure.INTERNAL, run_id, search, rnd, f"unexpected {type(e).__name__}")

    def _train(self, msg: Message, run_id: str, info: RoundInfo, s: RoundSettings, arrays: dict[str, np.ndarray],
               global_digest: AdapterDigest | None) -> Message:
        if any(r.round >= info.round for r in self.rounds):
            raise RoundRefused(f"round {info.round} comes after a round this site already trained")
        self._check_settings(s)
        trainer = self._trainer_for(s)
        trainer.load_adapter(arrays)
        if not check_cohort(trainer.examples, self.privacy.min_cohort):
            raise RoundRefused(f"{trainer.examples} processed rows, below the minimum cohort "
                               f"{self.privacy.min_cohort}", Failure.COHORT)
        task_id = f"{run_id}-r{info.round}"
        planned = trainer.planned_epsilon(s)
        if self.trainer_options.dp is not None:
            assert self.ledger is not None
            decision = self.ledger.reserve(task_id, self.search_id, planned, delta=self.trainer_options.dp.delta)
            if not decision.ok:
                raise RoundRefused(decision.reason or "privacy budget exhausted", Failure.BUDGET)
        try:
            stats = trainer.train_round(s, info.round, run_id)
        except BaseException:
            if self.ledger is not None and self.trainer_options.dp is not None:
                self.ledger.commit(task_id, 0.0)  # nothing left the site
            raise
        epsilon = stats.epsilon if self.trainer_options.dp is not None else 0.0
        if self.ledger is not None and self.trainer_options.dp is not None:
            epsilon = self.ledger.commit(task_id, epsilon).epsilon
        update = trainer.export()
        digest = adapter_digest(update)
        self._record("out", ExchangeKind.ADAPTER_UPDATE, run_id, info.search_id, info.round, digest=digest,
                     examples=trainer.examples, epsilon=epsilon)
        self.epsilon_spent += epsilon
        self.rounds.append(RoundLog(info.round, trainer.examples, epsilon,
                                    global_digest.hex if global_digest else "", digest.hex))
        log.info("round %d/%d trained: %d steps on %d rows, epsilon %.4g", info.round, info.rounds,
                 stats.steps, trainer.examples, epsilon)
        content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}),
                              "metrics": MetricRecord({NUM_EXAMPLES: trainer.examples, EPSILON: float(epsilon)})})
        return Message(content, reply_to=msg)

    # ------------------------------------------------------------ final adapter

    def on_final(self, msg: Message) -> Message:
        run_id = run_label(msg.metadata.run_id)
        arrays, config, digest, unreadable = self._unpack(msg)
        info, search, rnd = self._loose(config, final=True)
        self._record("in", ExchangeKind.FINAL_ADAPTER, run_id, search, rnd, digest=digest)
        self.done = True  # whatever happens next, the run is over for this site
        try:
            if unreadable:
                raise RoundRefused(unreadable)
            info = self._check_run(run_id, info)
            if self.trainer is None or digest is None or not arrays:
                raise RoundRefused("a final adapter arrived, but this site trained no round of this run")
            self.trainer.load_adapter(arrays)
            final_loss = self.trainer.held_out_loss()
            self._save(arrays, digest, run_id, info, final_loss)
        except RoundRefused as e:
            return self._fail(msg, e.failure, run_id, search, rnd, str(e))
        except AutodpError as e:
            return self._fail(msg, Failure.INTERNAL, run_id, search, rnd, str(e))
        except Exception as e:
            return self._fail(msg, Failure.INTERNAL, run_id, search, rnd, f"unexpected {type(e).__name__}")
        self._record("out", ExchangeKind.FINAL_ACK, run_id, info.search_id, info.round)
        return Message(RecordDict(), reply_to=msg)

    def _save(self, arrays: dict[str, np.ndarray], digest: AdapterDigest, run_id: str, info: RoundInfo,
              final_loss: float) -> None:
        from safetensors.numpy import save_file

        assert self.trainer is not None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_file(dict(sorted(arrays.items())), str(self.output_dir / ADAPTER_NAME),
                  metadata={"run_id": run_id, "search_id": info.search_id, "sha256": digest.hex})
        self.report = {
            "site_id": self.site_id, "run_id": run_id, "search_id": info.search_id, "rounds": info.rounds,
            "rounds_trained": len(self.rounds), "examples": self.trainer.examples,
            "held_out_items": len(self.trainer.eval_rows), "base_loss": self.trainer.base_loss,
            "final_loss": final_loss, "improvement": self.trainer.base_loss - final_loss,
            "epsilon_spent": self.epsilon_spent, "dp_sgd": self.trainer_options.dp is not None,
            "final_adapter": ADAPTER_NAME, "final_sha256": digest.hex, "per_round": [asdict(r) for r in self.rounds],
        }
        _write_json(self.output_dir / REPORT_NAME, self.report)
        log.info("final adapter: held-out loss %.4f (base model %.4f)", final_loss, self.trainer.base_loss)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False))


def make_client_app(session: SiteSession) -> ClientApp:
    """The ClientApp that serves ``session``: ``train`` rounds and the final adapter."""
    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return session.on_train(msg)

    @client.query("final_adapter")
    def _final(msg: Message, context: Context) -> Message:
        return session.on_final(msg)

    return client


app = ClientApp()


@app.train()
def _refuse(msg: Message, context: Context) -> Message:
    """Reached only when stock Flower tooling loads this module from an app bundle: autodp sites never do."""
    log.error("refusing a message: autodp's ClientApp runs only inside `python -m site_agent.federated`")
    return Message(Error(code=Failure.REFUSED.code, reason=Failure.REFUSED.reason), reply_to=msg)
