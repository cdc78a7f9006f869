"""Search baselines the meta-agent is measured against, behind the same :class:`Proposer` interface and on
the same budget: an elitist evolutionary search and optuna's TPE. Both see only the operator catalog and
scores, never data, and are stateless between rounds (seeded from seed and round number)."""

from __future__ import annotations

from coordinator.baselines.evolutionary import EvolutionaryProposer
from coordinator.baselines.tpe import TPEProposer

__all__ = ["EvolutionaryProposer", "TPEProposer"]
