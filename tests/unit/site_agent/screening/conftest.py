from collections.abc import Sequence

import numpy as np
import pytest


class HashingEmbedder:
    """A fast, deterministic stand-in for a sentence embedder: hashed character trigrams, L2-normalised.

    Similar texts get similar vectors, which is all the screening tests need from an embedder."""

    name = "hashing-test"
    dim = 64

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            codes = np.frombuffer(f"  {text.casefold()} ".encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            c = codes.astype(np.int64)
            tri = (c[:-2] * 1_000_003 + c[1:-1] * 10_007 + c[2:]) % 2_147_483_647
            np.add.at(out[i], tri % self.dim, 1.0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        unit: np.ndarray = out / norms
        return unit


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder()
