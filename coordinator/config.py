"""The coordinator's YAML config (``autodp coordinator serve --config coordinator.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from protos.config import StrictModel, TLSFiles, load_yaml_model
from protos.views import EvalSettings, Ident

__all__ = ["CoordinatorConfig", "SearchConfig", "TLSFiles", "load_config"]


class AgentConfig(StrictModel):
    """The LLM meta-agent's OpenAI-compatible endpoint (``vllm serve`` in production); never sees data."""

    base_url: str = Field(description="server root, e.g. http://127.0.0.1:8000")
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_retries: int = Field(default=2, ge=0, le=10)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    allow_non_local: bool = False
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_reasks: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, gt=0, le=60)
    max_tokens: int | None = Field(default=None, ge=64, le=32_768)


class SearchConfig(StrictModel):
    search_id: Ident = "search-1"
    proposer: str = Field(default="random", pattern=r"^(random|evolutionary|tpe|llm)$")
    rounds: int = Field(default=5, ge=1, le=100)
    strategies_per_round: int = Field(default=4, ge=1, le=64)
    max_strategy_length: int = Field(default=3, ge=1, le=16)
    seed: int = Field(default=0, ge=0)
    settings: EvalSettings = EvalSettings()
    min_sites: int = Field(default=1, ge=1, description="wait for this many sites' hello before round 1")
    wait_for_sites_s: float = Field(default=120.0, gt=0)
    round_deadline_s: float = Field(default=600.0, gt=0)
    task_deadline_s: int = Field(default=900, ge=1, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    report: Path = Path("search-report.json")
    agent: AgentConfig | None = Field(default=None, description="required when proposer is llm")

    @model_validator(mode="after")
    def _agent_for_llm(self) -> SearchConfig:
        if self.proposer == "llm" and self.agent is None:
            raise ValueError("proposer 'llm' needs an 'agent' section (base_url, model)")
        return self


class CoordinatorConfig(StrictModel):
    listen: str = "127.0.0.1:50051"
    state_dir: Path = Path("coordinator-state")
    tls: TLSFiles
    audit_key: Path
    party: Ident = "coordinator"
    sites: list[Ident] = Field(description="registered site ids (the CN of each site's certificate)")
    revoked_sites: list[Ident] = []
    lease_s: float = Field(default=300.0, gt=0)
    poll_wait_ms: int = Field(default=2_000, ge=0, le=30_000)
    heartbeat_interval_ms: int = Field(default=5_000, ge=100, le=600_000)
    max_workers: int = Field(default=16, ge=2, le=256)
    search: SearchConfig | None = None
    exit_when_done: bool = False


def load_config(path: Path, **overrides: object) -> CoordinatorConfig:
    return load_yaml_model(path, CoordinatorConfig, dict(overrides))
