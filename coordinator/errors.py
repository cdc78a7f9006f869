"""Errors of the coordinator.

Hierarchy::

    AutodpError (protos.errors)      base of every error autodp raises on purpose
    └── CoordinatorError             base of the coordinator's own errors
        ├── StoreError               the task store cannot be opened, read or written (names the file
        │                            kind, table or operation, never stored content)
        ├── UnknownSite              a site id (or certificate CN) that is not registered
        └── SearchError              a search cannot start, resume or go on (bad config, unknown id)

Messages never carry site data: they name fields, ids, operators and numbers only.
"""

from __future__ import annotations

from protos.errors import AutodpError

__all__ = ["CoordinatorError", "SearchError", "StoreError", "UnknownSite"]


class CoordinatorError(AutodpError):
    """Base of the coordinator's own errors."""


class StoreError(CoordinatorError):
    """The task store cannot be opened, read or written."""


class UnknownSite(CoordinatorError):
    """A site id that is not registered with this coordinator."""


class SearchError(CoordinatorError):
    """A search cannot start, resume or go on."""
