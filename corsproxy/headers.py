"""Header helpers: hop-by-hop names, token lists, ``Vary`` merging, ``Location`` rewriting."""

from __future__ import annotations

import re
from collections.abc import Iterable

from yarl import URL

# RFC 9110 §7.6.1 and the de-facto ones (Keep-Alive, Proxy-Connection); lowercase.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# SECURITY: what frames a message or routes it. A request whose Connection header names one of these asks
# the next hop to drop it, which would leave the body unframed or the target unknown: refused (400), as
# nginx ignores such tokens rather than honour them (lowercase).
FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
CORS_RESPONSE_PREFIX = "access-control-"
# The Server header of every response the proxy makes itself: its name, no versions (nothing to look up in a CVE
# list), not aiohttp's "Python/3.11 aiohttp/3.x". Relayed responses keep the upstream's own.
SERVER = "corsproxy"
# RFC 9110 §5.6.2 token
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def split_tokens(value: str) -> list[str]:
    """``"a, b,,c "`` -> ``["a", "b", "c"]`` (a comma-separated header list, empty items dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def hop_by_hop(connection_values: Iterable[str]) -> frozenset[str]:
    """Hop-by-hop names for one message: the fixed set plus what ``Connection`` lists."""
    listed = set(lowered_tokens(connection_values))
    return HOP_BY_HOP | listed if listed else HOP_BY_HOP


def lowered_tokens(values: Iterable[str]) -> list[str]:
    """The items of a header that may repeat, in order, lowercased: ``["Close, X", "y"]`` -> ``["close", "x", "y"]``."""
    return [name.lower() for value in values for name in split_tokens(value)]


def names_framing(connection_values: Iterable[str]) -> list[str]:
    """The :data:`FRAMING` names a message's ``Connection`` values list (``"close, Content-Length"`` ->
    ``["content-length"]``); empty when it lists none."""
    return sorted(set(lowered_tokens(connection_values)) & FRAMING)


def merge_vary(existing: Iterable[str], add: Iterable[str]) -> str:
    """Merge names into a ``Vary`` value without duplicates (case-insensitive); ``*`` stays ``*``."""
    names: list[str] = []
    seen: set[str] = set()
    for name in [n for value in existing for n in split_tokens(value)] + list(add):
        if name == "*":
            return "*"
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return ", ".join(names)


def rewrite_location(value: str, upstream: URL, proxy_origin: str) -> str | None:
    """Map an absolute URL at the upstream (inside its base path) to the proxy; None = leave alone.

    ``http://up/v1/x`` with upstream ``http://up/v1`` and proxy ``http://proxy`` -> ``http://proxy/x``.
    """
    if value.startswith("//"):  # scheme-relative: the scheme of the request the upstream answered
        value = f"{upstream.scheme}:{value}"
    try:
        url = URL(value, encoded=True)
    except ValueError:
        return None
    if not url.is_absolute() or _origin_key(url) != _origin_key(upstream):
        return None
    base = upstream.raw_path.rstrip("/")
    path = url.raw_path
    if any(seg in (".", "..") for seg in path.split("/")):
        return None  # '/v1/../x' is outside the base path once resolved; leave it alone
    if base and not (path == base or path.startswith(base + "/")):
        return None
    rest = path[len(base) :] or "/"
    query = "?" + url.raw_query_string if url.raw_query_string else ""
    fragment = "#" + url.raw_fragment if url.raw_fragment else ""
    return proxy_origin + rest + query + fragment


def _origin_key(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.raw_host or "").lower(), url.port
