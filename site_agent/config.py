"""The site agent's YAML config (``autodp site run --config site.yaml``). Defaults run on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from protos.config import StrictModel, TLSFiles, load_yaml_model
from protos.views import EvaluatorKind, Ident
from site_agent.federated.settings import FederatedTrainingSettings
from site_agent.privacy.settings import PrivacySettings

__all__ = ["DataConfig", "SiteConfig", "load_config"]


class DataConfig(StrictModel):
    path: Path
    instruction_field: str = Field(default="instruction", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    answer_field: str = Field(default="answer", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class CacheConfig(StrictModel):
    dir: Path = Path("cache")  # embeddings and intermediate datasets (CRM); derived data, stays on site
    budget_mb: int = Field(default=2048, ge=1, le=10_000_000)
    min_store_ms: float = Field(
        default=50.0, ge=0, le=3_600_000, allow_inf_nan=False,
        description="store an intermediate dataset only when the operator steps run since the last stored "
                    "(or reused) one took at least this many milliseconds: a write costs ~10 ms, so quick "
                    "rule-based steps are recomputed instead; 0 stores every prefix")


class ScreeningConfig(StrictModel):
    """Processing Target Selection: a classifier of rows that need processing, trained at start-up."""

    model_dir: Path = Path("screening")
    label_column: str | None = Field(
        default="label", description="column whose value 'clean' marks a clean row; heuristics when absent")
    retrain: bool = False


class SiteConfig(StrictModel):
    site_id: Ident = Field(description="must equal the CN of this site's certificate")
    coordinator: str = Field(default="127.0.0.1:50051", description="host:port the site dials out to")
    coordinator_party: Ident = Field(default="coordinator", description="the coordinator's name in our audit log")
    tls_server_name: str | None = Field(
        default=None, description="name to check in the coordinator's certificate (default: the host)")
    tls: TLSFiles
    audit_key: Path
    state_dir: Path = Path("site-state")
    policy: Path
    data: DataConfig
    eval_data: DataConfig | None = Field(default=None, description="the site's clean held-out evaluation set")
    embedder: str | None = Field(default="use-m3", description="sentence embedder for DPS, screening and "
                                 "embedding-based operators; null disables them")
    cache: CacheConfig = CacheConfig()
    screening: ScreeningConfig | None = ScreeningConfig()
    llm: dict[str, object] | None = Field(
        default=None, description="site-local LLM for generation/optimization operators (see site_agent.llm)")
    evaluator: EvaluatorKind = EvaluatorKind.QUALITY_PROXY
    evaluator_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per evaluator kind, options for it (e.g. lora: {steps: 30})")
    privacy: PrivacySettings = PrivacySettings()
    federated_training: FederatedTrainingSettings = Field(
        default=FederatedTrainingSettings(), description="federated LoRA training after a search; off by default")
    rpc_timeout_s: float = Field(default=10.0, gt=0, le=300)
    poll_wait_ms: int = Field(default=2_000, ge=0, le=30_000)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=15.0, gt=0)


def load_config(path: Path, **overrides: object) -> SiteConfig:
    return load_yaml_model(path, SiteConfig, dict(overrides))
