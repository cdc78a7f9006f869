"""Processing Target Selection (PTS): a classifier of the rows that need processing, trained on the site.

``train_screener`` builds the features of :mod:`site_agent.screening.features`, standardises them and fits
a logistic regression with balanced class weights (noise is the minority class), C = 0.3 and the
embedding columns down-weighted (``EMBEDDING_WEIGHT``). Precision, recall and F1 are measured on a
stratified held-out share of the rows; the model that is returned is then refit on all rows with the
same settings. Apply it to the whole dataset, as trained: some signals (duplicates, rare characters)
look at the rest of the batch.

Labels (True = needs processing), in order of preference:

1. ``labels`` when given;
2. the batch's ``label_column`` (default ``label``) when present: any value other than ``clean``;
3. otherwise heuristics: a row is noisy when any check of
   :func:`site_agent.evaluation.quality_proxy.row_defects` fires (markup, garbled text, whitespace,
   short/empty answer, repetition loop, duplicate). The classifier then generalises those rules with
   the embedding (and can be no better than the rules on what they miss).

A model is saved without pickle: ``weights.npz`` (read with ``allow_pickle=False``) and ``model.json``
(feature list, embedder, threshold, metrics, version). ``version`` is the first 16 hex digits of a
SHA-256 over the parameters, so a cache keyed on it changes whenever the model does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from site_agent.embeddings.base import Embedder, create_embedder
from site_agent.embeddings.cache import EmbeddingCache
from site_agent.errors import DataError
from site_agent.operators.base import Batch, batch_size
from site_agent.screening.features import HANDCRAFTED, screening_features

__all__ = ["EMBEDDING_WEIGHT", "FORMAT", "ScreeningModel", "ScreeningReport", "resolve_labels", "train_screener"]

FORMAT = "autodp-screener/1"
# Standardised embedding columns are shrunk by this factor (a stronger L2 penalty on their weights):
# 512 embedding weights fitted on a few thousand rows learn the topic mix of the noisy rows and flag
# clean rows on the same topics. Measured on the benchmark (use-m3, 5-fold CV, site hospital-a, C=0.3):
# F1 0.870 at 0.05, 0.866 at 0.1, 0.840 at 0.3, 0.776 at 1 (plain standardisation); the hand-crafted
# signals alone give 0.871. The embedding stays in at a small weight for noise the signals do not name.
EMBEDDING_WEIGHT = 0.05
_ARRAYS = ("mean", "scale", "coef", "intercept")


@dataclass(frozen=True)
class ScreeningReport:
    """How the classifier did on the held-out rows (counts and rates only)."""

    label_source: str  # "given", "column" or "heuristic"
    rows: int
    noisy_rows: int
    train_rows: int
    holdout_rows: int
    precision: float
    recall: float
    f1: float
    threshold: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScreeningModel:
    """A trained screener (implements the Screener protocol); embeds rows with the embedder it names."""

    def __init__(self, *, embedder_name: str, embedding_dim: int, arrays: Mapping[str, np.ndarray],
                 threshold: float = 0.5, metrics: dict[str, Any] | None = None,
                 embedder: Embedder | None = None, cache: EmbeddingCache | None = None) -> None:
        """``arrays``: ``mean`` and ``scale`` (standardisation), ``coef`` (one per feature), ``intercept``."""
        width = embedding_dim + len(HANDCRAFTED)
        try:
            self.arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.float64).reshape(-1) for k in _ARRAYS}
        except (KeyError, TypeError, ValueError):
            raise DataError("screening model parameters are missing or not numeric") from None
        shapes_ok = all(self.arrays[k].shape == (width,) for k in ("mean", "scale", "coef"))
        if not shapes_ok or self.arrays["intercept"].shape != (1,) or \
                not all(np.isfinite(v).all() for v in self.arrays.values()) or (self.arrays["scale"] == 0).any():
            raise DataError(f"screening model parameters do not fit {width} features")
        if not 0.0 < threshold < 1.0:
            raise DataError(f"screening threshold must be within (0, 1), got {threshold}")
        self.embedder_name, self.embedding_dim, self.threshold = embedder_name, embedding_dim, float(threshold)
        self.features = [f"embedding[{embedding_dim}]", *HANDCRAFTED]
        self.metrics = dict(metrics or {})
        self.cache = cache
        self._embedder = embedder
        self.version = self._digest()

    def _digest(self) -> str:
        h = hashlib.sha256(FORMAT.encode())
        h.update(json.dumps([self.embedder_name, self.embedding_dim, self.features, self.threshold]).encode())
        for name in _ARRAYS:
            h.update(name.encode() + self.arrays[name].tobytes())
        return h.hexdigest()[:16]

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = create_embedder(self.embedder_name)
        if self._embedder.name != self.embedder_name or self._embedder.dim != self.embedding_dim:
            raise DataError(f"screening model needs embedder '{self.embedder_name}' ({self.embedding_dim}-d), "
                            f"got '{self._embedder.name}'")
        return self._embedder

    def proba_from_features(self, x: np.ndarray) -> np.ndarray:
        a = self.arrays
        z = ((x - a["mean"]) / a["scale"]) @ a["coef"] + a["intercept"][0]
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))), dtype=np.float64)

    def noisy_proba(self, batch: Batch) -> np.ndarray:
        if batch_size(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.proba_from_features(screening_features(batch, self.embedder(), self.cache))

    def noisy_mask(self, batch: Batch, threshold: float | None = None) -> np.ndarray:
        """True where the row needs processing; ``threshold`` defaults to the model's own."""
        return self.noisy_proba(batch) >= (self.threshold if threshold is None else threshold)

    def save(self, directory: Path) -> None:
        """weights.npz, then model.json (the last file written marks a complete model), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": self.version, "embedder": self.embedder_name,
                "embedding_dim": self.embedding_dim, "features": self.features, "threshold": self.threshold,
                "metrics": self.metrics}
        a = self.arrays
        _atomic(directory, "weights.npz",
                lambda f: np.savez(f, mean=a["mean"], scale=a["scale"], coef=a["coef"], intercept=a["intercept"]))
        _atomic(directory, "model.json", lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))

    @classmethod
    def load(cls, directory: Path, embedder: Embedder | None = None,
             cache: EmbeddingCache | None = None) -> ScreeningModel:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "model.json").read_text(encoding="utf-8"))
            with np.load(directory / "weights.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in _ARRAYS}
        except FileNotFoundError:
            raise DataError("no trained screening model in the model folder; train one first") from None
        except (OSError, ValueError, KeyError):
            raise DataError("screening model files are unreadable; retrain the model") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"screening model is not in format '{FORMAT}'; retrain the model")
        try:
            model = cls(embedder_name=str(meta["embedder"]), embedding_dim=int(meta["embedding_dim"]),
                        threshold=float(meta["threshold"]), metrics=dict(meta.get("metrics") or {}),
                        embedder=embedder, cache=cache, arrays=arrays)
        except (KeyError, TypeError, ValueError):
            raise DataError("screening model metadata is incomplete; retrain the model") from None
        if meta.get("features") != model.features or meta.get("version") != model.version:
            raise DataError("screening model files do not match their recorded version; retrain the model")
        return model


def _atomic(directory: Path, name: str, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_labels(batch: Batch, labels: Sequence[bool] | None = None,
                   label_column: str = "label") -> tuple[np.ndarray, str]:
    """The noisy flags of the rows and where they came from ("given", "column" or "heuristic")."""
    n = batch_size(batch)
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"got {len(labels)} labels for {n} rows")
        return np.asarray([bool(v) for v in labels], dtype=bool), "given"
    if label_column in batch:
        return np.asarray([v.strip().casefold() != "clean" for v in batch[label_column]], dtype=bool), "column"
    from site_agent.evaluation.quality_proxy import row_defects

    return np.asarray([bool(d) for d in row_defects(batch)], dtype=bool), "heuristic"


def _fit(x: np.ndarray, y: np.ndarray, dim: int, seed: int, c: float) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature: leave it at zero rather than divide by zero
    scale[:dim] /= EMBEDDING_WEIGHT
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    clf.fit((x - mean) / scale, y)
    return {"mean": mean, "scale": scale, "coef": clf.coef_.reshape(-1), "intercept": clf.intercept_.reshape(-1)}


def train_screener(batch: Batch, labels: Sequence[bool] | None, embedder: Embedder, *, seed: int = 0,
                   holdout: float = 0.2, cache: EmbeddingCache | None = None, label_column: str = "label",
                   c: float = 0.3) -> tuple[ScreeningModel, ScreeningReport]:
    """Train the screener; metrics from a stratified held-out split, final weights refit on every row."""
    start = time.perf_counter()
    y, source = resolve_labels(batch, labels, label_column)
    if not 0.0 < holdout < 1.0:
        raise DataError(f"holdout share must be within (0, 1), got {holdout}")
    n_noisy = int(y.sum())
    n_test = max(2, round(holdout * len(y)))
    if min(n_noisy, len(y) - n_noisy) < 2 or len(y) - n_test < 4:
        raise DataError(f"screening needs at least 2 clean and 2 noisy rows and a training split; "
                        f"got {n_noisy} noisy of {len(y)}")
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.model_selection import train_test_split

    x = screening_features(batch, embedder, cache)
    train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y, random_state=seed)
    probe = ScreeningModel(embedder_name=embedder.name, embedding_dim=embedder.dim,
                           arrays=_fit(x[train], y[train], embedder.dim, seed, c))
    pred = probe.proba_from_features(x[test]) >= probe.threshold
    p, r, f1, _ = precision_recall_fscore_support(y[test], pred, average="binary", zero_division=0.0)
    model = ScreeningModel(embedder_name=embedder.name, embedding_dim=embedder.dim, embedder=embedder, cache=cache,
                           arrays=_fit(x, y, embedder.dim, seed, c))
    report = ScreeningReport(label_source=source, rows=len(y), noisy_rows=n_noisy, train_rows=len(train),
                             holdout_rows=len(test), precision=float(p), recall=float(r), f1=float(f1),
                             threshold=model.threshold, seconds=time.perf_counter() - start)
    model.metrics = {k: v for k, v in report.as_dict().items() if k != "seconds"}
    return model, report
