"""The LLM meta-agent: proposes strategies from the operator catalog and past scores, through a model
behind an OpenAI-compatible server (production: ``vllm serve``) or a small model on this machine's CPU
(:class:`LocalChat`, torch and xgrammar loaded on first use). It never sees data: the catalog, the scores
and ids are all it is given.

Registered as proposer ``llm`` in :mod:`coordinator.proposers` (imported lazily there, so a random search
does not load httpx).
"""

from __future__ import annotations

from coordinator.agent.client import ChatClient, check_local_url
from coordinator.agent.errors import AgentConfigError, AgentError
from coordinator.agent.local import LocalChat
from coordinator.agent.prompting import PROMPT_VERSION, build_choice_messages, build_messages, render_comparison
from coordinator.agent.proposer import LLMProposer, ProposalLog
from coordinator.agent.repair import RepairReport, repair_answer, repair_choices
from coordinator.agent.schema import answer_schema, catalog_for_prompt, choice_schema, start_groups

__all__ = [
    "PROMPT_VERSION",
    "AgentConfigError",
    "AgentError",
    "ChatClient",
    "LLMProposer",
    "LocalChat",
    "ProposalLog",
    "RepairReport",
    "answer_schema",
    "build_choice_messages",
    "build_messages",
    "catalog_for_prompt",
    "choice_schema",
    "check_local_url",
    "render_comparison",
    "repair_answer",
    "repair_choices",
    "start_groups",
]
