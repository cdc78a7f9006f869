"""What an operator may need besides its batch: embeddings, a site-local LLM, the screening classifier.

The executor builds one RunContext per task and binds it to every operator of the strategy. Heavy members
are factories, created on first use, so a strategy of plain cleaning operators never loads a model.
Operators declare what they need in ``Operator.requires``; the executor checks it before any step runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from site_agent.errors import OperatorError

if TYPE_CHECKING:
    from site_agent.embeddings.base import Embedder
    from site_agent.llm.base import LLMBackend
    from site_agent.screening.base import Screener

__all__ = ["CAPABILITIES", "RunContext"]

CAPABILITIES = frozenset({"embedder", "llm", "screener"})


@dataclass
class RunContext:
    seed: int = 0
    embedder_factory: Callable[[], Embedder] | None = None
    llm_factory: Callable[[], LLMBackend] | None = None
    screener: Screener | None = None
    _embedder: Embedder | None = field(default=None, init=False, repr=False)
    _llm: LLMBackend | None = field(default=None, init=False, repr=False)

    def provides(self) -> frozenset[str]:
        have = {"embedder": self.embedder_factory is not None, "llm": self.llm_factory is not None,
                "screener": self.screener is not None}
        return frozenset(k for k, v in have.items() if v)

    def embedder(self) -> Embedder:
        if self._embedder is None:
            if self.embedder_factory is None:
                raise OperatorError("this site has no embedder configured")
            self._embedder = self.embedder_factory()
        return self._embedder

    def llm(self) -> LLMBackend:
        if self._llm is None:
            if self.llm_factory is None:
                raise OperatorError("this site has no local LLM configured")
            self._llm = self.llm_factory()
        return self._llm

    def get_screener(self) -> Screener:
        if self.screener is None:
            raise OperatorError("this site has no screening classifier trained")
        return self.screener
