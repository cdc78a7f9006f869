"""The ``llm:`` section of the site config and the backend it builds.

Example (a vLLM server on the site)::

    llm:
      backend: openai
      base_url: http://127.0.0.1:8000
      model: Qwen2.5-7B-Instruct
      api_key_env: VLLM_API_KEY   # the NAME of an environment variable; a key never sits in YAML

Or the bundled SmolLM2 on CPU: ``llm: {backend: local}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from protos.config import StrictModel, first_error
from site_agent.llm.base import LLMBackend
from site_agent.llm.errors import LLMConfigError

__all__ = ["LLMConfig", "create_llm", "load_llm_config"]


class LLMConfig(StrictModel):
    backend: Literal["local", "openai"] = "local"
    model_path: Path | None = Field(default=None, description="local: a HF model folder; default the bundled "
                                    "SmolLM2-135M-Instruct")
    base_url: str | None = Field(default=None, description="openai: the server root, e.g. http://127.0.0.1:8000")
    model: str | None = Field(default=None, description="openai: the served model name")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
                                    description="openai: environment variable holding the API key")
    max_batch: int = Field(default=8, ge=1, le=256, description="prompts per forward pass / requests at once")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="openai: per request")
    max_retries: int = Field(default=3, ge=0, le=10, description="openai: retries on timeouts and 5xx")
    allow_non_local: bool = Field(
        default=False, description="openai: accept a host that is not loopback/private/site-local; only for "
        "a server inside the site network (prompts carry site data: never a remote service)")
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(default=None, ge=1, le=256, description="local: torch CPU threads during a call "
                                "(default: torch's own choice)")

    @model_validator(mode="after")
    def _backend_fields(self) -> LLMConfig:
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError("backend 'openai' needs base_url and model")
        if self.backend == "openai" and self.base_url:
            from site_agent.llm.openai_compat import check_local_url

            # refused when the file is loaded, not when the first task needs the LLM
            check_local_url(self.base_url, self.allow_non_local)
        if self.backend == "local" and (self.base_url or self.model or self.api_key_env):
            raise ValueError("backend 'local' takes model_path, not base_url/model/api_key_env")
        return self


def load_llm_config(data: Mapping[str, object]) -> LLMConfig:
    """Validate the ``llm:`` mapping of a site config; a bad key gives one LLMConfigError line."""
    try:
        return LLMConfig.model_validate(dict(data))
    except ValidationError as e:
        _, why, key = first_error(e)
        raise LLMConfigError(f"llm{'.' + key if key else ''}: {why}") from None


def create_llm(cfg: LLMConfig) -> LLMBackend:
    """Build the backend (cheap: a local model loads on its first call)."""
    if cfg.backend == "local":
        from site_agent.llm.local_hf import LocalHF

        return LocalHF(cfg.model_path, max_batch=cfg.max_batch, dtype=cfg.dtype, device=cfg.device,
                       threads=cfg.threads)
    from site_agent.llm.openai_compat import OpenAICompat

    api_key = None
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            raise LLMConfigError(f"llm.api_key_env: environment variable '{cfg.api_key_env}' is not set")
    assert cfg.base_url is not None and cfg.model is not None  # checked by the model validator
    return OpenAICompat(cfg.base_url, cfg.model, api_key=api_key, timeout_s=cfg.timeout_s,
                        max_retries=cfg.max_retries, max_batch=cfg.max_batch, allow_non_local=cfg.allow_non_local)
