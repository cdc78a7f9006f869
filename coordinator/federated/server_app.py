"""The coordinator's Flower ServerApp for federated LoRA training.

:func:`make_server_app` builds it for one :class:`TrainingJob`: ``rounds`` rounds of
:class:`~coordinator.federated.strategy.AuditedFedAvg` starting from an empty adapter (every site starts
from the same seeded initialisation), then the final averaged adapter to every site (message type
``query.final_adapter``; each acknowledges with an empty reply), all of it audited. It writes, atomically,
into the job's output folder:

- ``adapter_model.safetensors``  the final adapter, PEFT tensor names (float32)
- ``adapter_config.json``        a PEFT LoRA config, so ``PeftModel.from_pretrained(base, folder)`` loads it
- ``federated-training.json``    the run: rounds, per site and round the rows, epsilon and digests

``app`` at module level exists because a Flower app bundle must name a ServerApp; it refuses to run.
The coordinator runs :func:`make_server_app` of its own installed autodp (see
:mod:`coordinator.federated.launch`), never code from a bundle.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from coordinator.federated.errors import FederatedRunError, NoUsableUpdate
from coordinator.federated.strategy import AuditedFedAvg, arrays_of
from protos.audit import AuditLog
from protos.federated import (
    ARRAYS,
    CONFIG,
    FINAL_MESSAGE_TYPE,
    AdapterDigest,
    ExchangeKind,
    RoundSettings,
    adapter_digest,
    exchange_record,
    failure_from_code,
    final_config,
    round_config,
    run_label,
)

__all__ = ["ADAPTER_FILE", "SUMMARY_FILE", "TrainingJob", "app", "make_server_app", "write_outputs"]

log = logging.getLogger("autodp.coordinator.federated")
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
SUMMARY_FILE = "federated-training.json"
LORA_DROPOUT = 0.05  # what the sites train with (site_agent.federated.trainer)


@dataclass(frozen=True)
class TrainingJob:
    search_id: str
    rounds: int
    settings: RoundSettings
    nodes: Mapping[int, str]  # Flower node id -> site id (the nodes whose keys we registered)
    output: Path
    round_timeout_s: float = 3600.0
    connect_timeout_s: float = 600.0


@dataclass
class TrainingResult:
    summary: dict[str, Any] = field(default_factory=dict)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json(doc: Mapping[str, Any]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        p.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    return write


def peft_config(arrays: Mapping[str, np.ndarray], settings: RoundSettings) -> dict[str, Any]:
    """A PEFT LoRA adapter config for these tensors (the module names come from the tensor names)."""
    modules = sorted({name.split(".lora_")[0].rsplit(".", 1)[-1] for name in arrays if ".lora_" in name})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": settings.lora_r, "lora_alpha": settings.lora_alpha,
            "lora_dropout": LORA_DROPOUT, "target_modules": modules, "bias": "none", "inference_mode": True,
            "base_model_name_or_path": None}


def write_outputs(output: Path, arrays: Mapping[str, np.ndarray], digest: AdapterDigest, job: TrainingJob,
                  summary: Mapping[str, Any]) -> None:
    from safetensors.numpy import save_file

    output.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "search_id": job.search_id, "sha256": digest.hex}
    _atomic(output / ADAPTER_FILE, lambda p: save_file(dict(sorted(arrays.items())), str(p), metadata=meta))
    _atomic(output / CONFIG_FILE, _json(peft_config(arrays, job.settings)))
    _atomic(output / SUMMARY_FILE, _json(summary))


def _send_final(grid: Grid, strategy: AuditedFedAvg, job: TrainingJob, final: ArrayRecord,
                digest: AdapterDigest) -> dict[str, str]:
    """The final adapter to every site; returns site -> "acknowledged" or the failure."""
    nodes = strategy.site_nodes(grid)
    values: dict[str, Any] = final_config(job.search_id, job.rounds)
    config = ConfigRecord(values)
    messages = [Message(RecordDict({ARRAYS: final, CONFIG: config}), message_type=FINAL_MESSAGE_TYPE, dst_node_id=n)
                for n in nodes]
    for m in messages:
        strategy.audit.record("out", job.nodes[m.metadata.dst_node_id], exchange_record(
            ExchangeKind.FINAL_ADAPTER, run_id=strategy.run_id, search_id=job.search_id, round=job.rounds,
            digest=digest))
    outcome = {job.nodes[n]: "no_reply" for n in nodes}
    for reply in grid.send_and_receive(messages, timeout=job.round_timeout_s):
        node = strategy.origin(reply, messages)
        if node is None:
            continue
        kind, failure = ExchangeKind.FINAL_ACK, None
        if reply.has_error():
            failure = failure_from_code(reply.error.code)
            if failure is None or reply.metadata.src_node_id != node:  # made up by Flower, not sent by the site
                log.warning("final adapter: no reply from %s (Flower error %d)", job.nodes[node], reply.error.code)
                continue
            kind = ExchangeKind.FAILURE
        strategy.audit.record("in", job.nodes[node], exchange_record(
            kind, run_id=strategy.run_id, search_id=job.search_id, round=job.rounds, failure=failure))
        outcome[job.nodes[node]] = "acknowledged" if failure is None else failure.name.lower()
    return outcome


def run_training(grid: Grid, context: Context, job: TrainingJob, audit: AuditLog) -> dict[str, Any]:
    """The whole run; returns the summary it wrote. Raises FederatedRunError subclasses."""
    run_id = run_label(context.run_id)
    strategy = AuditedFedAvg(audit=audit, run_id=run_id, search_id=job.search_id, settings=job.settings,
                             nodes=job.nodes, connect_timeout_s=job.connect_timeout_s)
    log.info("run %s: %d rounds over %d sites for search %s", run_id, job.rounds, len(job.nodes), job.search_id)
    values: dict[str, Any] = round_config(job.search_id, job.rounds, job.settings)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=job.rounds,
                            timeout=job.round_timeout_s, train_config=ConfigRecord(values))
    final = result.arrays
    if not len(final):
        raise NoUsableUpdate(f"run {run_id}: no site returned a usable adapter update in {job.rounds} rounds")
    arrays = arrays_of(final)
    digest = adapter_digest(arrays)
    acks = _send_final(grid, strategy, job, final, digest)
    summary = {
        "run_id": run_id, "search_id": job.search_id, "rounds": job.rounds, "sites": sorted(job.nodes.values()),
        "settings": job.settings.model_dump(), "adapter": ADAPTER_FILE, "final_sha256": digest.hex,
        "tensors": digest.tensors, "parameters": digest.parameters, "payload_bytes": digest.payload_bytes,
        "final_delivery": acks, "per_round": [asdict(r) for r in strategy.log],
    }
    write_outputs(job.output, arrays, digest, job, summary)
    log.info("run %s done: final adapter %s (%d tensors, %d parameters)", run_id, digest.hex[:16], digest.tensors,
             digest.parameters)
    return summary


def make_server_app(job: TrainingJob, audit: AuditLog, result: TrainingResult) -> ServerApp:
    """The ServerApp that runs ``job``; its summary lands in ``result.summary``."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        result.summary = run_training(grid, context, job, audit)

    return server


app = ServerApp()


@app.main()
def _refuse(grid: Grid, context: Context) -> None:
    """Reached only when stock Flower tooling loads this module from an app bundle: autodp never does."""
    raise FederatedRunError("autodp's federated ServerApp runs only inside `autodp train federated`")
