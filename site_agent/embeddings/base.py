"""Sentence embeddings behind one interface (a plain-dict registry of backends)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Embedder", "create_embedder", "register_embedder", "registered_embedders"]


class Embedder(Protocol):
    name: str  # an identifier; part of every cache key built on these vectors
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised (so a dot product is a cosine similarity)."""
        ...


_EMBEDDERS: dict[str, Callable[..., Embedder]] = {}


def register_embedder(name: str, factory: Callable[..., Embedder]) -> None:
    if name in _EMBEDDERS:
        raise ValueError(f"embedder '{name}' is already registered")
    _EMBEDDERS[name] = factory


def registered_embedders() -> list[str]:
    return sorted(_EMBEDDERS)


def create_embedder(name: str, **options: Any) -> Embedder:
    try:
        factory = _EMBEDDERS[name]
    except KeyError:
        raise ValueError(f"unknown embedder '{name}'; known: {registered_embedders()}") from None
    return factory(**options)
