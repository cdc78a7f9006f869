"""The contract of federated LoRA training (``autodp train federated``), shared by the coordinator's
ServerApp and the sites' ClientApp.

After a search, each site applies the winning recipe to its full data and trains a LoRA adapter on it;
Flower's FedAvg averages the adapters across sites, round after round. What travels:

- coordinator -> site, every round: the averaged adapter (``arrays``; empty in round 1, when every site
  starts from the same seeded initialisation) and a ``config`` record (:func:`round_config`): the search
  id, the number of rounds, the round and the :class:`RoundSettings`;
- site -> coordinator: its adapter after local training (``arrays``) and a ``metrics`` record with the
  number of training rows (the FedAvg weight) and the DP-SGD epsilon of the round (0 without DP-SGD);
  or, when it did not train, a Flower error whose code and reason say only a :class:`Failure`;
- coordinator -> site, once at the end: the final averaged adapter (message type
  :data:`FINAL_MESSAGE_TYPE`), which the site acknowledges with an empty reply.

Both sides append one :class:`~protos.federated_training_pb2.AdapterExchange` per message to their audit
logs (:func:`exchange_record`): identifiers, numbers and the SHA-256 of the adapter (:func:`adapter_digest`),
never the tensors. Built from the same message on both sides, the two records are identical, so
``autodp audit cross-check`` matches a site's log against the coordinator's.

Errors (one line, no data): :class:`FederatedError` (an :class:`~protos.errors.AutodpError`) and its
subclass :class:`SettingsRefused` (a message that does not follow this contract).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from protos.config import StrictModel, first_error
from protos.errors import AutodpError
from protos.views import IDENT_PATTERN

# The generated module is loaded by name: it is generated code (protoc, no stub file) and stays outside
# the typed surface; everything here hands out typed values.
pb: Any = importlib.import_module("protos.federated_training_pb2")

__all__ = [
    "APP_ID",
    "APP_NAME",
    "APP_PUBLISHER",
    "APP_VERSION",
    "ARRAYS",
    "CLIENTAPP_REF",
    "CONFIG",
    "EPSILON",
    "FAILURE_CODE_BASE",
    "FINAL_MESSAGE_TYPE",
    "METRICS",
    "NUM_EXAMPLES",
    "SERVERAPP_REF",
    "AdapterDigest",
    "ExchangeKind",
    "Failure",
    "FederatedError",
    "LossMean",
    "RoundInfo",
    "RoundSettings",
    "SettingsRefused",
    "adapter_digest",
    "adapter_problems",
    "describe_exchange",
    "exchange_record",
    "failure_from_code",
    "final_config",
    "parse_round_config",
    "round_config",
    "run_label",
]

# The Flower app: its FAB holds a pyproject.toml only. Sites never load code from it (see
# site_agent.federated.node): they run the ClientApp of their own installed autodp.
APP_PUBLISHER = "autodp"
APP_NAME = "federated-lora"
APP_ID = f"{APP_PUBLISHER}/{APP_NAME}"
APP_VERSION = "1.0.0"
SERVERAPP_REF = "coordinator.federated.server_app:app"
CLIENTAPP_REF = "site_agent.federated.client_app:app"
FINAL_MESSAGE_TYPE = "query.final_adapter"

# record keys of a message, config keys and metric keys
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
_SEARCH, _ROUND, _ROUNDS = "search-id", "server-round", "num-rounds"
_LOSS_MEAN = "loss-mean"  # optional in a config record: absent means row (what coordinators before it sent)
NUM_EXAMPLES, EPSILON = "num-examples", "epsilon"
_MAX_ROUNDS = 1000
# Flower error codes 0-8 are Flower's own; a site's failure is FAILURE_CODE_BASE + the Failure value.
FAILURE_CODE_BASE = 900
_DIGEST_DOMAIN = b"autodp-lora-adapter-v1\n"


class FederatedError(AutodpError):
    """The federated training phase cannot start or go on (a process, a port, a key, a run)."""


class SettingsRefused(FederatedError):
    """A message does not follow this contract, or asks for settings outside the allowed bounds."""


class ExchangeKind(IntEnum):
    """The ``ExchangeKind`` enum of federated_training.proto (same numbers)."""

    GLOBAL_ADAPTER = 1
    ADAPTER_UPDATE = 2
    FINAL_ADAPTER = 3
    FINAL_ACK = 4
    FAILURE = 5


class Failure(IntEnum):
    """Why a site did not train a round: the only thing that leaves it then (the ``Failure`` enum of
    federated_training.proto, same numbers)."""

    REFUSED = 1
    BUDGET = 2
    COHORT = 3
    INTERNAL = 4

    @property
    def code(self) -> int:
        return FAILURE_CODE_BASE + int(self.value)

    @property
    def reason(self) -> str:
        """The fixed text sent as the Flower error reason (no detail: that stays in the site's log)."""
        return _REASONS[self]


_REASONS = {
    Failure.REFUSED: "refused by the site: settings, search or adapter shape not accepted",
    Failure.BUDGET: "refused by the site: privacy budget exhausted",
    Failure.COHORT: "refused by the site: processed data below its minimum cohort",
    Failure.INTERNAL: "training failed at the site",
}


def failure_from_code(code: int) -> Failure | None:
    """The site failure an error code stands for; None for Flower's own codes (not sent by a site)."""
    try:
        return Failure(code - FAILURE_CODE_BASE)
    except ValueError:
        return None


def run_label(flower_run_id: int) -> str:
    """The run identifier both logs use: ``flwr-<Flower run id>``."""
    return f"flwr-{int(flower_run_id)}"


# ---------------------------------------------------------------- settings

class LossMean(IntEnum):
    """The ``LossMean`` enum of federated_training.proto (same numbers): how a local step averages its loss."""

    ROW = 0
    TOKEN = 1

    @property
    def label(self) -> Literal["row", "token"]:
        """The name the site's training loop and the command line use."""
        return "token" if self is LossMean.TOKEN else "row"


class RoundSettings(StrictModel):
    """What the coordinator asks every site to train with, each round (the site checks its own caps).

    LoRA targets every linear layer of the base model (``all-linear``), with dropout 0.05, AdamW at a
    constant learning rate; ``seed`` initialises the adapter (the same at every site) and, plus the
    round number, orders the batches. ``loss_mean``: "row" (each row's mean answer-token loss weighs the
    same) or "token" (the mean over the batch's answer tokens); a site with DP-SGD refuses "token".

    In a config record ``loss_mean`` travels as its :class:`LossMean` number under ``loss-mean``, and only
    when it is "token": a record without the key means "row", so coordinators and sites from before the
    setting still train together as long as no one asks for token averaging.
    """

    local_steps: int = Field(default=20, ge=1, le=10_000, description="optimizer steps per site per round")
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    lora_r: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1, le=4096)
    seq_len: int = Field(default=128, ge=8, le=8192)
    batch_size: int = Field(default=8, ge=1, le=1024)
    seed: int = Field(default=0, ge=0, lt=2**31)
    loss_mean: Literal["row", "token"] = "row"

    @property
    def loss_mean_enum(self) -> LossMean:
        return LossMean.TOKEN if self.loss_mean == "token" else LossMean.ROW

    def _numbers(self) -> dict[str, int | float]:
        return {k: v for k, v in self.model_dump().items() if k != "loss_mean"}

    def to_config(self) -> dict[str, int | float]:
        out = {name.replace("_", "-"): value for name, value in self._numbers().items()}
        if self.loss_mean_enum is not LossMean.ROW:
            out[_LOSS_MEAN] = int(self.loss_mean_enum)
        return out

    def to_pb(self) -> Any:
        return pb.RoundSettings(**self._numbers(), loss_mean=int(self.loss_mean_enum))


# the numeric settings: every one must be in a round's config record
_SETTING_KEYS = frozenset(name.replace("_", "-") for name in RoundSettings.model_fields if name != "loss_mean")


@dataclass(frozen=True)
class RoundInfo:
    """A round's config record, checked: which search, which round of how many, and the settings
    (None for the final adapter, which carries no training settings)."""

    search_id: str
    round: int
    rounds: int
    settings: RoundSettings | None


def round_config(search_id: str, rounds: int, settings: RoundSettings) -> dict[str, int | float | str]:
    """The config record of a training round, without ``server-round`` (FedAvg adds it)."""
    return {_SEARCH: search_id, _ROUNDS: rounds, **settings.to_config()}


def final_config(search_id: str, rounds: int) -> dict[str, int | float | str]:
    return {_SEARCH: search_id, _ROUNDS: rounds, _ROUND: rounds}


def _int(config: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = config.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise SettingsRefused(f"config '{key}' must be a whole number from {lo} to {hi}")
    return value


def parse_round_config(config: Mapping[str, Any], *, final: bool = False) -> RoundInfo:
    """Check a config record as received (known keys only, typed, bounded). Raises SettingsRefused."""
    expected = {_SEARCH, _ROUNDS, _ROUND} | (set() if final else set(_SETTING_KEYS))
    optional = set() if final else {_LOSS_MEAN}
    if set(config) - optional != expected:
        unknown, missing = len(set(config) - expected - optional), len(expected - set(config))
        raise SettingsRefused(f"config record has {unknown} unknown and {missing} missing keys")
    search = config[_SEARCH]
    if not isinstance(search, str) or not re.fullmatch(IDENT_PATTERN, search):
        raise SettingsRefused(f"config '{_SEARCH}' must be an identifier")
    rounds = _int(config, _ROUNDS, 1, _MAX_ROUNDS)
    rnd = _int(config, _ROUND, 1, rounds)
    if final:
        if rnd != rounds:
            raise SettingsRefused("the final adapter must carry the last round's number")
        return RoundInfo(search, rnd, rounds, None)
    values: dict[str, Any] = {k.replace("-", "_"): config[k] for k in _SETTING_KEYS}
    if any(type(v) not in (int, float) for v in values.values()):
        raise SettingsRefused("training settings must be numbers")
    if _LOSS_MEAN in config:
        code = config[_LOSS_MEAN]
        if type(code) is not int or code not in set(LossMean):
            choices = " or ".join(f"{int(m)} ({m.label})" for m in LossMean)
            raise SettingsRefused(f"config '{_LOSS_MEAN}' must be {choices}")
        values["loss_mean"] = LossMean(code).label
    try:
        settings = RoundSettings.model_validate(values)  # a float where an int belongs must be whole
    except ValidationError as e:
        loc, why, _ = first_error(e)
        key = str(loc[0]).replace("_", "-") if loc else "settings"
        raise SettingsRefused(f"config '{key}': {why}") from None
    return RoundInfo(search, rnd, rounds, settings)


# ---------------------------------------------------------------- adapters

@dataclass(frozen=True)
class AdapterDigest:
    """SHA-256 and sizes of an adapter (a name -> float32 tensor mapping)."""

    sha256: bytes
    tensors: int
    parameters: int
    payload_bytes: int

    @property
    def hex(self) -> str:
        return self.sha256.hex()


def adapter_digest(arrays: Mapping[str, np.ndarray]) -> AdapterDigest:
    """SHA-256 over the tensors in name order: for each, ``name NUL dtype NUL shape LF`` then its bytes
    (C order, little-endian float32). Independent of the order the mapping holds them in."""
    h = hashlib.sha256(_DIGEST_DOMAIN)
    parameters = payload = 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if a.dtype != np.dtype("<f4"):
            raise SettingsRefused(f"adapter tensors must be float32; one is {a.dtype.name}")
        h.update(f"{name}\0{a.dtype.str}\0{','.join(str(d) for d in a.shape)}\n".encode())
        data = a.tobytes()
        h.update(data)
        parameters += a.size
        payload += len(data)
    return AdapterDigest(h.digest(), len(arrays), parameters, payload)


def adapter_problems(arrays: Mapping[str, np.ndarray],
                     reference: Mapping[str, tuple[int, ...]] | None) -> list[str]:
    """Why ``arrays`` is not a usable adapter (empty when it is): float32, finite, and, given a
    reference, exactly its tensor names and shapes. Messages carry counts only."""
    problems = []
    if reference is not None:
        missing = len(set(reference) - set(arrays))
        extra = len(set(arrays) - set(reference))
        if missing or extra:
            problems.append(f"adapter has {extra} unexpected and {missing} missing tensors")
        wrong = sum(1 for k, a in arrays.items() if k in reference and tuple(a.shape) != tuple(reference[k]))
        if wrong:
            problems.append(f"{wrong} adapter tensors have the wrong shape")
    if any(a.dtype != np.dtype("<f4") for a in arrays.values()):
        problems.append("adapter tensors must be float32")
    elif not all(bool(np.isfinite(a).all()) for a in arrays.values()):
        problems.append("adapter tensors hold values that are not finite")
    return problems


# ---------------------------------------------------------------- audit records

def exchange_record(kind: ExchangeKind, *, run_id: str, search_id: str, round: int,
                    digest: AdapterDigest | None = None, examples: int = 0, epsilon: float = 0.0,
                    settings: RoundSettings | None = None, failure: Failure | None = None) -> Any:
    """The audit record of one exchange. Both sides build it from the same message and get the same bytes."""
    if not math.isfinite(epsilon) or epsilon < 0:
        raise SettingsRefused("epsilon must be a finite number >= 0")
    msg = pb.AdapterExchange(run_id=run_id, search_id=search_id, round=round, kind=int(kind),
                             examples=examples, epsilon=epsilon)
    if digest is not None:
        msg.adapter_sha256 = digest.sha256
        msg.tensors, msg.parameters, msg.payload_bytes = digest.tensors, digest.parameters, digest.payload_bytes
    if settings is not None:
        msg.settings.CopyFrom(settings.to_pb())
    if failure is not None:
        msg.failure = int(failure)
    return msg


def describe_exchange(msg: Any) -> str:
    """One record in plain words (for ``autodp audit show``)."""
    where = f"run {msg.run_id}, search {msg.search_id}, round {msg.round}"
    sizes = (f"{msg.tensors} tensors, {msg.parameters} parameters ({msg.payload_bytes} bytes), "
             f"sha256 {msg.adapter_sha256.hex()[:16]}")
    kind = ExchangeKind(msg.kind) if msg.kind in set(ExchangeKind) else None
    if kind is ExchangeKind.GLOBAL_ADAPTER:
        s = msg.settings
        loss = LossMean(s.loss_mean).label if s.loss_mean in set(LossMean) else "unknown"
        return (f"Global LoRA adapter ({where}): {sizes}; train {s.local_steps} steps, lr {s.lr:g}, "
                f"r {s.lora_r}, alpha {s.lora_alpha}, seq {s.seq_len}, batch {s.batch_size}, seed {s.seed}, "
                f"loss mean per {loss}")
    if kind is ExchangeKind.ADAPTER_UPDATE:
        return f"LoRA adapter update ({where}): {sizes}; {msg.examples} training rows, DP-SGD epsilon {msg.epsilon:g}"
    if kind is ExchangeKind.FINAL_ADAPTER:
        return f"Final averaged LoRA adapter ({where}): {sizes}"
    if kind is ExchangeKind.FINAL_ACK:
        return f"Final adapter acknowledged ({where}; empty reply)"
    if kind is ExchangeKind.FAILURE:
        name = Failure(msg.failure).name.lower() if msg.failure in set(Failure) else "unknown"
        return f"No update this round ({where}): {name}"
    return f"Adapter exchange of unknown kind ({where})"
