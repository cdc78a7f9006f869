from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from protos.views import EvalSettings, EvaluatorKind, Metric, TaskStatus
from site_agent.data.toy import make_toy_dataset
from site_agent.evaluation import create_evaluator
from site_agent.evaluation.errors import EvaluationFailed, WorkerCrashed, WorkerTimeout
from site_agent.evaluation.lora_train import TrainConfig
from site_agent.evaluation.worker import FAULT_ENV, Job, run_in_worker
from site_agent.operators.base import Batch

_SETTINGS = EvalSettings(evaluator=EvaluatorKind.LORA, metric=Metric.NEG_TOKEN_LOSS, seed=1)


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (a zombie is dead, only not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _job(model: Path, **train: object) -> Job:
    return Job(model_path=str(model), train=asdict(TrainConfig(steps=2, seq_len=64, batch_size=4, **train)),  # type: ignore[arg-type]
               runs=("processed",), threads=1)


def test_a_crashed_worker_is_a_failed_task_not_a_dead_site(tiny_model: Path, held_out: Batch, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "crash")
    work = tmp_path / "work"
    work.mkdir()
    evaluator = create_evaluator(EvaluatorKind.LORA, eval_batch=held_out, cache_dir=tmp_path, model_path=tiny_model,
                                 work_dir=work)
    raw, _ = make_toy_dataset(10, seed=1)
    with pytest.raises(WorkerCrashed, match="signal 9") as e:
        evaluator.evaluate(raw, raw, _SETTINGS)
    assert e.value.status is TaskStatus.FAILED_WORKER_CRASH and e.value.returncode == -9
    assert list(work.iterdir()) == []  # the private job directory is gone
    assert "instruction" not in str(e.value)


def test_a_worker_past_its_time_limit_is_killed_with_its_children(tiny_model: Path, held_out: Batch, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "hang")  # the worker starts a child of its own, then sleeps
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(WorkerTimeout, match="ran past 3 s") as e:
        run_in_worker(_job(tiny_model), {"processed": held_out, "eval": held_out}, timeout_s=3, work_dir=work)
    assert e.value.status is TaskStatus.FAILED_TIMEOUT and e.value.pid is not None
    deadline = time.monotonic() + 5
    while _live_members(e.value.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(e.value.pid) == []
    assert list(work.iterdir()) == []


def test_an_error_in_the_worker_comes_back_without_data(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    job = _job(tiny_model)
    bad = Job(**{**asdict(job), "train": {**job.train, "lora_r": 0}})
    with pytest.raises(EvaluationFailed, match="LoRA option out of range: lora_r") as e:
        run_in_worker(bad, {"processed": held_out, "eval": held_out}, timeout_s=60, work_dir=tmp_path)
    assert e.value.status is TaskStatus.FAILED_INTERNAL and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_isolated_evaluation_matches_the_in_process_one(tiny_model: Path, held_out: Batch, tmp_path: Path) -> None:
    processed, _ = make_toy_dataset(16, seed=2, noise_rate=0.0)
    raw, _ = make_toy_dataset(16, seed=2, noise_rate=0.6)
    options = {"eval_batch": held_out, "model_path": tiny_model, "steps": 2, "seq_len": 64, "batch_size": 4,
               "threads": 1, "work_dir": tmp_path / "work"}
    (tmp_path / "work").mkdir()
    isolated = create_evaluator(EvaluatorKind.LORA, cache_dir=tmp_path / "a", **options).evaluate(processed, raw,
                                                                                                    _SETTINGS)
    inline = create_evaluator(EvaluatorKind.LORA, cache_dir=tmp_path / "b", isolate=False, **options).evaluate(
        processed, raw, _SETTINGS)
    assert isolated.score == pytest.approx(inline.score, abs=1e-5) and isolated.details["baseline_cached"] == 0.0
    assert list((tmp_path / "work").iterdir()) == [] and os.listdir(tmp_path / "a" / "lora-baselines")
