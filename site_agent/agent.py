"""The site agent: dial out, say hello, long-poll for tasks, check each against local policy, run it, release
only a score.

One task's path: receive -> parse (a malformed task is rejected with a typed status) -> already answered?
(answer the same again, run nothing) -> policy check (rejected: nothing runs) -> run the strategy ->
evaluate -> quantize -> store (fsync) -> send. The privacy ledger, DPS/PTS and the cache plug in here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos import federation_pb2 as pb
from protos.audit import AuditLog, load_signing_key
from protos.errors import MalformedMessage
from protos.serde import UnexpectedField, from_pb
from protos.views import (
    IDENT_PATTERN,
    Heartbeat,
    Hello,
    ResultReport,
    Task,
    TaskStatus,
    size_bucket_for,
)
from site_agent import __version__
from site_agent.client import Backoff, CoordinatorClient, CoordinatorRefused, CoordinatorUnavailable
from site_agent.config import SiteConfig
from site_agent.data.loading import load_pairs
from site_agent.evaluation.base import create_evaluator
from site_agent.executor import run_strategy
from site_agent.operators.base import Batch
from site_agent.policy import Policy, apply_policy_defaults, check_task, load_policy, published_catalog
from site_agent.release import quantize
from site_agent.results import ResultStore

__all__ = ["SiteAgent", "TaskRunner"]

log = logging.getLogger("autodp.site")
_IDENT = re.compile(IDENT_PATTERN)


@dataclass
class TaskRunner:
    """Turns a raw task message into the one result this site will ever give for it."""

    site_id: str
    policy: Policy
    data: Batch
    results: ResultStore
    score_grid: float
    executed: int = 0  # strategies actually run (tests assert rejections leave this at 0)

    def handle(self, raw: pb.Task) -> ResultReport | None:
        if not _IDENT.match(raw.task_id):
            log.warning("task with an invalid id ignored")  # cannot even be answered
            return None
        previous = self.results.get(raw.task_id)
        if previous is not None:
            log.info("task %s seen before: same answer, nothing run", raw.task_id)
            return previous
        return self.results.put(self._answer(raw))

    def _reject(self, task_id: str, status: TaskStatus, why: str) -> ResultReport:
        log.warning("task %s rejected: %s (%s)", task_id, status.value, why)
        return ResultReport(task_id=task_id, site_id=self.site_id, status=status)

    def _answer(self, raw: pb.Task) -> ResultReport:
        try:
            task: Task = from_pb(raw)
        except UnexpectedField as e:
            return self._reject(raw.task_id, TaskStatus.REJECTED_UNEXPECTED_FIELD, str(e))
        except MalformedMessage as e:
            return self._reject(raw.task_id, TaskStatus.REJECTED_MALFORMED, str(e))
        task = task.model_copy(update={"strategy": apply_policy_defaults(task.strategy, self.policy)})
        problems = check_task(task, self.policy)
        if problems:
            return self._reject(task.task_id, problems[0].status, "; ".join(p.reason for p in problems))
        try:
            evaluator = create_evaluator(task.settings.evaluator)
        except Exception:  # an evaluator this site does not have
            return self._reject(task.task_id, TaskStatus.REJECTED_SETTINGS, "evaluator not available here")
        try:
            t0 = time.monotonic()
            self.executed += 1
            processed, stats = run_strategy(self.data, task.strategy)
            t1 = time.monotonic()
            outcome = evaluator.evaluate(processed, self.data, task.settings)
            t2 = time.monotonic()
        except Exception as e:  # never a dead site; the type is enough locally, nothing leaves but the status
            log.error("task %s failed: %s", task.task_id, type(e).__name__)
            return ResultReport(task_id=task.task_id, site_id=self.site_id, status=TaskStatus.FAILED_INTERNAL)
        log.info("task %s done: %d steps, score %.4f", task.task_id, len(stats), outcome.score)
        return ResultReport(
            task_id=task.task_id, site_id=self.site_id, status=TaskStatus.OK,
            score=quantize(outcome.score, self.score_grid),
            eval_seconds=round(t2 - t1), processing_seconds=round(t1 - t0), operators_run=len(stats))


class SiteAgent:
    def __init__(self, cfg: SiteConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.policy = load_policy(cfg.policy)
        data = load_pairs(cfg.data.path, cfg.data.instruction_field, cfg.data.answer_field)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog.open(cfg.state_dir / "audit.log", load_signing_key(cfg.audit_key), "site",
                                   cfg.site_id)
        self.results = ResultStore(cfg.state_dir / "results.db")
        self.runner = TaskRunner(cfg.site_id, self.policy, data, self.results, cfg.score_grid)
        self.hello_msg = Hello(site_id=cfg.site_id, software_version=__version__,
                               catalog=published_catalog(self.policy),
                               size_bucket=size_bucket_for(len(data["instruction"])))
        self.client = CoordinatorClient(cfg, self.audit)
        self.tasks_done = 0

    def _send_outbox(self) -> None:
        for report in self.results.unacked():
            ack = self.client.report(report)
            if not ack.accepted:
                log.warning("coordinator did not accept the result of task %s", report.task_id)
            self.results.mark_acked(report.task_id)

    def run(self, max_tasks: int | None = None, on_idle: Callable[[], bool] | None = None) -> int:
        """Serve until stopped (or ``max_tasks`` answered). Returns tasks answered. Raises CoordinatorRefused
        when the coordinator refuses this site (retrying would not help)."""
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        greeted, next_heartbeat, interval = False, 0.0, 5.0
        while not self.stop.is_set() and (max_tasks is None or self.tasks_done < max_tasks):
            try:
                if not greeted:
                    reply = self.client.hello(self.hello_msg)
                    if not reply.accepted:
                        raise CoordinatorRefused("coordinator did not accept our hello (protocol version?)")
                    greeted, interval = True, reply.heartbeat_interval_ms / 1000.0
                    log.info("connected to %s as %s", self.cfg.coordinator, self.cfg.site_id)
                self._send_outbox()
                if time.monotonic() >= next_heartbeat:
                    if not self.client.heartbeat(Heartbeat(site_id=self.cfg.site_id,
                                                           tasks_done=self.tasks_done)).known:
                        greeted = False
                        continue
                    next_heartbeat = time.monotonic() + interval
                raw = self.client.poll(self.cfg.poll_wait_ms)
                backoff.reset()
                if raw is None:
                    if on_idle is not None and on_idle():
                        break
                    continue
                report = self.runner.handle(raw)
                if report is not None:
                    self._send_outbox()
                    self.tasks_done += 1
            except CoordinatorUnavailable as e:
                greeted = False
                delay = backoff.next()
                log.info("%s; retrying in %.1f s", e, delay)
                self.stop.wait(delay)
        return self.tasks_done

    def close(self) -> None:
        self.client.close()
        self.results.close()
        self.audit.close()
