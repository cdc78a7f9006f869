"""Errors of federated training at the coordinator.

Hierarchy::

    CoordinatorError (coordinator.errors)
    └── FederatedRunError         a federated training run cannot start, go on or finish
        ├── SitesMissing          registered sites did not connect in time (names the site ids)
        └── NoUsableUpdate        no site returned a usable adapter update

Messages name site ids, rounds and counts only.
"""

from __future__ import annotations

from coordinator.errors import CoordinatorError

__all__ = ["FederatedRunError", "NoUsableUpdate", "SitesMissing"]


class FederatedRunError(CoordinatorError):
    """A federated training run cannot start, go on or finish."""


class SitesMissing(FederatedRunError):
    """Registered sites did not connect to the SuperLink in time."""


class NoUsableUpdate(FederatedRunError):
    """No site returned a usable adapter update (all refused, failed or sent a malformed adapter)."""
