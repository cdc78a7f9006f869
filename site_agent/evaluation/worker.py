"""Isolated LoRA runs: ``python -m site_agent.evaluation.worker JOB_DIR``, one fresh process per evaluation.

Training a model in the site agent's own process would keep its memory (allocator caches, imported
libraries) and let a native crash or an out-of-memory kill take the site down. The parent instead writes
the job and the rows to a private temporary directory (mode 0700), starts the worker in its own session
(process group), waits at most ``timeout_s``, reads ``result.json`` and removes the directory:

- time-out: the whole process group is killed (SIGKILL) -> :class:`WorkerTimeout` (FAILED_TIMEOUT);
- death by a signal, or an exit without a result file -> :class:`WorkerCrashed` (FAILED_WORKER_CRASH);
- an error raised in the worker comes back as its class name only and is raised again in the parent
  (a guard failure as :class:`TrainingIntegrityError`, anything else as :class:`EvaluationFailed`).

The group is killed after every run, so no child of the worker outlives it. If the site agent itself dies
(``kill -9``, an out-of-memory kill), nobody would read the result: the worker notices its parent is gone
(it checks every 0.2 s), removes the job directory (the rows) and kills its own group. The worker's stdout and
stderr are discarded: library messages could quote rows. ``AUTODP_EVAL_WORKER_FAULT`` (``crash`` or
``hang``) makes the worker fail on purpose, for tests and operator drills.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from site_agent.errors import EvaluationError
from site_agent.evaluation.errors import EvaluationFailed, TrainingIntegrityError, WorkerCrashed, WorkerTimeout
from site_agent.operators.base import Batch

__all__ = ["FAULT_ENV", "PARENT_ENV", "Job", "execute_job", "main", "run_in_worker"]

FAULT_ENV = "AUTODP_EVAL_WORKER_FAULT"
PARENT_ENV = "AUTODP_EVAL_WORKER_PARENT"  # the site agent's pid, set by run_in_worker
_RESULT = "result.json"
_RAISED = {"TrainingIntegrityError": TrainingIntegrityError, "EvaluationError": EvaluationFailed}


@dataclass(frozen=True)
class Job:
    """One evaluation's work: which runs to train ("processed", "baseline") and with what settings."""

    model_path: str
    train: dict[str, Any]  # TrainConfig fields
    runs: tuple[str, ...]
    dp: dict[str, Any] | None = None
    dp_seeds: dict[str, int] = field(default_factory=dict)
    answer_tokens: int = 0  # > 0: also generate answers for the judge
    threads: int = 0  # torch threads; 0 keeps torch's default


def execute_job(job: Job, batches: dict[str, Batch]) -> dict[str, Any]:
    """Train and score each run of ``job``; ``batches`` holds "processed"/"raw" (per run) and "eval"."""
    from site_agent.evaluation.dp import parse_dp
    from site_agent.evaluation.lora_train import TrainConfig, run_lora

    cfg = TrainConfig(**job.train)  # settings first: a bad one fails before torch is even imported
    dp = parse_dp(job.dp)
    if any(r not in ("processed", "baseline") for r in job.runs):
        raise EvaluationError("a LoRA job names an unknown run")
    import torch

    before = torch.get_num_threads()
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    try:
        out: dict[str, Any] = {}
        for run in job.runs:
            data = batches["processed" if run == "processed" else "raw"]
            res = run_lora(Path(job.model_path), cfg, data, batches["eval"], dp=dp,
                           dp_seed=job.dp_seeds.get(run, 0), answer_tokens=job.answer_tokens)
            out[run] = {"losses": res.losses, "answers": res.answers, **asdict(res.stats)}
        return out
    finally:
        torch.set_num_threads(before)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_worker(job: Job, batches: dict[str, Batch], timeout_s: float, *,
                  work_dir: Path | None = None) -> dict[str, Any]:
    """:func:`execute_job` in a fresh process; raises WorkerTimeout / WorkerCrashed / the worker's error."""
    tmp = Path(tempfile.mkdtemp(prefix="autodp-eval-", dir=work_dir))  # 0700: rows are patient data
    try:
        _write_json(tmp / "job.json", asdict(job))
        for name, batch in batches.items():
            _write_json(tmp / f"{name}.json", batch)
        proc = subprocess.Popen([sys.executable, "-m", "site_agent.evaluation.worker", str(tmp)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise WorkerTimeout(f"the evaluation worker ran past {timeout_s:g} s and was killed",
                                pid=proc.pid) from None
        finally:
            _kill_group(proc.pid)  # the worker's own children too, whatever happened
            if proc.poll() is None:
                proc.wait()
        result_file = tmp / _RESULT
        if not result_file.is_file():
            how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
            raise WorkerCrashed(f"the evaluation worker died ({how}) without a result", returncode=rc, pid=proc.pid)
        doc = json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in doc:
        kind = str(doc["error"].get("kind", ""))
        raise _RAISED.get(kind, EvaluationFailed)(str(doc["error"].get("message") or "evaluation worker failed"))
    return dict(doc["runs"])


def _fault(kind: str) -> None:
    if kind == "crash":  # what an out-of-memory kill looks like from the parent
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":  # a stuck worker with a child of its own, to prove the group is killed
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        time.sleep(3600)


def _watch_parent(parent: int, job_dir: Path) -> None:
    """End this run when the process that started it is gone (it is then re-parented): an orphan would train
    on for nothing and leave the rows on disk."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        shutil.rmtree(job_dir, ignore_errors=True)
        if os.getpgrp() == os.getpid():  # our own group (run_in_worker starts a new session): children too
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m site_agent.evaluation.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    if os.environ.get(PARENT_ENV, "").isdigit():
        _watch_parent(int(os.environ[PARENT_ENV]), job_dir)
    if os.environ.get(FAULT_ENV):
        _fault(os.environ[FAULT_ENV])
    try:
        raw = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
        job = Job(**{**raw, "runs": tuple(raw["runs"])})
        batches = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in job_dir.glob("*.json")
                   if p.stem in ("processed", "raw", "eval")}
        doc: dict[str, Any] = {"runs": execute_job(job, batches)}
    except EvaluationError as e:  # our messages carry no data
        kind = "TrainingIntegrityError" if isinstance(e, TrainingIntegrityError) else "EvaluationError"
        doc = {"error": {"kind": kind, "message": str(e)}}
    except Exception as e:  # a library's message might quote data: the type alone
        doc = {"error": {"kind": "internal", "message": f"evaluation worker failed ({type(e).__name__})"}}
    try:
        _write_json(job_dir / _RESULT, doc)
    except ValueError:  # a non-finite number slipped into the result
        _write_json(job_dir / _RESULT, {"error": {"kind": "internal", "message": "evaluation result not finite"}})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
