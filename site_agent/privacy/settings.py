"""A site's privacy settings: the ``privacy:`` section of its YAML (unknown keys rejected).

The defaults are chosen so that a laptop demo still gives the search a signal. Read them before you deploy:

- ``mechanism: none`` (the default) releases the clipped, quantized score with **no** differential-privacy
  guarantee. Its protection is the coarse grid, the minimum cohort and the site's policy; the ledger
  debits 0 epsilon for such a release and says so (``epsilon_spent`` stays at what DP-SGD spent). Choose
  ``laplace`` or ``gaussian`` for a formal guarantee on every released number.
- ``budget_scope: window`` (the default) bounds what all searches together may spend in a rolling window of
  ``window_days``. ``search`` gives each search id its own ``total_epsilon``; a coordinator can open new
  searches at will, so that scope alone bounds nothing across searches.
- ``clip`` must cover the metric's useful range: the released value's sensitivity is ``hi - lo`` (see
  :mod:`site_agent.privacy.release`), so a wide range means more noise for the same epsilon.

Example::

    privacy:
      budget_scope: window
      window_days: 30
      total_epsilon: 10.0
      mechanism: laplace
      release_epsilon: 0.5
      clip: [-1.0, 1.0]
      grid: 0.001
      min_cohort: 50
      dp_sgd: {target_epsilon: 3.0, max_grad_norm: 1.0, delta: 1.0e-5, accountant: prv}
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from protos.config import StrictModel
from site_agent.errors import SiteError

__all__ = ["BudgetScope", "DPSGDSettings", "Mechanism", "PrivacyError", "PrivacySettings"]

BudgetScope = Literal["search", "window"]
Mechanism = Literal["none", "laplace", "gaussian"]


class PrivacyError(SiteError):
    """The ledger cannot be read or written, or is used out of order (commit without reserve, release
    before commit), or a score to release is not a finite number. Messages carry ids and numbers only."""


class DPSGDSettings(StrictModel):
    """DP-SGD for the LoRA evaluator: give exactly one of ``target_epsilon`` or ``noise_multiplier``.

    With ``target_epsilon`` the trainer picks the noise that reaches it, so the ledger can reserve it up
    front. With ``noise_multiplier`` the epsilon depends on steps and sampling rate: the evaluator must work
    it out with the accountant before training and pass it to ``planned_epsilon(dp_sgd_epsilon=...)``.
    """

    target_epsilon: float | None = Field(default=None, gt=0, le=100)
    noise_multiplier: float | None = Field(default=None, gt=0, le=100)
    max_grad_norm: float = Field(default=1.0, gt=0, le=1000, description="per-sample gradient clipping norm")
    delta: float = Field(default=1e-5, gt=0, le=1e-2, description="keep below 1 / training-set size")
    accountant: Literal["prv", "rdp"] = "prv"

    @model_validator(mode="after")
    def _exactly_one(self) -> DPSGDSettings:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon or noise_multiplier")
        return self


class PrivacySettings(StrictModel):
    """Budget, release mechanism, clipping, grid and cohort floor of one site."""

    budget_scope: BudgetScope = Field(
        default="window", description="'window': one budget for everything in the last window_days; "
        "'search': one budget per search id")
    total_epsilon: float = Field(default=10.0, gt=0, le=1000, description="epsilon budget of one scope")
    window_days: int = Field(default=30, ge=1, le=3660, description="length of the rolling window")
    delta: float = Field(default=1e-6, gt=0, le=1e-2, description="delta of one Gaussian release")
    mechanism: Mechanism = Field(
        default="none", description="noise on released scores; 'none' gives no DP guarantee")
    release_epsilon: float = Field(default=1.0, gt=0, le=100, description="epsilon of one noisy release")
    clip: tuple[float, float] = Field(
        default=(-1.0, 1.0), description="[lo, hi]: the metric is clipped here; sensitivity = hi - lo")
    grid: float = Field(default=1e-3, gt=0, le=1.0, description="released scores are rounded to this grid")
    min_cohort: int = Field(default=50, ge=1, le=100_000_000,
                            description="a processed training set smaller than this is refused")
    dp_sgd: DPSGDSettings | None = Field(default=None, description="DP-SGD for the LoRA evaluator; off when null")

    @model_validator(mode="after")
    def _consistent(self) -> PrivacySettings:
        lo, hi = self.clip
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError("clip must be [lo, hi] with finite lo < hi")
        # The classic Gaussian-mechanism bound (Dwork & Roth, Thm A.1) holds for epsilon < 1 only.
        if self.mechanism == "gaussian" and self.release_epsilon >= 1.0:
            raise ValueError("the gaussian mechanism needs release_epsilon < 1 (use laplace above that)")
        return self

    @property
    def sensitivity(self) -> float:
        lo, hi = self.clip
        return hi - lo
