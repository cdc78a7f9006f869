"""The LLM meta-agent proposer (LLM-AutoDP): the search's :class:`~coordinator.proposers.Proposer` backed
by a model behind an OpenAI-compatible server (backend ``openai``, e.g. ``vllm serve``) or loaded in this
process on the CPU under a JSON-schema grammar (backend ``local``, default the bundled SmolLM2-135M; see
:mod:`coordinator.agent.local`). Without a backend named, a ``base_url`` means ``openai``.

Two modes (``mode``; default ``choose`` for the local backend, ``write`` for a served model):

- ``write``: round 1 asks for K diverse strategies from few teams each. Later rounds show the group relative
  comparison of every round so far (rank, score, difference from the round mean, comparison with no
  processing, what the best did differently from the worst) and ask for K new strategies that keep what the
  best did. With ``diverse_starts`` each strategy slot of an answer must begin with an operator from its own
  group (:func:`coordinator.agent.schema.start_groups`, dealt afresh per round and attempt, shown in the
  prompt), so a small model cannot write one strategy K times.
- ``choose``: the fill proposer (below) builds up to 3 K new candidates (for ``evolutionary``: children of
  the best strategies so far; random ones in round 1); the model sees the same comparison and the numbered
  candidates and picks K ids (one short, schema-constrained answer). Measured with the bundled SmolLM2-135M,
  the strategies it writes score below random search's, so its judgement is used where it cannot make a
  strategy worse: picking among proposals that are valid and new by construction.

Every answer is untrusted: parsed, repaired and checked against the catalog and the history
(:mod:`coordinator.agent.repair`). When fewer than K valid new strategies remain the model is asked again
(bounded), told only counts and catalog names of what was wrong; what is still missing is filled by a
seeded fallback proposer and logged: ``fill="evolutionary"`` (default: mutations and crossovers of the best
strategies so far, so a weak model's gaps still build on what worked) or ``"random"``. A failing endpoint
degrades the round to that fallback, never stops it; only a bad setting (URL, model, key variable) raises,
at construction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coordinator.agent.client import ChatClient
from coordinator.agent.errors import AgentConfigError, AgentError
from coordinator.agent.local import LocalChat  # light: torch and xgrammar load on its first answer
from coordinator.agent.prompting import PROMPT_VERSION, build_choice_messages, build_messages, render_reask
from coordinator.agent.repair import repair_answer, repair_choices
from coordinator.agent.schema import answer_schema, choice_schema, start_groups
from coordinator.proposers import Proposer, ScoredStrategy, create_proposer
from protos.catalog import check_strategy, index_catalog
from protos.views import OperatorSpec, Strategy

__all__ = ["ChatBackend", "LLMProposer", "ProposalLog"]

log = logging.getLogger("autodp.agent")
_FILL_SEED_SALT = 0x5EED_F111  # the fill's seed is the search's XOR this
FILLS = ("evolutionary", "random")
MODES = ("write", "choose")
MAX_CANDIDATES = 30  # mode choose: candidates shown per round (3 K, bounded: the prompt stays short)


@dataclass(frozen=True)
class ProposalLog:
    """How one ``propose`` call went, in counts (kept on the proposer as ``last``)."""

    round_no: int
    asked: int
    llm_calls: int
    from_llm: int
    filled: int  # strategies the fallback proposer added (``LLMProposer.fill``)
    problems: tuple[str, ...]  # one RepairReport summary per answer
    prompt_version: str = PROMPT_VERSION
    mode: str = "write"  # write: from_llm strategies the model wrote; choose: candidates the model chose
    candidates: int = 0  # mode choose: candidates shown
    picked: tuple[int, ...] = ()  # mode choose: the model's choices, 0-based in the proposer's candidate order
    # keys of the returned strategies the model wrote (write) or chose (choose); every other one is the fill's
    from_model_keys: tuple[str, ...] = ()


class ChatBackend(Protocol):
    """What the proposer needs of a model: :class:`ChatClient` (an OpenAI-compatible server) or
    :class:`~coordinator.agent.local.LocalChat` (a local model under a grammar)."""

    def chat_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, name: str = ...,
                  temperature: float = ..., max_tokens: int = ..., seed: int | None = ...) -> str: ...

    def close(self) -> None: ...


class LLMProposer:
    name = "llm"

    def __init__(self, base_url: str | None = None, model: str | None = None, seed: int = 0, max_length: int = 3,
                 timeout_s: float = 60.0, max_retries: int = 2, api_key_env: str | None = None,
                 allow_non_local: bool = False, temperature: float = 0.7, *, max_reasks: int = 2,
                 backoff_s: float = 0.5, max_tokens: int | None = None, backend: str | None = None,
                 model_dir: Path | str | None = None, threads: int | None = None, fill: str = "evolutionary",
                 diverse_starts: bool = False, mode: str | None = None) -> None:
        if max_length < 1 or max_reasks < 0 or not 0.0 <= temperature <= 2.0:
            raise AgentConfigError("agent: max_length must be >= 1, max_reasks >= 0, temperature in [0, 2]")
        if fill not in FILLS:
            raise AgentConfigError(f"agent.fill: one of {', '.join(FILLS)}")
        backend = backend or ("openai" if base_url else "local")
        mode = mode or ("choose" if backend == "local" else "write")
        if mode not in MODES:
            raise AgentConfigError(f"agent.mode: one of {', '.join(MODES)}")
        self.fill, self.diverse_starts, self.mode = fill, diverse_starts, mode
        self.client: ChatBackend
        if backend == "openai":
            if not base_url:
                raise AgentConfigError("agent.base_url: required for backend 'openai'")
            if model_dir is not None or threads is not None:
                raise AgentConfigError("agent.model_dir, agent.threads: only for backend 'local'")
            api_key = None
            if api_key_env:
                api_key = os.environ.get(api_key_env)
                if not api_key:
                    raise AgentConfigError(f"agent.api_key_env: environment variable {api_key_env} is not set")
            self.client = ChatClient(base_url, model or "", api_key=api_key, timeout_s=timeout_s,
                                     max_retries=max_retries, backoff_s=backoff_s, allow_non_local=allow_non_local)
        elif backend == "local":
            if base_url:
                raise AgentConfigError("agent.base_url: only for backend 'openai' (the local backend loads model_dir)")
            self.client = LocalChat(model_dir, model=model, threads=threads)
        else:
            raise AgentConfigError(f"agent.backend: '{backend}' is not one of openai, local")
        self.backend = backend
        self.seed, self.max_length, self.temperature = seed, max_length, temperature
        self.max_reasks, self.max_tokens = max_reasks, max_tokens
        self.last: ProposalLog | None = None

    def close(self) -> None:
        self.client.close()

    def _fallback(self) -> Proposer:
        """The seeded proposer behind the model (``fill``): it completes a short ``write`` round and builds the
        ``choose`` candidates. Its own stream: with the search's seed it would draw what the baseline of that
        seed draws, and the two proposers' picks could coincide by construction."""
        return create_proposer(self.fill, seed=self.seed ^ _FILL_SEED_SALT, max_length=self.max_length)

    def _new_valid(self, strategies: Sequence[Strategy], index: Mapping[str, OperatorSpec],
                   history: Sequence[ScoredStrategy]) -> list[Strategy]:
        """``strategies`` that pass the catalog check and are neither evaluated before nor repeated, in order."""
        known = {h.strategy.key for h in history}
        out: list[Strategy] = []
        for s in strategies:
            if s.key not in known and not check_strategy(s, index, self.max_length):
                known.add(s.key)
                out.append(s)
        return out

    def _tokens(self, k: int) -> int:
        # room for k strategies of max_length steps (~100 tokens a step) plus some slack; bounded so a
        # small served context is not overrun
        return self.max_tokens or min(8192, 256 + 100 * k * self.max_length)

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        if k < 1 or not catalog:
            return []
        if self.mode == "choose":
            return self._choose(round_no, k, catalog, history)
        index = index_catalog(catalog)
        seen = {h.strategy.key for h in history}
        chosen: list[Strategy] = []
        problems: list[str] = []
        calls = 0
        for attempt in range(1 + self.max_reasks):
            need = k - len(chosen)
            if need <= 0:
                break
            # a fresh deal of first-step groups per attempt: a re-ask does not get the same slots again
            starts = (start_groups(catalog, need, self.seed * 1_000 + round_no * 10 + attempt)
                      if self.diverse_starts else None)
            # a re-ask is one user turn (some chat templates refuse two in a row), listing what was kept
            asked = build_messages(round_no, need, self.max_length, catalog,
                                   [*history, *(ScoredStrategy(round_no, s, None) for s in chosen)], starts)
            if attempt:
                asked[1]["content"] += "\n\n" + render_reask(problems[-1], need)
            calls += 1
            try:
                text = self.client.chat_json(asked, answer_schema(catalog, need, self.max_length, starts),
                                             temperature=self.temperature, max_tokens=self._tokens(need),
                                             seed=self.seed * 1_000 + round_no * 10 + attempt)
            except AgentError as e:
                log.warning("round %d: the meta-agent gave no answer (%s)", round_no, e)
                problems.append("no answer")
                break
            got, report = repair_answer(text, index, self.max_length, seen, need)
            seen.update(s.key for s in got)
            chosen += got
            problems.append(report.summary())
            log.info("round %d: meta-agent answer %d: %s", round_no, attempt + 1, problems[-1])
        from_llm = len(chosen)
        if len(chosen) < k:
            known = [*history, *(ScoredStrategy(round_no, s, None) for s in chosen)]
            chosen += self._fallback().propose(round_no, k - len(chosen), catalog, known)
            log.warning("round %d: meta-agent gave %d of %d valid new strategies; the %s proposer filled %d",
                        round_no, from_llm, k, self.fill, len(chosen) - from_llm)
        # the last gate: nothing invalid or already seen leaves here, whatever happened above
        out = self._new_valid(chosen, index, history)[:k]
        model_keys = {s.key for s in chosen[:from_llm]}
        self.last = ProposalLog(round_no=round_no, asked=k, llm_calls=calls, from_llm=from_llm,
                                filled=len(chosen) - from_llm, problems=tuple(problems),
                                from_model_keys=tuple(s.key for s in out if s.key in model_keys))
        return out

    def _choose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        """Mode ``choose``: the fill proposer builds up to 3 K new candidates from the history (for
        ``evolutionary``: children of the best so far), the model picks K of them after the group relative
        comparison, and candidates it left out fill any shortfall in the proposer's own order. One call; a
        failing endpoint or an unusable answer means the proposer's order alone."""
        proposed = self._fallback().propose(round_no, min(MAX_CANDIDATES, 3 * k), catalog, history)
        candidates = self._new_valid(proposed, index_catalog(catalog), history)
        picked: list[int] = []
        problems: list[str] = []
        calls = 0
        if len(candidates) > k:  # with k or fewer there is nothing to choose
            calls = 1
            try:
                text = self.client.chat_json(build_choice_messages(round_no, k, catalog, history, candidates),
                                             choice_schema(len(candidates), k), name="choices",
                                             temperature=self.temperature, max_tokens=self.max_tokens or 64 + 8 * k,
                                             seed=self.seed * 1_000 + round_no * 10)
                picked, report = repair_choices(text, len(candidates), k)
                problems.append(report.summary())
            except AgentError as e:
                log.warning("round %d: the meta-agent gave no answer (%s)", round_no, e)
                problems.append("no answer")
            log.info("round %d: meta-agent chose %d of %d candidates: %s", round_no, len(picked), len(candidates),
                     problems[-1])
        rest = [i for i in range(len(candidates)) if i not in picked]
        out = [candidates[i] for i in [*picked, *rest][:k]]
        if len(picked) < k and len(candidates) > k:
            log.warning("round %d: meta-agent chose %d of %d; the %s proposer's order filled %d", round_no,
                        len(picked), k, self.fill, len(out) - len(picked))
        self.last = ProposalLog(round_no=round_no, asked=k, llm_calls=calls, from_llm=len(picked),
                                filled=len(out) - len(picked), problems=tuple(problems), mode="choose",
                                candidates=len(candidates), picked=tuple(picked),
                                from_model_keys=tuple(candidates[i].key for i in picked))
        return out
