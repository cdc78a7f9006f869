"""Errors of the LLM meta-agent.

Hierarchy::

    AutodpError (protos.errors)
    └── CoordinatorError (coordinator.errors)
        └── AgentError               the meta-agent's LLM endpoint failed or gave no usable reply
            └── AgentConfigError     a bad agent setting (URL, model, key variable); also a ConfigError

Messages name settings, HTTP statuses and counts only, never prompt or reply text (a reply is model output
that may carry anything, including text that tries to look like an instruction).
"""

from __future__ import annotations

from coordinator.errors import CoordinatorError
from protos.errors import ConfigError

__all__ = ["AgentConfigError", "AgentError"]


class AgentError(CoordinatorError):
    """The meta-agent's LLM endpoint failed or gave no usable reply."""


class AgentConfigError(AgentError, ConfigError):
    """A bad agent setting: the CLI reports it in one line, like any config error."""
