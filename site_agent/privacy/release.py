"""Score release: clip -> add noise -> quantize, and the epsilon a task plans to spend.

Sensitivity. A released score is one number computed from the site's data (a model trained on the
processed set, measured on the held-out set). Without DP-SGD nothing bounds how much one record can move
the trained model, so nothing bounds how much it can move the metric either -- except the clip: once the
metric is clipped to ``[lo, hi]``, changing any one record (or any number of them) changes the clipped value
by at most ``hi - lo``. So the L1 and L2 sensitivity of one released value is ``Δ = hi - lo``. This is
deliberately the worst case: a record of the held-out set moves one item of a mean over n items (``Δ/n``),
but a training record can move the model, hence every item, at once. (DP-SGD bounds the model's
dependence on a training record, but the score is still computed from the held-out records, so the
release is accounted for on its own and the two compose in the ledger.)

Mechanisms (for one release of one number, neighbouring datasets differ in one record):

- Laplace: add ``Lap(b)`` with ``b = Δ / ε``: ``ε``-DP. Its variance is ``2 b²``.
- Gaussian: add ``N(0, σ²)`` with ``σ = Δ · sqrt(2 ln(1.25 / δ)) / ε``: ``(ε, δ)``-DP for ``ε < 1``
  (Dwork & Roth 2014, Theorem A.1); the settings refuse ``ε >= 1`` for it.
- none: no noise and no guarantee; only the grid limits what a score can carry.

Order. The metric is clipped first (that is what bounds the sensitivity), noise is added, and the noisy
value is quantized last. Quantizing after the noise is post-processing: any function of a DP output is
exactly as DP, so the guarantee holds. Quantizing *before* the noise would not hurt privacy but would
spend the grid's coarseness for nothing. The noisy value is not clipped again: that would also be safe,
but it biases the released value towards the middle of the range.

Seeding. The noise for a task comes from a generator seeded with SHA-256 of a per-site secret and the
task id (:func:`release_rng`; the ledger keeps the secret). A task replayed after a crash therefore draws
the same noise and releases the same value, so a replay cannot be used to average noise away. The
secret matters: a generator seeded from the task id alone could be recomputed by the coordinator, who
would subtract the noise and learn the exact score.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from site_agent.privacy.settings import PrivacyError, PrivacySettings

__all__ = [
    "check_cohort",
    "clip_score",
    "gaussian_sigma",
    "laplace_scale",
    "noise_std",
    "planned_delta",
    "planned_epsilon",
    "quantize",
    "release_rng",
    "release_score",
]


def quantize(score: float, grid: float) -> float:
    """Round ``score`` to the nearest multiple of ``grid``."""
    if not math.isfinite(score):
        raise ValueError("score must be finite")
    if grid <= 0:
        raise ValueError("grid must be positive")
    steps = round(score / grid)
    # round() again to strip binary noise such as 0.30000000000000004 from the released number
    return round(steps * grid, max(0, -math.floor(math.log10(grid))) + 2)


def clip_score(raw: float, settings: PrivacySettings) -> float:
    lo, hi = settings.clip
    return min(max(raw, lo), hi)


def laplace_scale(settings: PrivacySettings) -> float:
    """``b = Δ / ε`` of the Laplace mechanism."""
    return settings.sensitivity / settings.release_epsilon


def gaussian_sigma(settings: PrivacySettings) -> float:
    """``σ = Δ · sqrt(2 ln(1.25 / δ)) / ε`` of the Gaussian mechanism."""
    return settings.sensitivity * math.sqrt(2.0 * math.log(1.25 / settings.delta)) / settings.release_epsilon


def noise_std(settings: PrivacySettings) -> float:
    """Standard deviation of the noise one release carries (0 for ``none``)."""
    if settings.mechanism == "laplace":
        return math.sqrt(2.0) * laplace_scale(settings)
    if settings.mechanism == "gaussian":
        return gaussian_sigma(settings)
    return 0.0


def release_rng(task_id: str, secret: bytes) -> np.random.Generator:
    """The noise generator of one task: the same (secret, task id) always gives the same draws."""
    digest = hashlib.sha256(secret + b"\x00" + task_id.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def release_score(raw: float, settings: PrivacySettings, rng: np.random.Generator) -> float:
    """The number that may leave the site for a raw metric value: clip, add noise, quantize.

    Call it only after the ledger has debited the task (``PrivacyLedger.release`` does both in order).
    """
    if not math.isfinite(raw):
        raise PrivacyError("the score to release is not a finite number")
    value = clip_score(raw, settings)
    if settings.mechanism == "laplace":
        value += float(rng.laplace(0.0, laplace_scale(settings)))
    elif settings.mechanism == "gaussian":
        value += float(rng.normal(0.0, gaussian_sigma(settings)))
    return quantize(value, settings.grid)


def planned_epsilon(settings: PrivacySettings, uses_dp_sgd: bool, dp_sgd_epsilon: float | None = None) -> float:
    """The most a task may spend, reserved before it runs: DP-SGD epsilon + release epsilon.

    The two compose by basic sequential composition (epsilons add, deltas add; see the ledger). With
    ``dp_sgd.noise_multiplier`` the DP-SGD epsilon depends on the run's steps and sampling rate, so the
    evaluator must compute it with its accountant before training and pass it as ``dp_sgd_epsilon``.
    """
    release = settings.release_epsilon if settings.mechanism != "none" else 0.0
    if not uses_dp_sgd:
        return release
    if settings.dp_sgd is None:
        raise PrivacyError("DP-SGD was asked for but the site's privacy settings have no dp_sgd section")
    if settings.dp_sgd.target_epsilon is not None:
        return settings.dp_sgd.target_epsilon + release
    if dp_sgd_epsilon is None or not math.isfinite(dp_sgd_epsilon) or dp_sgd_epsilon < 0:
        raise PrivacyError("dp_sgd uses noise_multiplier: pass the accountant's epsilon for the planned run")
    return dp_sgd_epsilon + release


def planned_delta(settings: PrivacySettings, uses_dp_sgd: bool) -> float:
    """The delta a task adds under basic composition: Gaussian release delta + DP-SGD delta."""
    delta = settings.delta if settings.mechanism == "gaussian" else 0.0
    if uses_dp_sgd and settings.dp_sgd is not None:
        delta += settings.dp_sgd.delta
    return delta


def check_cohort(n_rows: int, minimum: int) -> bool:
    """True when a processed training set is large enough to train on and score.

    The agent calls it after the strategy ran and before evaluation: a pipeline that whittles the data
    down to a handful of records would otherwise let a score single them out. On ``False`` the task is
    answered ``REJECTED_COHORT`` and its reservation is committed at 0 (nothing was released).
    """
    return n_rows >= minimum
