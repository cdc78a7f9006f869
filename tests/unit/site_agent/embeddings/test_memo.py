from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from site_agent.embeddings.memo import MemoEmbedder
from site_agent.errors import SiteError
from tests.unit.site_agent.embeddings.test_cache import CountingEmbedder


class RecordingEmbedder(CountingEmbedder):
    """test_cache's toy vectors; also records every list of texts it was asked to encode."""

    def __init__(self) -> None:
        super().__init__("recording")
        self.asked: list[list[str]] = []

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.asked.append(list(texts))
        return super().encode(texts, batch_size)


def test_only_unseen_texts_reach_the_embedder_and_vectors_are_the_same() -> None:
    inner = RecordingEmbedder()
    memo = MemoEmbedder(inner)
    assert (memo.name, memo.dim) == ("recording", 8)
    first = memo.encode(["alpha", "beta", "alpha"])
    assert inner.asked == [["alpha", "beta"]]  # a repeat inside one call is embedded once
    second = memo.encode(["beta", "gamma", "alpha"])
    assert inner.asked[-1] == ["gamma"]
    direct = RecordingEmbedder().encode(["alpha", "beta", "gamma"])
    assert np.array_equal(first, direct[[0, 1, 0]]) and np.array_equal(second, direct[[1, 2, 0]])
    assert second.dtype == np.float32 and second.shape == (3, 8)
    memo.encode(["alpha", "beta", "gamma"])
    assert len(inner.asked) == 2 and memo.misses == 3 and len(memo) == 3


def test_empty_input_and_odd_text() -> None:
    inner = RecordingEmbedder()
    memo = MemoEmbedder(inner)
    assert memo.encode([]).shape == (0, 8) and inner.asked == []
    lone = "a\ud800b"  # a lone surrogate from a broken export still hashes
    assert memo.encode([lone, ""]).shape == (2, 8)
    memo.encode([lone])
    assert len(inner.asked) == 1


def test_least_recently_used_text_leaves_first_when_full() -> None:
    inner = RecordingEmbedder()
    memo = MemoEmbedder(inner, max_bytes=2 * 8 * 4)  # room for two vectors
    memo.encode(["a", "b"])
    memo.encode(["a"])  # "a" is now the most recent
    memo.encode(["c"])  # evicts "b"
    assert len(memo) == 2
    asked = len(inner.asked)
    memo.encode(["a", "c"])
    assert len(inner.asked) == asked  # both still held
    memo.encode(["b"])
    assert inner.asked[-1] == ["b"]


def test_zero_capacity_keeps_nothing_and_a_bad_embedder_is_an_error() -> None:
    inner = RecordingEmbedder()
    memo = MemoEmbedder(inner, max_bytes=0)
    memo.encode(["a"])
    memo.encode(["a"])
    assert len(inner.asked) == 2 and len(memo) == 0

    class Short(RecordingEmbedder):
        def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
            return super().encode(texts)[:-1]

    with pytest.raises(SiteError, match="returned shape"):
        MemoEmbedder(Short()).encode(["x", "y"])
    with pytest.raises(ValueError):
        MemoEmbedder(inner, max_bytes=-1)


def test_the_disk_cache_primes_the_memo(tmp_path: Path) -> None:
    from site_agent.embeddings.cache import EmbeddingCache

    texts = ["alpha", "beta", "gamma"]
    EmbeddingCache(tmp_path).get_or_compute(RecordingEmbedder(), texts)  # start-up, an earlier process
    inner = RecordingEmbedder()
    memo = MemoEmbedder(inner)
    loaded = EmbeddingCache(tmp_path).get_or_compute(memo, texts)  # read from disk: nothing embedded
    assert inner.asked == []
    again = memo.encode(["gamma", "alpha"])  # a filter's output: a different list, still nothing embedded
    assert inner.asked == [] and np.array_equal(again, loaded[[2, 0]])
    memo.encode(["delta"])
    assert inner.asked == [["delta"]]
