"""The site agent: dial out, say hello, long-poll for tasks, check each against local policy, run it, release
only a score.

One task's path: receive -> parse (a malformed task is rejected with a typed status) -> already answered?
(answer the same again, run nothing) -> policy check (rejected: nothing runs) -> run the strategy ->
(budget reserved in the privacy ledger, or refused) -> DPS sample -> PTS targets -> longest cached prefix ->
remaining operators -> merge -> minimum cohort -> evaluate against the same sample unprocessed -> debit ->
clip/noise/quantize -> store (fsync) -> send.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protos import federation_pb2 as pb
from protos.audit import AuditLog, load_signing_key
from protos.errors import AutodpError, MalformedMessage
from protos.serde import UnexpectedField, from_pb
from protos.views import (
    IDENT_PATTERN,
    EvaluatorKind,
    Heartbeat,
    Hello,
    OperatorSpec,
    ResultReport,
    Strategy,
    Task,
    TaskStatus,
    coarse_ms,
    permille,
    size_bucket_for,
)
from site_agent import __version__
from site_agent.client import Backoff, CoordinatorClient, CoordinatorRefused, CoordinatorUnavailable
from site_agent.config import SiteConfig
from site_agent.evaluation.base import Evaluator, create_evaluator
from site_agent.operators.registry import registered_operators
from site_agent.pipeline import ExecutionResult, execute
from site_agent.policy import Policy, apply_policy_defaults, check_task, load_policy, published_catalog
from site_agent.privacy import PrivacyLedger, PrivacySettings, check_cohort, planned_epsilon
from site_agent.resources import SiteResources, prepare
from site_agent.results import ResultStore

__all__ = ["SiteAgent", "TaskRunner", "evaluator_options", "site_catalog"]

log = logging.getLogger("autodp.site")
_IDENT = re.compile(IDENT_PATTERN)


def evaluator_options(cfg: SiteConfig) -> dict[str, dict[str, Any]]:
    """Per evaluator kind, its options: the config's, plus the LoRA evaluator's site-local cache (baselines,
    the DP noise secret) and the DP-SGD settings of the privacy section."""
    options = {kind: dict(opts) for kind, opts in cfg.evaluator_options.items()}
    lora = options.setdefault(EvaluatorKind.LORA.value, {})
    lora.setdefault("cache_dir", cfg.cache.dir / "lora")
    if cfg.privacy.dp_sgd is not None:
        lora.setdefault("dp", cfg.privacy.dp_sgd.model_dump(exclude_none=True))
    return options


def site_catalog(policy: Policy, provides: frozenset[str]) -> tuple[OperatorSpec, ...]:
    """What the site publishes: allowed by policy, and runnable here (an LLM operator needs a local LLM)."""
    ops = registered_operators()
    return tuple(s for s in published_catalog(policy) if ops[s.name].requires <= provides)


@dataclass
class TaskRunner:
    """Turns a raw task message into the one result this site will ever give for it."""

    site_id: str
    policy: Policy
    resources: SiteResources
    results: ResultStore
    ledger: PrivacyLedger
    privacy: PrivacySettings
    evaluator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: int = 0  # strategies actually run (tests assert rejections leave this at 0)
    # the quality proxy keeps no state but its memo of checked rows, which every later task of a search reuses
    _proxy: Evaluator | None = field(default=None, init=False, repr=False)

    def handle(self, raw: pb.Task) -> ResultReport | None:
        if not _IDENT.fullmatch(raw.task_id):  # fullmatch: '$' alone lets a trailing newline through
            log.warning("task with an invalid id ignored")  # cannot even be answered
            return None
        previous = self.results.get(raw.task_id)
        if previous is not None:
            log.info("task %s seen before: same answer, nothing run", raw.task_id)
            self.results.resend(raw.task_id)  # asked again, answered again: the first answer may be lost
            return previous
        return self.results.put(self._answer(raw))

    def _reject(self, task_id: str, status: TaskStatus, why: str, scope: str | None = None) -> ResultReport:
        log.warning("task %s rejected: %s (%s)", task_id, status.value, why)
        remaining = self.ledger.remaining(scope) if scope is not None else 0.0
        return ResultReport(task_id=task_id, site_id=self.site_id, status=status, epsilon_remaining=remaining)

    def _evaluator(self, kind: EvaluatorKind) -> Evaluator:
        options = dict(self.evaluator_options.get(kind.value, {}))
        if kind is EvaluatorKind.QUALITY_PROXY:
            if self._proxy is None:
                self._proxy = create_evaluator(kind, **options)
            return self._proxy
        if kind is EvaluatorKind.LORA:
            options.setdefault("eval_batch", self.resources.eval_data)
        return create_evaluator(kind, **options)

    def _answer(self, raw: pb.Task) -> ResultReport:
        try:
            task: Task = from_pb(raw)
        except UnexpectedField as e:
            return self._reject(raw.task_id, TaskStatus.REJECTED_UNEXPECTED_FIELD, str(e))
        except MalformedMessage as e:
            return self._reject(raw.task_id, TaskStatus.REJECTED_MALFORMED, str(e))
        task = task.model_copy(update={"strategy": apply_policy_defaults(task.strategy, self.policy)})
        scope = task.search_id
        problems = check_task(task, self.policy)
        if problems:
            return self._reject(task.task_id, problems[0].status, "; ".join(p.reason for p in problems), scope)
        try:
            evaluator = self._evaluator(task.settings.evaluator)
            planned = planned_epsilon(self.privacy, uses_dp_sgd=self._uses_dp(task))
            if self._uses_dp(task) and self.privacy.dp_sgd is not None and self.privacy.dp_sgd.target_epsilon:
                # the baseline may have to be trained (under DP-SGD too) in this same task: reserve for both
                planned += self.privacy.dp_sgd.target_epsilon
        except AutodpError as e:  # an evaluator this site does not have, or cannot budget
            return self._reject(task.task_id, TaskStatus.REJECTED_SETTINGS, str(e), scope)
        decision = self.ledger.reserve(task.task_id, scope, planned)
        if not decision.ok:  # refused before any work
            return self._reject(task.task_id, TaskStatus.REJECTED_BUDGET, decision.reason or "budget", scope)
        return self._run(task, evaluator)

    def _uses_dp(self, task: Task) -> bool:
        return self.privacy.dp_sgd is not None and task.settings.evaluator is EvaluatorKind.LORA

    def _execute(self, task: Task, strategy: Strategy) -> ExecutionResult:
        r = self.resources
        return execute(r.data, strategy, task.settings, context=r.context(task.settings.seed), embedder=r.embedder,
                       screener=r.screener, cache=r.prefix_cache if task.settings.use_cache else None,
                       embedding_cache=r.embedding_cache, memo=r.selection_memo)

    def _run(self, task: Task, evaluator: Evaluator) -> ResultReport:
        status = TaskStatus.FAILED_INTERNAL
        try:
            self.executed += 1
            t0 = time.monotonic()
            result = self._execute(task, task.strategy)
            # the baseline is the same sample, unprocessed: same rows, same size budget
            raw = result.batch if not task.strategy.calls else self._execute(task, Strategy()).batch
            t1 = time.monotonic()
            if not check_cohort(result.n_output, self.privacy.min_cohort):
                self.ledger.commit(task.task_id, 0.0)
                return self._reject(task.task_id, TaskStatus.REJECTED_COHORT,
                                    f"{result.n_output} rows < minimum {self.privacy.min_cohort}", task.search_id)
            outcome = evaluator.evaluate(result.batch, raw, task.settings)
            t2 = time.monotonic()
            release_eps = self.privacy.release_epsilon if self.privacy.mechanism != "none" else 0.0
            # a baseline trained with DP-SGD in this call is charged once, here; a cached one costs nothing
            spent = outcome.epsilon + outcome.details.get("baseline_epsilon", 0.0) + release_eps
            state = self.ledger.commit(task.task_id, spent)
            score = self.ledger.release(task.task_id, outcome.score)
        except AutodpError as e:
            status = getattr(e, "status", None) or TaskStatus.FAILED_INTERNAL
            log.error("task %s failed: %s", task.task_id, type(e).__name__)
        except Exception as e:  # never a dead site; the type is enough locally, nothing leaves but the status
            log.error("task %s failed: %s", task.task_id, type(e).__name__)
        else:
            log.info("task %s done: %d steps, %d cache hits, score %.4f", task.task_id, len(result.steps),
                     result.cache_hits, score)
            return ResultReport(
                task_id=task.task_id, site_id=self.site_id, status=TaskStatus.OK, score=score,
                epsilon_spent=state.epsilon, epsilon_remaining=state.remaining,
                eval_ms=coarse_ms(t2 - t1), processing_ms=coarse_ms(t1 - t0), cache_hits=result.steps_reused,
                operators_run=result.operators_run, cache_saved_ms=coarse_ms(result.seconds_saved),
                sampled_permille=permille(result.n_sampled, result.n_input),
                targets_permille=permille(result.n_targets, result.n_sampled))
        held = self.ledger.state(task.task_id)
        if held is not None and not held.committed:
            self.ledger.commit(task.task_id, 0.0)  # nothing was released: nothing spent
        return ResultReport(task_id=task.task_id, site_id=self.site_id, status=status,
                            epsilon_remaining=self.ledger.remaining(task.search_id))


class SiteAgent:
    def __init__(self, cfg: SiteConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.policy = load_policy(cfg.policy)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.resources = prepare(cfg)
        self.audit = AuditLog.open(cfg.state_dir / "audit.log", load_signing_key(cfg.audit_key), "site",
                                   cfg.site_id)
        self.results = ResultStore(cfg.state_dir / "results.db")
        self.ledger = PrivacyLedger(cfg.state_dir / "privacy.db", cfg.privacy)
        self.runner = TaskRunner(cfg.site_id, self.policy, self.resources, self.results, self.ledger, cfg.privacy,
                                 evaluator_options(cfg))
        self.hello_msg = Hello(site_id=cfg.site_id, software_version=__version__,
                               catalog=site_catalog(self.policy, self.resources.context(0).provides()),
                               size_bucket=size_bucket_for(len(self.resources.data["instruction"])))
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
                log.info("%s; retrying in %.1f s (attempt %d, backoff cap %.1f s)", e, delay, backoff.attempt,
                         backoff.cap_s)
                self.stop.wait(delay)
        return self.tasks_done

    def close(self) -> None:
        self.client.close()
        self.results.close()
        self.ledger.close()
        self.resources.close()
        self.audit.close()
