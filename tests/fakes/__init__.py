"""Test doubles shared across the suite: a real OpenAI-compatible HTTP server on 127.0.0.1, and one
shared instance of the bundled SmolLM2 backend (so that the model loads once per test process)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from tests.fakes.openai_server import (
    FakeOpenAIServer,
    Handler,
    RecordedRequest,
    Reply,
    echo,
    last_user_message,
    scripted,
    slow,
)

if TYPE_CHECKING:
    from site_agent.llm.local_hf import LocalHF
    from site_agent.operators.context import RunContext

__all__ = ["FakeOpenAIServer", "Handler", "RecordedRequest", "Reply", "echo", "fake_llm_context",
           "last_user_message", "local_smollm2", "scripted", "slow"]


@functools.cache
def local_smollm2() -> LocalHF:
    """The bundled SmolLM2-135M-Instruct on CPU, loaded on first use and shared by every test module.

    One torch thread: on a 2-core box that runs other tests beside it, two threads are several times slower.
    """
    from site_agent.llm.local_hf import LocalHF

    return LocalHF(max_batch=4, threads=1)


def fake_llm_context(server: FakeOpenAIServer, seed: int = 0) -> RunContext:
    """A RunContext whose LLM is an OpenAICompat client of ``server`` (fast retries, short timeout)."""
    from site_agent.llm.openai_compat import OpenAICompat
    from site_agent.operators.context import RunContext

    return RunContext(seed=seed, llm_factory=lambda: OpenAICompat(server.base_url, server.model, timeout_s=10.0,
                                                                  backoff_s=0.01))
