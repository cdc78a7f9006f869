"""Where an OpenAI-compatible server may be: on this host or the local network only.

Both sides call such servers (the site's LLM operators and judge, the coordinator's meta-agent) and both refuse
a remote one unless told otherwise: a site's prompts carry its data, and a coordinator on premises has no
business sending its search to an outside service either.
"""

from __future__ import annotations

import ipaddress

from protos.errors import AutodpError

__all__ = ["LOCAL_SUFFIXES", "site_local_root"]

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
