"""A client for an OpenAI-compatible LLM server running ON THE SITE (for example ``vllm serve``).

Prompts carry patient records, so the endpoint must be inside the hospital: a base URL whose host is
not loopback, a private/link-local address, or a site-local name (a single-label name such as a compose
service, ``*.local``, ``*.internal``, ``*.lan``, ``*.home.arpa``, ``*.localhost``) is refused unless the
config sets ``allow_non_local: true``, an explicit statement that the named host is inside the site
network. Names are not resolved: the check guards against a mistyped or copied public URL, not against
a hostile DNS. Nothing here logs or raises with prompt or reply text.

Chat uses ``POST /v1/chat/completions``, one conversation per request, ``max_batch`` requests at once.
``completion_loss`` needs vLLM's ``prompt_logprobs`` extension (plain OpenAI servers do not give prompt
log-probabilities): the prompt is chat-formatted by the server, and the prefix's token count comes from a
second request's ``usage.prompt_tokens``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from protos.endpoints import request_json, site_local_root
from site_agent.llm.errors import LLMConfigError, LLMError

__all__ = ["OpenAICompat", "check_local_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_NO_LOGPROBS = ("the LLM endpoint gives no prompt logprobs: completion_loss needs a vLLM-compatible server "
                "(prompt_logprobs)")


class _StatusError(LLMError):
    def __init__(self, status: int) -> None:
        super().__init__(f"the LLM endpoint refused the request: HTTP {status}")
        self.status = status


def check_local_url(base_url: str, allow_non_local: bool = False) -> str:
    """The server root of ``base_url``; LLMConfigError when the host is not on the site (protos.endpoints)."""
    return site_local_root(
        base_url, key="llm.base_url", allow_non_local=allow_non_local, error=LLMConfigError,
        hint="prompts carry site data and must never go to a remote service (set llm.allow_non_local: true only "
             "for a host inside the site network)")


def _first_logprob(entry: Any) -> float | None:
    # vLLM: None for the first prompt token, else {token_id: {"logprob": x, ...}} with the prompt
    # token first (prompt_logprobs=0 asks for it alone).
    if entry is None:
        return None
    if not isinstance(entry, dict) or not entry:
        raise LLMError("the LLM endpoint returned malformed prompt logprobs")
    first = next(iter(entry.values()))
    value = first.get("logprob") if isinstance(first, dict) else first
    if not isinstance(value, int | float):
        raise LLMError("the LLM endpoint returned malformed prompt logprobs")
    return float(value)


class OpenAICompat:
    """:class:`~site_agent.llm.base.LLMBackend` over an OpenAI-compatible server on the site."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, name: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, max_batch: int = 8, backoff_s: float = 0.5,
                 allow_non_local: bool = False, transport: httpx.BaseTransport | None = None) -> None:
        if not model:
            raise LLMConfigError("llm.model: the served model name is required")
        if timeout_s <= 0 or max_retries < 0 or max_batch < 1 or backoff_s < 0:
            raise LLMConfigError("llm: timeout_s must be > 0, max_retries >= 0, max_batch >= 1")
        self.base_url = check_local_url(base_url, allow_non_local)
        self.model = model
        self.name = name or f"openai-compat:{model}"
        self.max_retries, self.max_batch, self.backoff_s = max_retries, max_batch, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: no proxy from the environment, prompts go to the checked host and nowhere else
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport, trust_env=False,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)))
        self._jitter = random.Random()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON call with bounded retries on transport errors and 408/429/5xx, jittered backoff."""
        return request_json(self._client, method, path, body, what="the LLM endpoint",
                            max_retries=self.max_retries, backoff_s=self.backoff_s, jitter=self._jitter,
                            error=LLMError, status_error=_StatusError)

    def _map(self, fn: Callable[[int], T], n: int) -> list[T]:
        if n <= 1 or self.max_batch == 1:
            return [fn(i) for i in range(n)]
        with ThreadPoolExecutor(max_workers=min(self.max_batch, n), thread_name_prefix="llm") as pool:
            return list(pool.map(fn, range(n)))

    # -- LLMBackend ----------------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Ids the server serves (``GET /v1/models``): a cheap reachability check at start-up."""
        data = self._request("GET", "/v1/models").get("data")
        if not isinstance(data, list):
            raise LLMError("the LLM endpoint returned a malformed model list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
        if max_new_tokens < 1 or not temperature >= 0.0:
            raise LLMError("chat: max_new_tokens must be >= 1 and temperature >= 0")
        head = [{"role": "system", "content": system}] if system else []

        def one(i: int) -> str:
            body = {"model": self.model, "messages": [*head, {"role": "user", "content": prompts[i]}],
                    "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
            data = self._request("POST", "/v1/chat/completions", body)
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise LLMError("the LLM endpoint returned a malformed chat reply") from None
            if content is not None and not isinstance(content, str):
                raise LLMError("the LLM endpoint returned a malformed chat reply")
            return (content or "").strip()

        return self._map(one, len(prompts))

    def completion_loss(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Mean NLL per completion token; NaN for a completion with no token to score (empty)."""
        if len(prompts) != len(completions):
            raise LLMError(f"completion_loss needs one completion per prompt, got {len(prompts)} prompts "
                           f"and {len(completions)} completions")
        return self._map(lambda i: self._loss(prompts[i], completions[i]), len(prompts))

    def _scored(self, path: str, body: dict[str, Any]) -> tuple[list[float | None], dict[str, Any]]:
        """The prompt log-probabilities of one request (vLLM's ``prompt_logprobs``), and the reply."""
        try:
            data = self._request("POST", path, {"model": self.model, "max_tokens": 1, "temperature": 0.0,
                                                "prompt_logprobs": 0, **body})
        except _StatusError as e:
            if e.status in (400, 404, 422):  # the server does not know the vLLM extensions
                raise LLMError(f"{_NO_LOGPROBS}; HTTP {e.status}") from None
            raise
        entries = data.get("prompt_logprobs")
        if entries is None and isinstance(data.get("choices"), list) and data["choices"]:
            choice = data["choices"][0]
            entries = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
        if not isinstance(entries, list):
            raise LLMError(_NO_LOGPROBS)
        return [_first_logprob(e) for e in entries], data

    def _loss(self, prompt: str, completion: str) -> float:
        if not completion:
            return math.nan
        if not prompt:
            logprobs, _ = self._scored("/v1/completions", {"prompt": completion})
            scored = [lp for lp in logprobs if lp is not None]
        else:
            user = {"role": "user", "content": prompt}
            logprobs, _ = self._scored("/v1/chat/completions", {
                "messages": [user, {"role": "assistant", "content": completion}],
                "add_generation_prompt": False, "continue_final_message": True})
            # The same conversation up to the assistant header: its token count marks where the completion starts.
            prefix = self._request("POST", "/v1/chat/completions", {
                "model": self.model, "messages": [user], "max_tokens": 1, "temperature": 0.0,
                "add_generation_prompt": True})
            usage = prefix.get("usage")
            n_prefix = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            if not isinstance(n_prefix, int) or isinstance(n_prefix, bool):
                raise LLMError("the LLM endpoint reply has no usage.prompt_tokens")
            scored = [lp for lp in logprobs[n_prefix:] if lp is not None]
        return -sum(scored) / len(scored) if scored else math.nan
