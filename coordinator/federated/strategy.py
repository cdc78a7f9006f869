"""FedAvg over LoRA adapters, for the registered sites only, with every exchange in the audit log.

Flower's FedAvg samples every node connected to the SuperLink; this one sends each round to exactly the
sites of the job (the nodes whose keys the coordinator registered), waiting for all of them to be
connected. The averaged arrays are the adapter tensors and nothing else (the sites train nothing but the
LoRA matrices), weighted by each site's number of training rows.

Every message is recorded, before it is sent or acted on, as an
:class:`~protos.federated_training_pb2.AdapterExchange` with the site id as peer: the global adapter
(digest, sizes, round settings) going out, each site's update (digest, sizes, rows, epsilon) or its
failure code coming in. A reply that is not a usable adapter (wrong tensor names or shapes, not float32,
not finite, no row count) is recorded as received, then left out of the average.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from coordinator.federated.errors import SitesMissing
from protos.audit import AuditLog
from protos.federated import (
    ARRAYS,
    CONFIG,
    EPSILON,
    METRICS,
    NUM_EXAMPLES,
    AdapterDigest,
    ExchangeKind,
    RoundSettings,
    SettingsRefused,
    adapter_digest,
    adapter_problems,
    exchange_record,
    failure_from_code,
)

__all__ = ["AuditedFedAvg", "RoundLog", "arrays_of"]

log = logging.getLogger("autodp.coordinator.federated")


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


@dataclass
class RoundLog:
    """What one round did, per site (for the run summary)."""

    round: int
    global_sha256: str
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    average_sha256: str = ""


class AuditedFedAvg(FedAvg):
    def __init__(self, *, audit: AuditLog, run_id: str, search_id: str, settings: RoundSettings,
                 nodes: Mapping[int, str], connect_timeout_s: float) -> None:
        n = len(nodes)
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=0,
                         min_available_nodes=n)
        self.audit, self.run_id, self.search_id, self.settings = audit, run_id, search_id, settings
        self.nodes = dict(nodes)
        self.connect_timeout_s = connect_timeout_s
        self.reference: dict[str, tuple[int, ...]] | None = None
        self.log: list[RoundLog] = []
        self._sent: list[Message] = []  # this round's messages (Flower sets their ids when it pushes them)

    # ------------------------------------------------------------ helpers

    def site_nodes(self, grid: Grid) -> list[int]:
        """The job's nodes, once all of them are connected. Raises SitesMissing after the time-out."""
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            online = set(grid.get_node_ids())
            missing = [site for node, site in self.nodes.items() if node not in online]
            if not missing:
                return sorted(self.nodes)
            if time.monotonic() > deadline:
                raise SitesMissing(f"sites not connected after {self.connect_timeout_s:.0f} s: "
                                   f"{', '.join(sorted(missing))}")
            time.sleep(1.0)

    def origin(self, reply: Message, sent: Iterable[Message]) -> int | None:
        """The site node a reply answers: its sender, or (for an error the SuperLink made up on a node's
        behalf, e.g. node unavailable) the node the answered message went to."""
        if reply.metadata.src_node_id in self.nodes:
            return int(reply.metadata.src_node_id)
        by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        node = by_id.get(reply.metadata.reply_to_message_id)
        return node if node in self.nodes else None

    def _record(self, direction: str, node: int, kind: ExchangeKind, rnd: int, **fields: Any) -> None:
        rec = exchange_record(kind, run_id=self.run_id, search_id=self.search_id, round=rnd, **fields)
        self.audit.record("in" if direction == "in" else "out", self.nodes[node], rec)

    # ------------------------------------------------------------ rounds

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.site_nodes(grid)
        config["server-round"] = server_round
        digest = adapter_digest(arrays_of(arrays))
        self.log.append(RoundLog(server_round, digest.hex))
        messages = list(self._construct_messages(RecordDict({ARRAYS: arrays, CONFIG: config}), nodes,
                                                 MessageType.TRAIN))
        for m in messages:
            self._record("out", m.metadata.dst_node_id, ExchangeKind.GLOBAL_ADAPTER, server_round, digest=digest,
                         settings=self.settings)
        self._sent = messages
        log.info("round %d: global adapter %s sent to %d sites", server_round, digest.hex[:16], len(messages))
        return messages

    def _update(self, msg: Message) -> tuple[dict[str, np.ndarray], int, float, AdapterDigest | None, list[str]]:
        """A reply's adapter, rows and epsilon, and what is wrong with it (empty when usable)."""
        content = msg.content
        problems: list[str] = []
        if set(content.array_records) != {ARRAYS} or set(content.metric_records) != {METRICS} \
                or content.config_records:
            problems.append("the reply does not hold exactly an adapter and its metrics")
        arrays = arrays_of(content.array_records[ARRAYS]) if ARRAYS in content.array_records else {}
        metrics: MetricRecord = content.metric_records.get(METRICS, MetricRecord())
        examples, epsilon = metrics.get(NUM_EXAMPLES), metrics.get(EPSILON, 0.0)
        if type(examples) is not int or not 0 < examples < 2**63:
            problems.append("the row count is not a positive whole number")
            examples = 0
        if type(epsilon) not in (int, float) or not math.isfinite(float(epsilon)) or float(epsilon) < 0:  # type: ignore[arg-type]
            problems.append("epsilon is not a finite number >= 0")
            epsilon = 0.0
        try:
            digest: AdapterDigest | None = adapter_digest(arrays)
        except SettingsRefused as e:
            digest = None
            problems.append(str(e))
        if not arrays:
            problems.append("the adapter is empty")
        problems += adapter_problems(arrays, self.reference)
        return arrays, int(examples), float(epsilon), digest, problems  # type: ignore[arg-type]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        entry = self.log[-1]
        usable = []
        for msg in replies:
            found = self.origin(msg, self._sent)
            if found is None:
                log.warning("round %d: a reply that answers none of this round's messages: ignored", server_round)
                continue
            node, site = found, self.nodes[found]
            if msg.has_error():
                failure = failure_from_code(msg.error.code)
                if failure is None or msg.metadata.src_node_id != node:  # made up by Flower, not sent by the site
                    log.warning("round %d: no reply from %s (Flower error %d)", server_round, site, msg.error.code)
                    entry.sites[site] = {"failure": "no_reply", "flower_error": int(msg.error.code)}
                    continue
                self._record("in", node, ExchangeKind.FAILURE, server_round, failure=failure)
                entry.sites[site] = {"failure": failure.name.lower()}
                log.warning("round %d: %s did not train (%s)", server_round, site, failure.name.lower())
                continue
            arrays, examples, epsilon, digest, problems = self._update(msg)
            self._record("in", node, ExchangeKind.ADAPTER_UPDATE, server_round, digest=digest, examples=examples,
                         epsilon=epsilon)
            entry.sites[site] = {"examples": examples, "epsilon": epsilon, "sha256": digest.hex if digest else ""}
            if problems:
                log.warning("round %d: update of %s left out: %s", server_round, site, "; ".join(problems))
                entry.sites[site]["left_out"] = "; ".join(problems)
                continue
            if self.reference is None:  # the first usable update fixes the adapter's shape for the run
                self.reference = {k: tuple(a.shape) for k, a in arrays.items()}
            usable.append(msg)
        if not usable:
            return None, None
        averaged, metrics = super().aggregate_train(server_round, usable)
        if averaged is not None:
            entry.average_sha256 = adapter_digest(arrays_of(averaged)).hex
            log.info("round %d: averaged %d updates -> %s", server_round, len(usable), entry.average_sha256[:16])
        return averaged, metrics
