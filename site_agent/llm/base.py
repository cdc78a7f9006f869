"""A site-local LLM behind one interface: an OpenAI-compatible server on the site (vLLM) or the bundled
SmolLM2-135M through transformers on CPU. Never a remote service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["LLMBackend"]


class LLMBackend(Protocol):
    name: str  # an identifier; part of cache keys of LLM operators' outputs

    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
        """One reply per prompt (one user turn each), batched; deterministic for a seed."""
        ...

    def completion_loss(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Mean per-token negative log-likelihood of each completion given its prompt (chat-formatted);
        with an empty prompt, of the completion alone. Used by perplexity and difficulty (IFD) selection."""
        ...
