"""The site's local LoRA model during federated training: built once when the first round arrives, then
loaded with each round's global adapter, trained for the round's local steps on the processed rows, and
exported as float32 tensors named as PEFT names them (``base_model.model....lora_A.weight``).

It reuses the LoRA evaluator's plain functions (:mod:`site_agent.evaluation.lora_train`): the same chat
formatting, answer-only loss (averaged per row or per token, as the round's ``loss_mean`` asks; with DP-SGD
per row only, which the ClientApp checks before loading anything), integrity guards (only LoRA tensors
change; the base weights are hashed before and after each round) and DP-SGD (Opacus, Poisson sampling,
secret noise seed).

The adapter starts with B = 0, so before any round the model *is* the base model: its held-out loss then
is the base model's (:attr:`LocalTrainer.base_loss`), the yardstick for the final averaged adapter.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from protos.federated import RoundSettings, adapter_problems
from site_agent.cache.keys import dataset_fingerprint
from site_agent.evaluation.dp import DPConfig, noise_multiplier_for, noise_seed
from site_agent.evaluation.lora_data import TokenRow, encode_batch
from site_agent.evaluation.lora_train import (
    TrainConfig,
    TrainStats,
    eval_losses,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    train,
    with_lora,
)
from site_agent.federated.errors import RoundRefused
from site_agent.operators.base import Batch

__all__ = ["LocalTrainer", "TrainerOptions", "dp_round_epsilon"]

_LORA_DROPOUT = 0.05
_TARGETS = "all-linear"


@dataclass(frozen=True)
class TrainerOptions:
    model_path: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    threads: int = 0
    eval_batch_size: int = 8
    dp: DPConfig | None = None
    secret_dir: Path | None = None  # where the DP noise secret lives (required with dp)


def dp_round_epsilon(dp: DPConfig, rows: int, settings: RoundSettings) -> float:
    """The epsilon one round of DP-SGD spends (what the ledger reserves before training): the target, or
    what the accountant gives for the noise multiplier over the round's steps and sampling rate."""
    if dp.target_epsilon is not None:
        return dp.target_epsilon
    from opacus.accountants import create_accountant

    q = min(1.0, settings.batch_size / max(rows, 1))
    accountant = create_accountant(mechanism=dp.accountant)
    accountant.history = [(noise_multiplier_for(dp, q, settings.local_steps), q, settings.local_steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=dp.delta))


class LocalTrainer:
    """One site's model for one federated run; not thread-safe (one round at a time)."""

    def __init__(self, opts: TrainerOptions, train_batch: Batch, eval_batch: Batch, first: RoundSettings) -> None:
        import torch

        if opts.threads > 0:
            torch.set_num_threads(opts.threads)
        self.opts = opts
        self.device = resolve_device(opts.device)
        self.template = TrainConfig(steps=first.local_steps, seq_len=first.seq_len, batch_size=first.batch_size,
                                    lr=first.lr, lora_r=first.lora_r, lora_alpha=first.lora_alpha,
                                    lora_dropout=_LORA_DROPOUT, target_modules=_TARGETS, seed=first.seed,
                                    eval_batch_size=opts.eval_batch_size, dtype=opts.dtype, device=opts.device,
                                    loss_mean=first.loss_mean)
        self.shape_key = (first.lora_r, first.lora_alpha, first.seq_len, first.seed)
        self.tok = load_tokenizer(opts.model_path)
        base = load_model(opts.model_path, resolve_dtype(opts.dtype, self.device), self.device)
        self.model: Any = with_lora(base, self.template)
        self.rows: list[TokenRow] = encode_batch(self.tok, train_batch, first.seq_len)
        self.eval_rows: list[TokenRow] = encode_batch(self.tok, eval_batch, first.seq_len)
        self.fingerprint = dataset_fingerprint(train_batch)
        self.shapes = {k: tuple(v.shape) for k, v in self._state().items()}
        self.initial = self.export()  # the seeded initialisation: what an empty global adapter stands for
        self.base_loss = self.held_out_loss()

    @property
    def examples(self) -> int:
        return len(self.rows)

    def _state(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(self.model))

    def check(self, settings: RoundSettings) -> None:
        """The adapter's shape (rank, scale), the sequence length and the init seed may not change in a run."""
        key = (settings.lora_r, settings.lora_alpha, settings.seq_len, settings.seed)
        if key != self.shape_key:
            raise RoundRefused("LoRA rank, alpha, sequence length and seed must stay the same for a whole run")

    def load_adapter(self, arrays: dict[str, np.ndarray]) -> None:
        """Make ``arrays`` the current adapter; an empty mapping stands for the seeded initialisation (the
        global adapter of round 1, the same at every site)."""
        if not arrays:
            arrays = self.initial
        problems = adapter_problems(arrays, self.shapes)
        if problems:
            raise RoundRefused("global adapter refused: " + "; ".join(problems))
        import torch
        from peft import set_peft_model_state_dict

        dtype = next(self.model.parameters()).dtype
        state = {k: torch.from_numpy(np.array(v, copy=True)).to(self.device, dtype) for k, v in arrays.items()}
        result: Any = set_peft_model_state_dict(self.model, state)
        if result.unexpected_keys or any("lora_" in k for k in result.missing_keys):
            raise RoundRefused("global adapter refused: its tensors do not fit this model")

    def export(self) -> dict[str, np.ndarray]:
        """The current adapter as float32 numpy arrays (copies)."""
        return {k: v.detach().to("cpu").float().numpy().astype("<f4", copy=True) for k, v in self._state().items()}

    def planned_epsilon(self, settings: RoundSettings) -> float:
        return 0.0 if self.opts.dp is None else dp_round_epsilon(self.opts.dp, len(self.rows), settings)

    def train_round(self, settings: RoundSettings, round_no: int, run_id: str) -> TrainStats:
        """Train the adapter for ``settings.local_steps`` steps; the batch order depends on seed and round."""
        cfg = replace(self.template, steps=settings.local_steps, lr=settings.lr, batch_size=settings.batch_size,
                      seed=(settings.seed + round_no) % 2**31, loss_mean=settings.loss_mean)
        dp_seed = 0
        if self.opts.dp is not None:
            assert self.opts.secret_dir is not None
            dp_seed = noise_seed(self.opts.secret_dir, cfg.seed, f"federated:{run_id}:{round_no}", self.fingerprint)
        return train(self.model, self.rows, cfg, self.tok.pad_token_id, dp=self.opts.dp, dp_seed=dp_seed)

    def held_out_loss(self) -> float:
        """Mean over the site's held-out items of each item's mean answer-token loss."""
        losses = eval_losses(self.model, self.eval_rows, self.tok.pad_token_id, self.opts.eval_batch_size)
        value = sum(losses) / len(losses)
        if not math.isfinite(value):
            raise RoundRefused("held-out loss is not finite")
        return value
