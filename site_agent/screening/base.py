"""Processing Target Selection (PTS): which rows need processing at all."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from site_agent.operators.base import Batch

__all__ = ["Screener"]


class Screener(Protocol):
    version: str  # an identifier of the trained model (part of cache keys)

    def noisy_proba(self, batch: Batch) -> np.ndarray:
        """P(row needs processing), float64 array of len(batch)."""
        ...

    def noisy_mask(self, batch: Batch, threshold: float = 0.5) -> np.ndarray:
        """Boolean array: True where the row needs processing."""
        ...
