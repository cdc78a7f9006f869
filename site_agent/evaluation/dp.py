"""Optional DP-SGD for the LoRA evaluator (Opacus), on the LoRA parameters only.

Per-sample gradients come from Opacus' ``GradSampleModule`` hooks; the base model is frozen, so the only
hooked modules are the ``nn.Linear`` A/B matrices of the LoRA layers, which have an exact grad sampler
(no functorch fallback: :mod:`site_agent.evaluation.integrity` refuses one). ``DPOptimizer`` clips each
sample's gradient to ``max_grad_norm`` and adds Gaussian noise; an accountant (PRV or RDP) turns the
noise multiplier, sampling rate and step count into epsilon at ``delta``.

Batches are Poisson-subsampled (each row in each step with probability batch_size / rows), which is what
the accounting assumes. The noise and the subsampling must be unpredictable to whoever sees the score:
the task seed comes from the coordinator, so they are drawn from a generator seeded with a hash of a
site-local secret (a random file in the evaluator's cache directory, created once), the task seed, the
run and the training data's fingerprint.
A site thus reproduces its own DP runs, the coordinator cannot. The per-sample unit is one row of the
data the model is trained on (the processed rows for a task, the raw rows for the baseline).
Opacus' ``secure_mode`` (torchcsprng) is not used: noise is not hardened against floating-point attacks.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protos.config import first_error
from site_agent.errors import EvaluationError

__all__ = ["DPConfig", "DPTraining", "attach_dp", "noise_multiplier_for", "noise_seed", "parse_dp"]

_SECRET_FILE = "dp-noise.secret"


class DPConfig(BaseModel):
    """DP-SGD settings: exactly one of ``target_epsilon`` (the noise is solved for it over the run's
    steps and sampling rate) or ``noise_multiplier``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_epsilon: float | None = Field(default=None, gt=0.0, le=1000.0)
    noise_multiplier: float | None = Field(default=None, gt=0.0, le=1000.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e4)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    accountant: Literal["prv", "rdp"] = "prv"

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("set exactly one of target_epsilon and noise_multiplier")
        return self


def parse_dp(options: Mapping[str, Any] | DPConfig | None) -> DPConfig | None:
    """A :class:`DPConfig` from an options dict (None: no DP); a bad key or value is one clear line."""
    if options is None or isinstance(options, DPConfig):
        return options
    try:
        return DPConfig.model_validate(dict(options))
    except ValidationError as e:
        _, why, where = first_error(e)
        raise EvaluationError(f"dp option '{where or 'dp'}': {why}") from None


def noise_multiplier_for(cfg: DPConfig, sample_rate: float, steps: int) -> float:
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    assert cfg.target_epsilon is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # RDP's "optimal order is the largest alpha"
            return float(get_noise_multiplier(target_epsilon=cfg.target_epsilon, target_delta=cfg.delta,
                                              sample_rate=sample_rate, steps=max(steps, 1),
                                              accountant=cfg.accountant))
    except ValueError:
        raise EvaluationError(f"dp: target_epsilon={cfg.target_epsilon} cannot be reached in {steps} steps "
                              f"at sampling rate {sample_rate:.4f}") from None


def _site_secret(cache_dir: Path) -> bytes:
    path = cache_dir / _SECRET_FILE
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".secret-")  # 0600
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # atomic and exclusive: a concurrent creator's secret wins, never a mix
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    secret = path.read_bytes()
    if len(secret) != 32:
        raise EvaluationError(f"the DP noise secret in the evaluator cache is damaged; delete {_SECRET_FILE}")
    return secret


def noise_seed(cache_dir: Path, seed: int, run: str, data_fingerprint: str) -> int:
    """A 63-bit seed for the noise and the subsampling of one run, unpredictable without the site secret.

    The training data's fingerprint is mixed in: two runs on different data never share noise (the
    difference of their scores would cancel it), while the same run repeated gives the same result.
    """
    doc = f":{seed}:{run}:{data_fingerprint}".encode()
    digest = hashlib.sha256(_site_secret(cache_dir) + doc).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class DPTraining:
    """What a DP run holds while it trains: the hooked module, the DP optimizer and the accountant."""

    module: Any  # opacus GradSampleModule
    optimizer: Any  # opacus DPOptimizer
    accountant: Any
    cfg: DPConfig
    sample_rate: float
    noise_multiplier: float

    def account_step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha": a looser bound, fine
            warnings.simplefilter("ignore", UserWarning)
            return float(self.accountant.get_epsilon(delta=self.cfg.delta))

    def empty_step_grads(self, torch: Any) -> None:
        """An empty Poisson batch still takes a (pure noise) step: Opacus reads zero per-sample rows."""
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def attach_dp(model: Any, optimizer: Any, cfg: DPConfig, *, sample_rate: float, steps: int,
              expected_batch: int, seed: int) -> DPTraining:
    """Wrap ``model`` and ``optimizer`` for DP-SGD; the optimizer must hold the LoRA parameters only."""
    import torch
    from opacus.accountants import create_accountant
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from site_agent.evaluation.integrity import check_dp_modules

    sigma = noise_multiplier_for(cfg, sample_rate, steps)
    device = next(p.device for p in model.parameters() if p.requires_grad)
    generator = torch.Generator(device=device).manual_seed(seed)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    check_dp_modules(module)
    dp_opt = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                         expected_batch_size=expected_batch, loss_reduction="mean", generator=generator)
    return DPTraining(module=module, optimizer=dp_opt, accountant=create_accountant(mechanism=cfg.accountant),
                      cfg=cfg, sample_rate=sample_rate, noise_multiplier=sigma)
