"""The coordinator's YAML config (``autodp coordinator serve --config coordinator.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from protos.config import StrictModel, TLSFiles, load_yaml_model
from protos.views import EvalSettings, Ident

__all__ = ["CoordinatorConfig", "SearchConfig", "TLSFiles", "load_config"]


class AgentConfig(StrictModel):
    """The LLM meta-agent, which never sees data: an OpenAI-compatible endpoint (backend ``openai``:
    ``vllm serve`` in production) or a model loaded on this machine's CPU (backend ``local``: the bundled
    SmolLM2-135M-Instruct unless ``model_dir`` names another). Without ``backend``, a ``base_url`` means
    ``openai`` and no ``base_url`` means ``local``; the timeout, retry, key and URL settings are the
    endpoint's."""

    backend: Literal["openai", "local"] = Field(
        default="local", description="openai (needs base_url, model) | local; default: openai when base_url is set")
    base_url: str | None = Field(default=None, description="backend openai: server root, e.g. http://127.0.0.1:8000")
    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$",
                              description="backend openai: the served model name; local: a label for reports")
    model_dir: Path | None = Field(default=None, description="backend local: a transformers model folder "
                                                             "(default: the bundled SmolLM2-135M-Instruct)")
    threads: int | None = Field(default=None, ge=1, le=256,
                                description="backend local: torch threads while answering (default: unchanged)")
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_retries: int = Field(default=2, ge=0, le=10)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    allow_non_local: bool = False
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_reasks: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, gt=0, le=60)
    max_tokens: int | None = Field(default=None, ge=64, le=32_768)
    fill: Literal["evolutionary", "random"] = Field(
        default="evolutionary", description="what fills a round when the model gives too few valid new strategies: "
        "evolutionary (builds on the best so far) | random")
    mode: Literal["write", "choose"] | None = Field(
        default=None, description="write: the model writes K strategies (the fill completes a shortfall) | choose: "
        "the fill proposer builds 3 K candidates from the best so far and the model picks K of them; default: "
        "choose for backend local (a small model writes worse strategies than random search), write for openai")
    diverse_starts: bool = Field(
        default=False, description="mode write: each strategy of an answer starts with an operator from its own "
        "group (the answer schema's prefixItems), so a small model cannot write one strategy K times")

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") is None:
            return {**data, "backend": "openai" if data.get("base_url") else "local"}
        return data

    @model_validator(mode="after")
    def _backend_settings(self) -> AgentConfig:
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("agent backend 'openai' needs base_url and model")
        if self.backend == "openai" and (self.model_dir is not None or self.threads is not None):
            raise ValueError("agent.model_dir and agent.threads are for backend 'local'")
        if self.backend == "local" and self.base_url:
            raise ValueError("agent.base_url is for backend 'openai' (the local backend loads model_dir)")
        return self


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
    min_improvement: float = Field(default=0.001, ge=0.0, description="what counts as a better best score")
    patience: int = Field(default=1, ge=0, le=100,
                          description="stop after this many rounds without a better best score; 0: never early")
    baselines: list[Literal["random", "evolutionary", "tpe"]] = Field(
        default=[], description="after the search, run these proposers on the same budget, for the report")
    report: Path = Field(default=Path("search-report.json"),
                         description="the JSON record; the HTML report and the YAML recipe are written beside it")
    agent: AgentConfig | None = Field(default=None, description="the meta-agent (proposer llm); default: the "
                                                                "bundled SmolLM2 on this machine's CPU")

    @model_validator(mode="after")
    def _agent_for_llm(self) -> SearchConfig:
        if self.proposer == "llm" and self.agent is None:
            object.__setattr__(self, "agent", AgentConfig())
        return self

    @property
    def html_report(self) -> Path:
        return self.report.with_suffix(".html")

    @property
    def recipe(self) -> Path:
        return self.report.with_name(self.report.stem + ".recipe.yaml")


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
