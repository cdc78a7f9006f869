"""Privacy at the site: the epsilon ledger, the score release and the settings behind them.

- :mod:`.settings`  ``PrivacySettings`` (the ``privacy:`` section of the site YAML) and ``PrivacyError``
- :mod:`.ledger`    ``PrivacyLedger``: reserve before work, commit after, release once; composition and
                    the order of calls for one task are documented there
- :mod:`.release`   clip -> noise -> quantize, the sensitivity argument, per-task seeding,
                    ``planned_epsilon`` and ``check_cohort``
"""

from site_agent.privacy.ledger import LedgerDecision, LedgerState, PrivacyLedger
from site_agent.privacy.release import (
    check_cohort,
    clip_score,
    gaussian_sigma,
    laplace_scale,
    noise_std,
    planned_delta,
    planned_epsilon,
    quantize,
    release_rng,
    release_score,
)
from site_agent.privacy.settings import BudgetScope, DPSGDSettings, Mechanism, PrivacyError, PrivacySettings

__all__ = [
    "BudgetScope",
    "DPSGDSettings",
    "LedgerDecision",
    "LedgerState",
    "Mechanism",
    "PrivacyError",
    "PrivacyLedger",
    "PrivacySettings",
    "check_cohort",
    "clip_score",
    "gaussian_sigma",
    "laplace_scale",
    "noise_std",
    "planned_delta",
    "planned_epsilon",
    "quantize",
    "release_rng",
    "release_score",
]
