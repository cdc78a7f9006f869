"""Loading one YAML config file per process into a pydantic model (unknown keys rejected).

Shared by both sides because the rule is the same: a bad file gives one line that names the file and the
key, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from protos.errors import ConfigError

__all__ = ["StrictModel", "TLSFiles", "load_yaml_model", "resolve_paths"]

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Config sections: unknown keys are an error, values are frozen after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSFiles(StrictModel):
    """This process's certificate and key, and the federation CA it trusts (see ``autodp certs``)."""

    cert: Path
    key: Path
    ca: Path


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({type(e).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_yaml_model(path: Path, model: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read ``path`` into ``model``; ``overrides`` (from the CLI) win over the file."""
    data = _read(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: '{key}': {first['msg']}") from None
    return resolve_paths(cfg, path.parent)


def resolve_paths(cfg: T, base: Path) -> T:
    """Make relative Path fields relative to the config file's folder (nested models included)."""
    updates: dict[str, Any] = {}
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = (base / value).resolve()
        elif isinstance(value, BaseModel):
            updates[name] = resolve_paths(value, base)
    return cfg.model_copy(update=updates) if updates else cfg
