"""Errors of the site agent.

Hierarchy::

    AutodpError (protos.errors)
    └── SiteError                 base of every error the site agent raises on purpose
        ├── OperatorError         an operator is badly registered, unknown, badly parameterised or failed
        ├── PolicyError           the local policy file is invalid (also a ConfigError: names key and line)
        ├── DataError             a data file is missing, unreadable, empty or lacks a column
        └── EvaluationError       an evaluator is unknown, misconfigured or cannot score a batch

Messages never carry record text, sample content or data identifiers: they name fields, columns,
operators, parameters and numbers only.
"""

from __future__ import annotations

from protos.errors import AutodpError, ConfigError

__all__ = ["DataError", "EvaluationError", "OperatorError", "PolicyError", "SiteError"]


class SiteError(AutodpError):
    """Base of every error the site agent raises on purpose."""


class OperatorError(SiteError):
    """An operator is badly registered, unknown, badly parameterised or failed while running."""


class PolicyError(SiteError, ConfigError):
    """The local policy file is invalid; the message names the key (and line when known)."""


class DataError(SiteError):
    """A data file is missing, unreadable, empty, or lacks a required column."""


class EvaluationError(SiteError):
    """An evaluator is unknown, misconfigured, or cannot score the given batches."""
