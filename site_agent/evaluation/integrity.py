"""Guards that LoRA training (DP-SGD above all) updates the adapter and nothing else.

Opacus with PEFT has silently produced corrupted or missing LoRA updates while loss and epsilon looked
normal (opacus#820: a model left partly on another device when the adapters were added; opacus#436:
per-sample hooks on modules that mix frozen and trainable parameters; functorch fallbacks for module
types without a grad sampler). The evaluator moves the base model to its device before adding adapters,
and rather than trust a version pairing, checks every run:

- before training: the trainable parameters are exactly the LoRA matrices (``lora_`` in the name), every
  parameter sits on one device, and under DP every hooked module has an exact Opacus grad sampler (no
  functorch fallback);
- after every optimizer step: LoRA tensors changed (under DP all of them, since noise touches every
  coordinate; without DP at least one, as B = 0 at the start keeps A's gradient zero at first), and no
  frozen parameter holds a gradient or a per-sample gradient;
- around the run: a SHA-256 of every frozen parameter is the same before and after.

A failed check raises :class:`TrainingIntegrityError`; messages carry counts only.
"""

from __future__ import annotations

import hashlib
from typing import Any

from site_agent.evaluation.errors import TrainingIntegrityError

__all__ = ["StepGuard", "base_digest", "check_dp_modules", "lora_parameters"]


def lora_parameters(model: Any) -> list[Any]:
    """The LoRA parameters, after checking that they, and only they, are trainable."""
    lora, stray, devices = [], 0, set()
    for name, p in model.named_parameters():
        devices.add(str(p.device))
        if "lora_" in name:
            p.requires_grad_(True)
            lora.append(p)
        elif p.requires_grad:
            stray += 1
    if stray or not lora:
        raise TrainingIntegrityError(f"LoRA training expects only LoRA parameters to be trainable; found {stray} "
                                     f"other trainable and {len(lora)} LoRA parameters")
    if len(devices) != 1:
        raise TrainingIntegrityError(f"LoRA training expects one device for all parameters; found {len(devices)}")
    return lora


def check_dp_modules(gsm: Any) -> None:
    """Every module Opacus hooks has an exact grad sampler and owns only LoRA parameters."""
    samplers = type(gsm).GRAD_SAMPLERS
    bad = 0
    for name, module in gsm._module.named_modules():
        own = list(module.named_parameters(recurse=False))
        if any(p.requires_grad for _, p in own):
            if type(module) not in samplers or any("lora_" not in f"{name}.{n}" for n, _ in own):
                bad += 1
    if bad:
        raise TrainingIntegrityError(f"DP-SGD: {bad} trainable modules lack an exact per-sample gradient")


def base_digest(model: Any) -> str:
    """SHA-256 over the bytes of every non-LoRA parameter, in name order."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_" in name:
                continue
            h.update(name.encode())
            h.update(p.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


class StepGuard:
    """Snapshots the LoRA tensors before a step and checks what the step did to them."""

    def __init__(self, model: Any, *, strict: bool) -> None:
        self.strict = strict
        self.lora = [p for n, p in model.named_parameters() if "lora_" in n]
        self.frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
        self._before: list[Any] = []

    def before_step(self) -> None:
        self._before = [p.detach().clone() for p in self.lora]

    def after_step(self, step: int) -> None:
        import torch

        changed = sum(0 if torch.equal(a, p.detach()) else 1 for a, p in zip(self._before, self.lora, strict=True))
        finite = all(bool(torch.isfinite(p).all()) for p in self.lora)
        want = len(self.lora) if self.strict else 1
        if changed < want or not finite:
            raise TrainingIntegrityError(f"step {step}: {changed} of {len(self.lora)} LoRA tensors changed "
                                         f"(expected at least {want}); finite: {finite}")
        touched = sum(1 for p in self.frozen if p.grad is not None or getattr(p, "grad_sample", None) is not None)
        if touched:
            raise TrainingIntegrityError(f"step {step}: {touched} frozen parameters received gradients")
