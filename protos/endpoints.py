"""Where an OpenAI-compatible server may be: on this host or the local network only.

Both sides call such servers (the site's LLM operators and judge, the coordinator's meta-agent) and both refuse
a remote one unless told otherwise: a site's prompts carry its data, and a coordinator on premises has no
business sending its search to an outside service either.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protos.errors import AutodpError

if TYPE_CHECKING:
    import httpx

__all__ = ["LOCAL_SUFFIXES", "RETRY_STATUS", "request_json", "site_local_root"]

log = logging.getLogger("autodp.endpoints")

LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".localdomain")


def site_local_root(base_url: str, *, key: str, allow_non_local: bool, error: type[AutodpError],
                    hint: str) -> str:
    """The server root of ``base_url`` (a trailing ``/v1`` removed). Raises ``error`` naming the config
    ``key`` when the URL is invalid, or when its host is not loopback, private, link-local or a local name
    (no dot, or a local suffix) and ``allow_non_local`` is False; ``hint`` says what to do then.
    Names are not resolved: a public name is refused even if it points at a private address."""
    import httpx

    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        raise error(f"{key}: not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise error(f"{key}: needs an http(s) URL with a host")
    host = url.host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
        local = ip.is_loopback or ip.is_private or ip.is_link_local
    except ValueError:
        local = host == "localhost" or "." not in host or host.endswith(LOCAL_SUFFIXES)
    if not local and not allow_non_local:
        raise error(f"{key}: host '{host}' is not loopback, private or site-local; {hint}")
    root = str(url.copy_with(query=None, fragment=None)).rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def request_json(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None, *, what: str,
                 max_retries: int, backoff_s: float, jitter: random.Random, error: type[AutodpError],
                 status_error: Callable[[int], Exception]) -> dict[str, Any]:
    """One JSON call to an OpenAI-compatible server: bounded retries on transport errors and 408/429/5xx with
    jittered exponential backoff; another HTTP error raises ``status_error(code)`` at once (the body is
    dropped: it may quote the prompt); a reply that is not a JSON object raises ``error``. ``what`` names
    the endpoint in messages ("the LLM endpoint")."""
    import httpx

    attempts = max_retries + 1
    why = ""
    for attempt in range(attempts):
        try:
            resp = client.request(method, path, json=body)
        except httpx.TransportError as e:  # connect errors and timeouts alike
            why = type(e).__name__
        else:
            if resp.status_code < 400:
                try:
                    data = resp.json()
                except ValueError:
                    raise error(f"{what} returned a reply that is not JSON") from None
                if not isinstance(data, dict):
                    raise error(f"{what} returned a reply that is not a JSON object")
                return data
            if resp.status_code not in RETRY_STATUS:
                raise status_error(resp.status_code)
            why = f"HTTP {resp.status_code}"
        log.warning("%s call %s failed (%s), attempt %d of %d", what, path, why, attempt + 1, attempts)
        if attempt + 1 < attempts:
            time.sleep(min(30.0, backoff_s * 2**attempt) * jitter.uniform(0.5, 1.0))
    raise error(f"{what} failed after {attempts} attempts ({why})")
