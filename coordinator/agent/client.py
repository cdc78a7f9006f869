"""A small chat client for the meta-agent's OpenAI-compatible server (production: ``vllm serve``).

The answer is constrained twice, so that either server style enforces the schema: the OpenAI
``response_format`` (``json_schema``, strict) and vLLM's ``guided_json`` extra field. A server that rejects
those fields (HTTP 400/422) is asked once more without them; the proposer validates and repairs every
answer anyway, so guided decoding is a help, never a trust boundary.

Prompts carry only catalog names, numbers and ids, but the endpoint is still refused unless it is loopback,
a private address or a site-local name: a mistyped or copied public URL should fail loudly, and a hosted
model is a decision to state (``allow_non_local``). Names are not resolved. Nothing here logs or raises
with prompt or reply text.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import httpx

from coordinator.agent.errors import AgentConfigError, AgentError
from protos.endpoints import request_json, site_local_root

__all__ = ["ChatClient", "check_local_url"]

log = logging.getLogger("autodp.agent")

_NO_GUIDED_STATUS = frozenset({400, 422})
_MAX_REPLY_CHARS = 1_000_000  # a reply bigger than this is junk; parsing it would only waste time


class _StatusError(AgentError):
    def __init__(self, status: int) -> None:
        super().__init__(f"the meta-agent endpoint refused the request: HTTP {status}")
        self.status = status


def check_local_url(base_url: str, allow_non_local: bool = False) -> str:
    """The server root of ``base_url``; AgentConfigError when the host is not on premises (see protos.endpoints)."""
    return site_local_root(base_url, key="agent.base_url", allow_non_local=allow_non_local, error=AgentConfigError,
                           hint="set agent.allow_non_local: true to use a model served elsewhere")


class ChatClient:
    """``POST /v1/chat/completions`` with a JSON-schema-constrained answer, bounded retries on transport
    errors and 408/429/5xx with jittered exponential backoff."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 2, backoff_s: float = 0.5, allow_non_local: bool = False,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not model:
            raise AgentConfigError("agent.model: the served model name is required")
        if not timeout_s > 0 or max_retries < 0 or not backoff_s >= 0:
            raise AgentConfigError("agent: timeout_s must be > 0, max_retries >= 0 and backoff_s >= 0")
        self.base_url = check_local_url(base_url, allow_non_local)
        self.model, self.max_retries, self.backoff_s = model, max_retries, backoff_s
        self.guided = True  # cleared for good once the server refuses the structured-output fields
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: no proxy from the environment, requests go to the checked host and nowhere else
        self._client = httpx.Client(base_url=self.base_url, headers=headers, transport=transport, trust_env=False,
                                    timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
        self._jitter = random.Random()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return request_json(self._client, "POST", path, body, what="the meta-agent endpoint",
                            max_retries=self.max_retries, backoff_s=self.backoff_s, jitter=self._jitter,
                            error=AgentError, status_error=_StatusError)

    def chat_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, name: str = "strategies",
                  temperature: float = 0.7, max_tokens: int = 2048, seed: int | None = None) -> str:
        """The assistant's reply text (expected, not trusted, to be JSON following ``schema``)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": temperature,
                                "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        guided = {"response_format": {"type": "json_schema",
                                      "json_schema": {"name": name, "schema": schema, "strict": True}},
                  "guided_json": schema}
        try:
            data = self._post("/v1/chat/completions", {**body, **guided} if self.guided else body)
        except _StatusError as e:
            if not (self.guided and e.status in _NO_GUIDED_STATUS):
                raise
            log.warning("the meta-agent endpoint refused structured output (HTTP %d); asking without it",
                        e.status)
            self.guided = False
            data = self._post("/v1/chat/completions", body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise AgentError("the meta-agent endpoint returned a malformed chat reply") from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise AgentError("the meta-agent endpoint returned a malformed chat reply")
        return content[:_MAX_REPLY_CHARS]
