"""Errors of federated training at a site.

Hierarchy::

    SiteError (site_agent.errors)
    └── FederatedSiteError        federated training cannot run at this site
        ├── NotEnabled            federated_training.enabled is false (the default)
        ├── SuperNodeFailed       the Flower SuperNode could not start or exited
        ├── RunTimedOut           the final adapter did not arrive in time
        └── RoundRefused          one round cannot be trained here; ``failure`` is what the coordinator is told

Messages name settings, counts and ids only, never data. The coordinator never sees them: it gets the
fixed reason of a :class:`~protos.federated.Failure`.
"""

from __future__ import annotations

from protos.federated import Failure
from site_agent.errors import SiteError

__all__ = ["FederatedSiteError", "NotEnabled", "RoundRefused", "RunTimedOut", "SuperNodeFailed"]


class FederatedSiteError(SiteError):
    """Federated training cannot run at this site."""


class NotEnabled(FederatedSiteError):
    """The site config does not enable federated training."""


class SuperNodeFailed(FederatedSiteError):
    """The Flower SuperNode could not start or exited (its log file says why)."""


class RunTimedOut(FederatedSiteError):
    """The final adapter did not arrive within the time-out."""


class RoundRefused(FederatedSiteError):
    """One round (or the final adapter) is refused; ``failure`` is the reason the coordinator gets."""

    def __init__(self, message: str, failure: Failure = Failure.REFUSED) -> None:
        super().__init__(message)
        self.failure = failure
