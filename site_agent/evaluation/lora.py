"""The LoRA evaluator: fine-tune a local causal LM on the processed rows and on the raw rows, compare both
on the site's clean held-out set.

``score = metric(model trained on processed) - metric(model trained on raw)``, same base model, seed,
steps and settings; see :mod:`site_agent.evaluation.metrics` for the three metrics. The raw-data
(baseline) run depends only on the raw rows, the held-out rows, the model and the settings, so it is
trained once and its per-item losses (and answers, for the judge) are cached as JSON under
``cache_dir/lora-baselines/<key>.json``, written atomically; later tasks train the processed run only.

Options of ``create_evaluator(EvaluatorKind.LORA, ...)``:

==================  ======================================================================================
eval_batch          the site's clean held-out set (Batch with instruction/answer); required
cache_dir           baseline cache and the DP noise secret (default: ``<autodp cache>/lora-eval``)
model_path          local HF model folder (default: bundled SmolLM2-135M-Instruct, converted once)
steps               training steps when the task's ``train_steps`` is 0 (default 30)
seq_len             tokens per row; longer rows lose the start of the prompt (default 128)
batch_size          rows per step; under DP the expected Poisson batch size (default 8)
lr                  AdamW learning rate of the LoRA matrices, constant, no weight decay (default 1e-3)
lora_r/lora_alpha   LoRA rank and scale (default 8 / 16)
lora_dropout        dropout on the LoRA path while training (default 0.05)
loss_mean           "row" (default: every row's mean answer-token loss weighs the same, so an empty or one-word
                    answer weighs as much as a long one) or "token" (the mean over the batch's answer tokens, as
                    transformers' Trainer and TRL do); DP-SGD trains with "row" only
target_modules      "all-linear" or comma-separated module names (default "all-linear")
eval_batch_size     rows per scoring / generation batch (default 8)
dtype / device      "auto" (bf16 where the hardware computes it, CUDA when present), or explicit
threads             torch threads in the run (0: torch's default; 1 suits tiny models on busy CPUs)
dp                  None, or DP-SGD settings (:class:`~site_agent.evaluation.dp.DPConfig` fields)
judge               None, or a site-local judge endpoint (:class:`~site_agent.evaluation.metrics.JudgeConfig`)
timeout_s           wall-clock limit of one isolated evaluation (default 3600)
isolate             run in a fresh worker process (default True); False runs in-process, without time-out
work_dir            where the private temporary job directories go (default: the system temp dir)
==================  ======================================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from protos.files import write_text_atomic
from protos.views import EvalSettings, EvaluatorKind, Metric
from site_agent.cache.keys import dataset_fingerprint
from site_agent.errors import EvaluationError
from site_agent.evaluation.base import EvalOutcome, register_evaluator
from site_agent.evaluation.dp import DPConfig, noise_seed, parse_dp
from site_agent.evaluation.errors import EvaluationFailed
from site_agent.evaluation.lora_train import TrainConfig
from site_agent.evaluation.metrics import (
    JudgeConfig,
    judge_win_rate,
    make_judge,
    neg_token_loss_score,
    pairwise_win_rate,
    parse_judge,
)
from site_agent.evaluation.worker import Job, execute_job, run_in_worker
from site_agent.operators.base import Batch
from site_agent.operators.base import batch_size as n_rows

__all__ = ["BASELINE_FORMAT", "LoraEvaluator", "baseline_path", "model_identity"]

log = logging.getLogger(__name__)
BASELINE_FORMAT = 1  # bump when training or scoring changes what a baseline means
_METRICS = (Metric.NEG_TOKEN_LOSS, Metric.PAIRWISE_WIN_RATE, Metric.JUDGE_WIN_RATE)


def model_identity(folder: Path) -> str:
    """Config, tokenizer files and weight file names/sizes/mtimes: a changed model is a new baseline."""
    if not (folder / "config.json").is_file():
        raise EvaluationError("the LoRA model folder has no config.json")
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            h.update(name.encode() + b":" + (folder / name).read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        st = weights.stat()
        h.update(f"{weights.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _pairs(batch: Batch) -> Batch:
    """Only the two columns training reads: nothing else is copied to the worker."""
    return {"instruction": list(batch["instruction"]), "answer": list(batch["answer"])}


def baseline_path(cache_dir: Path, key_doc: Mapping[str, Any]) -> Path:
    raw = json.dumps(key_doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return cache_dir / "lora-baselines" / f"{hashlib.sha256(raw.encode()).hexdigest()}.json"


def _load_baseline(path: Path, key_doc: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or damaged: train again
    return doc if isinstance(doc, dict) and doc.get("key") == key_doc else None


def _store_baseline(path: Path, doc: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(doc, ensure_ascii=True, allow_nan=False))  # 0600, fsynced


class LoraEvaluator:
    """Scores processed data by fine-tuning a LoRA on it; see the module docstring for the options."""

    kind: EvaluatorKind = EvaluatorKind.LORA

    def __init__(self, eval_batch: Batch | None = None, cache_dir: Path | None = None, model_path: Path | None = None,
                 steps: int = 30, seq_len: int = 128, batch_size: int = 8, lr: float = 1e-3, lora_r: int = 8,
                 lora_alpha: int = 16, lora_dropout: float = 0.05, target_modules: str = "all-linear",
                 loss_mean: Literal["row", "token"] = "row", eval_batch_size: int = 8,
                 dtype: Literal["auto", "float32", "bfloat16"] = "auto",
                 device: Literal["auto", "cpu", "cuda"] = "auto", threads: int = 0,
                 dp: Mapping[str, Any] | DPConfig | None = None, judge: Mapping[str, Any] | JudgeConfig | None = None,
                 timeout_s: float = 3600.0, isolate: bool = True, work_dir: Path | None = None) -> None:
        if eval_batch is None or n_rows(eval_batch) == 0:
            raise EvaluationError("the LoRA evaluator needs the site's held-out evaluation set (eval_batch)")
        if steps < 1 or threads < 0 or not timeout_s > 0:
            raise EvaluationError("LoRA options: steps must be >= 1, threads >= 0 and timeout_s > 0")
        self.eval_batch = _pairs(eval_batch)
        self.eval_fingerprint = dataset_fingerprint(self.eval_batch)
        if cache_dir is None:
            from protos.bundled_models import autodp_cache_dir

            cache_dir = autodp_cache_dir() / "lora-eval"
        # from a YAML config the paths arrive as strings
        self.model_path = Path(model_path) if model_path is not None else None
        self.cache_dir, self.default_steps = Path(cache_dir), steps
        # Validated now so that a bad option fails at start-up, not at the first task.
        self.template = TrainConfig(seq_len=seq_len, batch_size=batch_size, lr=lr, lora_r=lora_r,
                                    lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
                                    loss_mean=loss_mean, eval_batch_size=eval_batch_size, dtype=dtype, device=device)
        self.dp, self.judge = parse_dp(dp), parse_judge(judge)
        if self.dp is not None and loss_mean != "row":
            raise EvaluationError("LoRA options: DP-SGD clips each row's gradient, so it needs loss_mean 'row'")
        self.threads, self.timeout_s, self.isolate, self.work_dir = threads, timeout_s, isolate, work_dir

    def _model(self) -> Path:
        if self.model_path is None:
            from protos.bundled_models import smollm2_folder

            self.model_path = smollm2_folder()
        return self.model_path

    def _run(self, job: Job, batches: dict[str, Batch]) -> dict[str, Any]:
        if self.isolate:
            return run_in_worker(job, batches, self.timeout_s, work_dir=self.work_dir)
        return execute_job(job, batches)

    def evaluate(self, processed: Batch, raw: Batch, settings: EvalSettings) -> EvalOutcome:
        if settings.evaluator is not EvaluatorKind.LORA or settings.metric not in _METRICS:
            raise EvaluationError(f"the LoRA evaluator does not report the '{settings.metric}' metric")
        if settings.metric is Metric.JUDGE_WIN_RATE and self.judge is None:
            raise EvaluationError("the judge_win_rate metric needs a site-local judge endpoint (judge option)")
        if n_rows(raw) == 0:
            raise EvaluationError("cannot score against an empty raw batch")
        start = time.perf_counter()
        model = self._model()
        cfg = TrainConfig(**{**asdict(self.template), "steps": settings.train_steps or self.default_steps,
                             "seed": settings.seed})
        answer_tokens = self.judge.answer_tokens if settings.metric is Metric.JUDGE_WIN_RATE and self.judge else 0
        processed, raw = _pairs(processed), _pairs(raw)
        raw_fp = dataset_fingerprint(raw)
        dp_doc = self.dp.model_dump() if self.dp else None
        key = {"format": BASELINE_FORMAT, "raw": raw_fp, "eval": self.eval_fingerprint,
               "model": model_identity(model), "train": asdict(cfg), "dp": dp_doc, "answer_tokens": answer_tokens}
        path = baseline_path(self.cache_dir, key)
        baseline = _load_baseline(path, key)
        runs = ("processed",) if baseline is not None else ("processed", "baseline")
        seeds = {}
        if self.dp is not None:
            fps = {"processed": dataset_fingerprint(processed), "baseline": raw_fp}
            seeds = {r: noise_seed(self.cache_dir, cfg.seed, r, fps[r]) for r in runs}
        job = Job(model_path=str(model), train=asdict(cfg), runs=runs, dp=dp_doc, dp_seeds=seeds,
                  answer_tokens=answer_tokens, threads=self.threads)
        batches = {"processed": processed, "eval": self.eval_batch} | ({} if baseline else {"raw": raw})
        out = self._run(job, batches)
        if baseline is None:
            baseline = {"key": key, **out["baseline"]}
            _store_baseline(path, baseline)
        score, details = self._score(settings, out["processed"], baseline)
        proc = out["processed"]
        details.update(train_steps=float(proc["steps"]), train_tokens=float(proc["tokens"]),
                       train_seconds=float(proc["seconds"]), baseline_cached=float(len(runs) == 1),
                       noise_multiplier=float(proc["noise_multiplier"]),
                       baseline_epsilon=float(out["baseline"]["epsilon"]) if "baseline" in out else 0.0)
        log.info("LoRA evaluation: %d steps, baseline %s, score %.4f", proc["steps"],
                 "cached" if len(runs) == 1 else "trained", score)
        return EvalOutcome(score=score, metric=settings.metric, seconds=time.perf_counter() - start,
                           epsilon=float(proc["epsilon"]), delta=self.dp.delta if self.dp else 0.0, details=details)

    def _score(self, settings: EvalSettings, proc: Mapping[str, Any],
               base: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        p_loss, b_loss = list(proc["losses"]), list(base["losses"])
        details = {"processed_loss": sum(p_loss) / len(p_loss), "baseline_loss": sum(b_loss) / len(b_loss)}
        if settings.metric is Metric.NEG_TOKEN_LOSS:
            return neg_token_loss_score(p_loss, b_loss), details
        if settings.metric is Metric.PAIRWISE_WIN_RATE:
            rate = pairwise_win_rate(p_loss, b_loss)
            return rate - 0.5, {**details, "win_rate": rate}
        assert self.judge is not None
        from site_agent.llm.errors import LLMError

        try:
            with make_judge(self.judge) as judge:
                rate, unreadable = judge_win_rate(judge, self.eval_batch["instruction"], proc["answers"],
                                                  base["answers"], seed=settings.seed)
        except LLMError as e:
            raise EvaluationFailed(f"judge: {e}") from None
        return rate - 0.5, {**details, "win_rate": rate, "judge_unreadable": float(unreadable)}


register_evaluator(EvaluatorKind.LORA, LoraEvaluator)
