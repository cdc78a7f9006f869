"""Errors of the site-local LLM backends.

Hierarchy::

    OperatorError (site_agent.errors)
    └── LLMError                    a backend cannot load, reach or parse its model / endpoint
        └── LLMConfigError          an LLM config is invalid (also a ConfigError: names the key)

An LLM failure surfaces as an OperatorError so that the executor reports it like any failing step.
Messages name settings, status codes, counts and exception types: never a prompt or a reply.
"""

from __future__ import annotations

from protos.errors import ConfigError
from site_agent.errors import OperatorError

__all__ = ["LLMConfigError", "LLMError"]


class LLMError(OperatorError):
    """A backend cannot load, reach or parse its model or endpoint."""


class LLMConfigError(LLMError, ConfigError):
    """An LLM config is invalid: a missing folder, a non-local endpoint, an unset key variable."""
