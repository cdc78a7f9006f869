"""``minilm``: all-MiniLM-L6-v2 through sentence-transformers, from the bundled model package, offline.

English-only (its tokenizer and training data are English): use it for English sites that prefer it;
the default is ``use-m3`` (see :mod:`site_agent.embeddings.use_m3`). torch and sentence-transformers are
imported on the first ``encode``, never at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from site_agent.embeddings.use_m3 import normalise_rows

__all__ = ["MiniLMEmbedder"]


class MiniLMEmbedder:
    """384-d English sentence embeddings on CPU; the model loads on the first ``encode``."""

    name = "minilm"
    dim = 384

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        from protos.bundled_models import minilm_folder

        # local_files_only: the folder is complete on disk; never ask a hub for anything. No code from the
        # folder runs, and only its safetensors weights are read.
        return SentenceTransformer(str(minilm_folder()), device=self.device, local_files_only=True,
                                   trust_remote_code=False, model_kwargs={"use_safetensors": True})

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            self._model = self._load()
        out = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return normalise_rows(np.asarray(out))
