"""LoRA fine-tuning and scoring of a local causal LM, as plain functions (nanoGPT style).

One run: load the base model (local folder only, safetensors, no remote code), add LoRA adapters (peft),
train the adapters for a fixed number of AdamW steps on chat-formatted rows with loss on answer tokens
only, then score every held-out item (mean NLL of its answer tokens) and, for the judge metric, generate
greedy answers. The loss of a batch is the mean over rows of each row's mean token loss, so every row
weighs the same whatever its length (and DP-SGD's per-sample unit is a row).

Determinism: the LoRA initialisation and dropout use torch's RNG seeded with the run seed, the batch
order is :func:`~site_agent.evaluation.lora_data.epoch_batches` of the seed; two runs with the same seed
differ only by their data. Under DP, noise and Poisson subsampling use a separate, secret seed.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from site_agent.errors import EvaluationError
from site_agent.evaluation.dp import DPConfig, DPTraining, attach_dp
from site_agent.evaluation.errors import TrainingIntegrityError
from site_agent.evaluation.integrity import StepGuard, base_digest, lora_parameters
from site_agent.evaluation.lora_data import (
    TokenRow,
    collate,
    encode_batch,
    encode_prompt,
    epoch_batches,
    poisson_batches,
)
from site_agent.operators.base import Batch
from site_agent.operators.base import batch_size as n_rows

__all__ = ["RunResult", "TrainConfig", "TrainStats", "eval_losses", "generate_answers", "load_model",
           "load_tokenizer", "resolve_device", "resolve_dtype", "row_losses", "run_lora", "token_loss", "train",
           "with_lora"]


@dataclass(frozen=True)
class TrainConfig:
    """Training and scoring settings of one LoRA run (see the evaluator's options for each)."""

    steps: int = 30
    seq_len: int = 128
    batch_size: int = 8
    lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    seed: int = 0
    eval_batch_size: int = 8
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # How a step averages its loss: "row" (each row's mean answer-token NLL, then the mean over rows: every row
    # weighs the same, so a one-token answer weighs as much as a long one) or "token" (the mean over all answer
    # tokens of the batch, as transformers' Trainer and TRL's SFT do). DP-SGD clips per row: "row" only.
    loss_mean: Literal["row", "token"] = "row"

    def __post_init__(self) -> None:
        checks = {"steps": 0 <= self.steps <= 100_000, "seq_len": 8 <= self.seq_len <= 32_768,
                  "batch_size": 1 <= self.batch_size <= 4096, "lr": 0.0 < self.lr <= 1.0,
                  "lora_r": 1 <= self.lora_r <= 1024, "lora_alpha": 1 <= self.lora_alpha <= 4096,
                  "lora_dropout": 0.0 <= self.lora_dropout < 1.0, "eval_batch_size": 1 <= self.eval_batch_size <= 4096,
                  "seed": 0 <= self.seed < 2**31, "target_modules": bool(self.target_modules.strip()),
                  "dtype": self.dtype in ("auto", "float32", "bfloat16"),
                  "device": self.device in ("auto", "cpu", "cuda"), "loss_mean": self.loss_mean in ("row", "token")}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise EvaluationError(f"LoRA option out of range: {', '.join(bad)}")


@dataclass(frozen=True)
class TrainStats:
    steps: int
    tokens: int  # non-padding input tokens processed
    seconds: float
    epsilon: float = 0.0
    noise_multiplier: float = 0.0


@dataclass(frozen=True)
class RunResult:
    losses: list[float]  # per held-out item, mean NLL of its answer tokens
    answers: list[str] | None  # greedy answers per held-out item (judge metric only)
    stats: TrainStats


def resolve_device(pref: str) -> str:
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("LoRA device 'cuda' requested but no CUDA device is available")
    return pref if pref != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(pref: str, device: str) -> str:
    """bfloat16 where the hardware computes it natively (CUDA, AVX512-BF16 or AMX CPUs), else float32."""
    import torch

    if pref != "auto":
        return pref
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    cpu: Any = torch.cpu
    native = any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bfloat16" if native else "float32"


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, dtype: str, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                     use_safetensors=True, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot load the LoRA base model ({type(e).__name__})") from None
    model.requires_grad_(False)
    return model.to(device)


def with_lora(model: Any, cfg: TrainConfig) -> Any:
    """``model`` wrapped with fresh LoRA adapters, initialised from the run seed."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = cfg.target_modules.strip()
    targets: str | list[str] = names if names == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6: not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lora)
    except ValueError:
        raise EvaluationError("LoRA target_modules match no module of the base model") from None


def _nll(model: Any, ids: Any, labels: Any, mask: Any) -> tuple[Any, Any]:
    """Each row's summed NLL of its labelled tokens and their number (two tensors of shape (rows,))."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=-100, reduction="none").view(target.shape)
    return nll.sum(dim=1), (target != -100).sum(dim=1)


def row_losses(model: Any, ids: Any, labels: Any, mask: Any) -> Any:
    """Mean NLL of each row's labelled tokens (a float tensor of shape (rows,))."""
    total, counts = _nll(model, ids, labels, mask)
    return total / counts.clamp(min=1)


def token_loss(model: Any, ids: Any, labels: Any, mask: Any) -> Any:
    """Mean NLL over every labelled token of the batch (a scalar tensor)."""
    total, counts = _nll(model, ids, labels, mask)
    return total.sum() / counts.sum().clamp(min=1)


def _train_step(torch: Any, forward: Any, optimizer: Any, batch: list[TokenRow], pad_id: int, device: Any,
                dp_run: DPTraining | None, token_mean: bool = False) -> int:
    """One optimizer step on ``batch``; returns the tokens it read."""
    tokens = 0
    if batch:
        ids, labels, mask = (t.to(device) for t in collate(torch, batch, pad_id))
        loss = token_loss(forward, ids, labels, mask) if token_mean else row_losses(forward, ids, labels, mask).mean()
        loss.backward()
        tokens = int(mask.sum())
    elif dp_run is not None:
        dp_run.empty_step_grads(torch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if dp_run is not None:
        dp_run.account_step()
    return tokens


def train(model: Any, rows: list[TokenRow], cfg: TrainConfig, pad_id: int, *, dp: DPConfig | None = None,
          dp_seed: int = 0, on_step: Callable[[int, Any], None] | None = None) -> TrainStats:
    """Train the LoRA adapters of ``model`` for ``cfg.steps`` steps on ``rows`` (no step when empty)."""
    import torch

    if dp is not None and cfg.loss_mean != "row":
        raise EvaluationError("DP-SGD clips each row's gradient: it trains with loss_mean 'row' only")
    if not rows or cfg.steps == 0:
        return TrainStats(steps=0, tokens=0, seconds=0.0)
    device = next(model.parameters()).device
    params = lora_parameters(model)
    optimizer: Any = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    forward, dp_run = model, None
    if dp is not None:
        q = min(1.0, cfg.batch_size / len(rows))
        dp_run = attach_dp(model, optimizer, dp, sample_rate=q, steps=cfg.steps, expected_batch=cfg.batch_size,
                           seed=dp_seed)
        forward, optimizer = dp_run.module, dp_run.optimizer
        batches = poisson_batches(len(rows), cfg.steps, q, random.Random(dp_seed))
    else:
        batches = epoch_batches(len(rows), cfg.steps, cfg.batch_size, cfg.seed)
    guard = StepGuard(model, strict=dp is not None)
    before = base_digest(model)
    torch.manual_seed(cfg.seed)  # dropout masks
    model.train()
    tokens, start = 0, time.perf_counter()
    with warnings.catch_warnings():
        # The first LoRA layer's input (the embeddings) needs no gradient; Opacus reads grad_output only.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for step, idx in enumerate(batches):
                guard.before_step()
                tokens += _train_step(torch, forward, optimizer, [rows[i] for i in idx], pad_id, device, dp_run,
                                      token_mean=cfg.loss_mean == "token")
                guard.after_step(step)
                if on_step is not None:
                    on_step(step, model)
        finally:
            if dp_run is not None:
                dp_run.module.remove_hooks()
    seconds = time.perf_counter() - start
    model.eval()
    if base_digest(model) != before:
        raise TrainingIntegrityError("frozen base weights changed during LoRA training")
    if dp_run is None:
        return TrainStats(steps=len(batches), tokens=tokens, seconds=seconds)
    return TrainStats(steps=len(batches), tokens=tokens, seconds=seconds, epsilon=dp_run.epsilon(),
                      noise_multiplier=dp_run.noise_multiplier)


def eval_losses(model: Any, rows: list[TokenRow], pad_id: int, batch: int) -> list[float]:
    """Per-row mean answer-token NLL, batched by length (padding does not change a row's loss)."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].input_ids), i))
    out = [0.0] * len(rows)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            ids, labels, mask = (t.to(device) for t in collate(torch, [rows[i] for i in idx], pad_id))
            for i, loss in zip(idx, row_losses(model, ids, labels, mask).tolist(), strict=True):
                out[i] = float(loss)
    return out


def generate_answers(model: Any, tok: Any, instructions: list[str], seq_len: int, max_new_tokens: int,
                     batch: int) -> list[str]:
    """Greedy answers, left-padded batches; deterministic."""
    import torch

    device = next(model.parameters()).device
    prompts = [encode_prompt(tok, q, seq_len) for q in instructions]
    out = [""] * len(prompts)
    model.eval()
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for k in range(len(chunk)):
            out[start + k] = str(tok.decode(gen[k, width:], skip_special_tokens=True)).strip()
    return out


def run_lora(model_path: Path, cfg: TrainConfig, train_batch: Batch, eval_batch: Batch, *,
             dp: DPConfig | None = None, dp_seed: int = 0, answer_tokens: int = 0,
             on_step: Callable[[int, Any], None] | None = None) -> RunResult:
    """Fresh base model + LoRA, trained on ``train_batch``, scored (and asked) on ``eval_batch``."""
    if n_rows(eval_batch) == 0:
        raise EvaluationError("the held-out evaluation set is empty")
    device = resolve_device(cfg.device)
    tok = load_tokenizer(model_path)
    model = with_lora(load_model(model_path, resolve_dtype(cfg.dtype, device), device), cfg)
    train_rows = encode_batch(tok, train_batch, cfg.seq_len) if n_rows(train_batch) else []
    stats = train(model, train_rows, cfg, tok.pad_token_id, dp=dp, dp_seed=dp_seed, on_step=on_step)
    losses = eval_losses(model, encode_batch(tok, eval_batch, cfg.seq_len), tok.pad_token_id, cfg.eval_batch_size)
    if not all(math.isfinite(v) for v in losses):
        raise TrainingIntegrityError("held-out losses are not finite: training diverged (lower lr)")
    answers = None
    if answer_tokens > 0:
        answers = generate_answers(model, tok, list(eval_batch["instruction"]), cfg.seq_len, answer_tokens,
                                   cfg.eval_batch_size)
    return RunResult(losses=losses, answers=answers, stats=stats)
