"""Never embed the same text twice: a per-text, in-memory memo in front of an embedder.

A search runs dozens of strategies over the same rows. Operators that embed (``qa_mismatch_filter``,
``diversity_select``) and the screener (behind ``screening_threshold``) each see a different subset of
those rows per task, so the whole-list disk cache (``EmbeddingCache``: one matrix per ordered text list)
misses every time a filter has dropped a row, and the embedder recomputed texts it had already embedded.
Measured in ``bench/bench_search.py`` before this memo: embedding was ~85% of the fully accelerated
setting's operator time.

:class:`MemoEmbedder` wraps an embedder and keeps one vector per distinct text (key: a 16-byte BLAKE2b
digest of the text; the text itself is not kept), least recently used first out once the memo holds
``max_bytes`` of vectors. Only the texts it has not seen are handed to the wrapped embedder, in one call.
The disk cache hands it every matrix it loads (``remember``), so
what the site embedded at start-up (every row, instruction and answer, for DPS and screening) is never
embedded again. It has the wrapped embedder's ``name`` and ``dim``: the vectors are the same model's, so every cache key
built on them stays valid. Memory only: nothing is written to disk, and a new process starts empty.

The first vector computed for a text is the one returned ever after, so results do not depend on which
other texts happened to share a batch with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from site_agent.embeddings.base import Embedder
from site_agent.errors import SiteError

__all__ = ["DEFAULT_MEMO_BYTES", "MemoEmbedder"]

DEFAULT_MEMO_BYTES = 256 * 1024 * 1024  # ~130k vectors of 512 float32


def _digest(text: str) -> bytes:
    # surrogatepass: a lone surrogate (broken export) must still hash, not raise
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class MemoEmbedder:
    """An :class:`Embedder` that embeds each distinct text once (see the module doc)."""

    def __init__(self, inner: Embedder, max_bytes: int = DEFAULT_MEMO_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.capacity = max_bytes // (4 * max(1, inner.dim))
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Keep vectors computed elsewhere (the disk cache's matrix of these texts, by the same model) for
        the texts not held yet: the site's start-up embedding of its whole dataset primes the memo."""
        if vectors.shape != (len(texts), self.dim) or self.capacity == 0:
            return
        for text, vec in zip(texts, vectors, strict=True):
            key = _digest(text)
            if key not in self._vectors:
                self._vectors[key] = np.array(vec, dtype=np.float32)
        while len(self._vectors) > self.capacity:
            self._vectors.popitem(last=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        keys = [_digest(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            vec = self._vectors.get(key)
            if vec is None:
                missing.setdefault(key, []).append(i)
            else:
                self._vectors.move_to_end(key)
                out[i] = vec
        self.hits += len(texts) - sum(len(v) for v in missing.values())
        if missing:
            first = [positions[0] for positions in missing.values()]
            new = np.asarray(self.inner.encode([texts[i] for i in first], batch_size), dtype=np.float32)
            if new.shape != (len(first), self.dim):
                raise SiteError(f"embedder '{self.name}' returned shape {new.shape} for {len(first)} texts")
            self.misses += len(first)
            for (key, positions), vec in zip(missing.items(), new, strict=True):
                out[positions] = vec
                if self.capacity > 0:
                    self._vectors[key] = vec.copy()
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)
        return out
