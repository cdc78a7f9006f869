"""Score release, kept as the agent's import point. The implementation lives in
:mod:`site_agent.privacy.release` (clip -> noise -> quantize) and :mod:`site_agent.privacy.ledger`
(the epsilon ledger that must debit a task before its score is released)."""

from __future__ import annotations

from site_agent.privacy.release import quantize, release_score

__all__ = ["quantize", "release_score"]
