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

__all__ = ["StrictModel", "TLSFiles", "first_error", "load_yaml_model", "read_yaml_mapping", "resolve_paths"]

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Config sections: unknown keys are an error, values are frozen after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSFiles(StrictModel):
    """This process's certificate and key, and the federation CA it trusts (see ``autodp certs``)."""

    cert: Path
    key: Path
    ca: Path


def first_error(e: ValidationError) -> tuple[tuple[str | int, ...], str, str]:
    """The first problem pydantic found, as (location, what is wrong, dotted location): every loader turns it
    into one line naming the key. An unknown key reads "unknown key"; values are never quoted back."""
    err = e.errors(include_url=False, include_input=False)[0]
    loc = tuple(err["loc"])
    why = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return loc, why, ".".join(str(p) for p in loc)


def read_yaml_mapping(path: Path, label: str = "",
                      expected: str = "a mapping of settings at the top level") -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file is an empty mapping). Every problem is one ConfigError
    line starting with ``label path`` that names the file, never its content."""
    where_file = f"{label} {path}" if label else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where_file}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where_file}: cannot read ({type(e).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where_file}:{where} not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where_file}: expected {expected}")
    return data


def load_yaml_model(path: Path, model: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read ``path`` into ``model``; ``overrides`` (from the CLI) win over the file."""
    data = read_yaml_mapping(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        _, why, key = first_error(e)
        raise ConfigError(f"{path}: '{key or '(top level)'}': {why}") from None
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
