from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from site_agent.embeddings.cache import EmbeddingCache, cache_key
from site_agent.errors import SiteError


class CountingEmbedder:
    """Deterministic toy vectors (character histogram); counts how many texts it was asked to encode."""

    dim = 8

    def __init__(self, name: str = "counting") -> None:
        self.name = name
        self.calls = 0

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t:
                out[i, ord(ch) % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1.0)
        return out


def test_second_call_is_read_from_disk(tmp_path: Path) -> None:
    emb, cache = CountingEmbedder(), EmbeddingCache(tmp_path / "emb")
    texts = ["alpha", "beta", "gamma"]
    first = cache.get_or_compute(emb, texts)
    again = EmbeddingCache(tmp_path / "emb").get_or_compute(emb, texts)  # a new process would do this
    assert emb.calls == 1 and np.array_equal(first, again) and again.dtype == np.float32
    files = list((tmp_path / "emb").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    assert "alpha" not in files[0].name  # the name is a digest, never text


def test_key_covers_name_dim_order_and_boundaries() -> None:
    base = cache_key("m", 8, ["ab", "c"])
    assert base != cache_key("m", 8, ["a", "bc"])  # length-prefixed: no boundary ambiguity
    assert base != cache_key("m", 8, ["c", "ab"])
    assert base != cache_key("other", 8, ["ab", "c"])
    assert base != cache_key("m", 16, ["ab", "c"])
    assert base != cache_key("m", 8, ["ab", "c", ""])
    assert cache_key("m", 8, ["\ud800 broken surrogate"])  # hashes rather than raising


def test_other_embedder_or_texts_are_other_entries(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    a, b = CountingEmbedder("a"), CountingEmbedder("b")
    cache.get_or_compute(a, ["x", "y"])
    cache.get_or_compute(b, ["x", "y"])
    cache.get_or_compute(a, ["y", "x"])
    assert (a.calls, b.calls) == (2, 1) and len(list(tmp_path.glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "shape", "pickle"])
def test_a_bad_entry_is_recomputed(tmp_path: Path, damage: str) -> None:
    emb, cache = CountingEmbedder(), EmbeddingCache(tmp_path)
    texts = ["one", "two"]
    good = cache.get_or_compute(emb, texts)
    path = cache.path_for(emb, texts)
    if damage == "garbage":
        path.write_bytes(b"not an npy file")
    elif damage == "shape":
        np.save(path, np.zeros((3, 8), dtype=np.float32))
    else:  # an object array needs pickle to load: it must be refused, not unpickled
        with path.open("wb") as f:
            np.save(f, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    again = cache.get_or_compute(emb, texts)
    assert emb.calls == 2 and np.array_equal(again, good)
    assert np.array_equal(np.load(path, allow_pickle=False), good)  # repaired on disk
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_an_embedder_returning_the_wrong_shape_is_an_error(tmp_path: Path) -> None:
    class Broken(CountingEmbedder):
        def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
            return np.zeros((len(texts) + 1, self.dim), dtype=np.float32)

    with pytest.raises(SiteError, match="shape"):
        EmbeddingCache(tmp_path).get_or_compute(Broken(), ["a"])
    assert not list(tmp_path.glob("*.npy"))
