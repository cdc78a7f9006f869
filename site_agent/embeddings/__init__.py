"""Sentence embeddings: the Embedder protocol and registry (``base``), the bundled backends, a disk cache.

Backends registered here (both return float32, L2-normalised rows):

- ``use-m3``  Universal Sentence Encoder multilingual v3, numpy only: the default (Chinese included)
- ``minilm``  all-MiniLM-L6-v2 through sentence-transformers, English only, offline

Importing this package is cheap: models load on the first ``encode``.
"""

from site_agent.embeddings.base import Embedder, create_embedder, register_embedder, registered_embedders
from site_agent.embeddings.cache import EmbeddingCache, text_for_embedding
from site_agent.embeddings.sentence_transformers import MiniLMEmbedder
from site_agent.embeddings.use_m3 import UseM3Embedder

__all__ = [
    "Embedder",
    "EmbeddingCache",
    "MiniLMEmbedder",
    "UseM3Embedder",
    "create_embedder",
    "register_embedder",
    "registered_embedders",
    "text_for_embedding",
]

register_embedder(UseM3Embedder.name, UseM3Embedder)
register_embedder(MiniLMEmbedder.name, MiniLMEmbedder)
