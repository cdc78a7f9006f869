"""The real site-local LLM for scoring-only operators' tests, with each (prompt, completion) scored once:
the tests rerun an operator with other parameters on the same rows, and the model is what is slow."""

from __future__ import annotations

from collections.abc import Sequence

from site_agent.llm.base import LLMBackend


class ScoringOnlyLLM:
    def __init__(self, llm: LLMBackend, op: str) -> None:
        self.inner, self.name, self.op, self.calls = llm, llm.name, op, 0
        self._seen: dict[tuple[str, str], float] = {}

    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
        raise AssertionError(f"{self.op} must not generate")

    def completion_loss(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        todo = [k for k in dict.fromkeys(zip(prompts, completions, strict=True)) if k not in self._seen]
        if todo:
            self.calls += 1
            losses = self.inner.completion_loss([p for p, _ in todo], [c for _, c in todo])
            self._seen.update(zip(todo, losses, strict=True))
        return [self._seen[k] for k in zip(prompts, completions, strict=True)]
