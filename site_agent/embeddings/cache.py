"""A disk cache of embedding matrices, so a site embeds its dataset once and every task reuses it.

One entry is the whole ``(len(texts), dim)`` matrix of one embedder over one ordered list of texts.
Its key is a SHA-256 over the embedder name, its dimension and every text, each length-prefixed (so
``["ab", "c"]`` and ``["a", "bc"]`` differ); the file name is that digest, so no text or data
identifier ever appears on disk outside the vectors. Files are ``.npy``, written to a temporary file
and moved into place with ``os.replace`` (a reader never sees half a file), read with
``allow_pickle=False``. A file of the wrong shape or dtype, or one that does not parse, is recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from site_agent.embeddings.memo import MemoEmbedder

if TYPE_CHECKING:
    from site_agent.embeddings.base import Embedder
    from site_agent.operators.base import Batch

__all__ = ["EmbeddingCache", "cache_key", "text_for_embedding"]

log = logging.getLogger(__name__)


def text_for_embedding(batch: Batch) -> list[str]:
    """One text per row: the instruction, a line break, the answer (what DPS and screening embed)."""
    from site_agent.operators.base import batch_size

    batch_size(batch)  # checks the required columns and equal lengths
    return [f"{q}\n{a}" for q, a in zip(batch["instruction"], batch["answer"], strict=True)]


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def cache_key(embedder_name: str, dim: int, texts: Sequence[str]) -> str:
    h = hashlib.sha256(b"autodp-embeddings-v1")
    h.update(_framed(embedder_name.encode("utf-8")))
    h.update(dim.to_bytes(8, "big"))
    h.update(len(texts).to_bytes(8, "big"))
    for text in texts:
        # surrogatepass: a lone surrogate (broken export) must still hash, not raise
        h.update(_framed(text.encode("utf-8", "surrogatepass")))
    return h.hexdigest()


class EmbeddingCache:
    """``get_or_compute`` returns the cached matrix, or computes, stores and returns it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path_for(self, embedder: Embedder, texts: Sequence[str]) -> Path:
        return self.root / f"{cache_key(embedder.name, embedder.dim, texts)}.npy"

    def _load(self, path: Path, n: int, dim: int) -> np.ndarray | None:
        try:
            arr = np.asarray(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("embedding cache entry unreadable; recomputing")
            return None
        if arr.dtype != np.float32 or arr.shape != (n, dim):
            log.warning("embedding cache entry has the wrong shape or dtype; recomputing")
            return None
        return arr

    def _store(self, path: Path, arr: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
        path = self.path_for(embedder, texts)
        cached = self._load(path, len(texts), embedder.dim)
        if cached is not None:
            self.hits += 1
            if isinstance(embedder, MemoEmbedder):
                embedder.remember(texts, cached)
            return cached
        self.misses += 1
        arr = np.ascontiguousarray(embedder.encode(texts), dtype=np.float32)
        if arr.shape != (len(texts), embedder.dim):
            from site_agent.errors import SiteError

            raise SiteError(f"embedder '{embedder.name}' returned shape {arr.shape} for {len(texts)} texts")
        self._store(path, arr)
        log.info("embedded %d texts with %s", len(texts), embedder.name)
        return arr
