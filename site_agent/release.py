"""Score release. For now: rounding to a grid, so a released score carries no more precision than the
site chose to give. The privacy ledger and optional noise (Laplace/Gaussian) join here."""

from __future__ import annotations

import math

__all__ = ["quantize"]


def quantize(score: float, grid: float) -> float:
    if not math.isfinite(score):
        raise ValueError("score must be finite")
    if grid <= 0:
        raise ValueError("grid must be positive")
    steps = round(score / grid)
    # round() again to strip binary noise such as 0.30000000000000004 from the released number
    return round(steps * grid, max(0, -math.floor(math.log10(grid))) + 2)
