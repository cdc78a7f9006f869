"""What a site prepares once at start-up and reuses for every task: its data, its held-out evaluation set,
embeddings (cached by dataset fingerprint), the screening classifier (PTS; trained once and persisted), the
prefix cache (CRM) and the factories of heavy models. Nothing here leaves the site."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protos.errors import ConfigError
from site_agent.cache.store import PrefixCache
from site_agent.config import SiteConfig
from site_agent.data.loading import load_pairs
from site_agent.embeddings.base import Embedder, create_embedder
from site_agent.embeddings.cache import EmbeddingCache
from site_agent.embeddings.memo import MemoEmbedder
from site_agent.llm.base import LLMBackend
from site_agent.operators.base import Batch
from site_agent.operators.context import RunContext
from site_agent.pipeline import SelectionMemo
from site_agent.screening.classifier import ScreeningModel, ScreeningReport, train_screener

__all__ = ["SiteResources", "prepare"]

log = logging.getLogger("autodp.site")


@dataclass
class SiteResources:
    data: Batch                     # training rows (instruction, answer; labels removed)
    eval_data: Batch | None
    embedder: Embedder | None
    embedding_cache: EmbeddingCache | None
    screener: ScreeningModel | None
    screening_report: ScreeningReport | None
    prefix_cache: PrefixCache | None
    llm_factory: Callable[[], LLMBackend] | None
    selection_memo: SelectionMemo | None = None  # screening and sampling of ``data``, per setting

    def __post_init__(self) -> None:
        if self.selection_memo is None:
            self.selection_memo = SelectionMemo(self.data)

    def context(self, seed: int) -> RunContext:
        embedder = self.embedder
        return RunContext(seed=seed, embedder_factory=(lambda: embedder) if embedder is not None else None,
                          llm_factory=self.llm_factory, screener=self.screener)

    def close(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.close()


def _llm_factory(cfg: SiteConfig) -> Callable[[], LLMBackend] | None:
    if cfg.llm is None:
        return None
    from site_agent.llm.factory import LLMConfig, create_llm

    try:
        llm_cfg = LLMConfig.model_validate(cfg.llm)
    except Exception as e:  # pydantic's message names keys, never data
        raise ConfigError(f"site config 'llm': {e}") from None
    return lambda: create_llm(llm_cfg)


def _screener(cfg: SiteConfig, data: Batch, labels: list[str] | None, embedder: Embedder | None,
              cache: EmbeddingCache | None) -> tuple[ScreeningModel | None, ScreeningReport | None]:
    sc = cfg.screening
    if sc is None or embedder is None:
        return None, None
    model_dir: Path = sc.model_dir
    if not sc.retrain and (model_dir / "model.json").is_file():
        model = ScreeningModel.load(model_dir, embedder=embedder, cache=cache)
        log.info("screening model %s loaded", model.version)
        return model, None
    batch = dict(data)
    if labels is not None:
        batch["label"] = labels
    model, report = train_screener(batch, None, embedder, cache=cache, label_column="label")
    model.save(model_dir)
    log.info("screening model %s trained (%s labels): precision %.3f recall %.3f F1 %.3f on %d held-out rows",
             model.version, report.label_source, report.precision, report.recall, report.f1, report.holdout_rows)
    return model, report


def prepare(cfg: SiteConfig) -> SiteResources:
    label_col = cfg.screening.label_column if cfg.screening is not None else None
    extra = (label_col,) if label_col else ()
    data = load_pairs(cfg.data.path, cfg.data.instruction_field, cfg.data.answer_field, extra)
    labels = data.pop(label_col) if label_col and label_col in data else None
    eval_data = None
    if cfg.eval_data is not None:
        eval_data = load_pairs(cfg.eval_data.path, cfg.eval_data.instruction_field, cfg.eval_data.answer_field)
    embedder = embedding_cache = None
    if cfg.embedder is not None:
        try:
            # every consumer (DPS, screening, operators) shares one per-text memo: no text embedded twice
            embedder = MemoEmbedder(create_embedder(cfg.embedder))
        except ValueError as e:
            raise ConfigError(f"site config 'embedder': {e}") from None
        embedding_cache = EmbeddingCache(cfg.cache.dir / "embeddings")
    screener, report = _screener(cfg, data, labels, embedder, embedding_cache)
    prefix_cache = PrefixCache(cfg.cache.dir / "prefix", cfg.cache.budget_mb * 1024 * 1024,
                               min_store_seconds=cfg.cache.min_store_ms / 1000.0)
    return SiteResources(data, eval_data, embedder, embedding_cache, screener, report, prefix_cache,
                         _llm_factory(cfg))
