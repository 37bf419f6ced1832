"""Which of a response's header names a page cannot read under the rule that answered it, for
``corsproxy suggest`` to offer them as ``expose_headers`` (design §2).

A page reads the CORS-safelisted response headers (Fetch "CORS-safelisted response-header name")
and those listed in ``Access-Control-Expose-Headers``. Of the rest, the ones a proxy, a server or a
browser owns (``Date``, ``Server``, ``Vary``, security policies, ``Set-Cookie`` which no page ever
reads) are not the application's data and are never suggested.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from .config import ANY
from .policy import Decision

SAFELISTED = frozenset({"cache-control", "content-language", "content-length", "content-type", "expires",
                        "last-modified", "pragma"})
NOT_APPLICATION = frozenset({
    "date", "server", "vary", "set-cookie", "set-cookie2", "connection", "keep-alive", "transfer-encoding", "via",
    "alt-svc", "strict-transport-security", "content-security-policy", "content-security-policy-report-only",
    "x-content-type-options", "x-frame-options", "x-xss-protection", "referrer-policy", "permissions-policy",
    "cross-origin-opener-policy", "cross-origin-embedder-policy", "cross-origin-resource-policy", "report-to",
    "reporting-endpoints", "nel", "content-encoding", "accept-ranges", "age", "timing-allow-origin",
    "cors-decision", "x-powered-by", "proxy-connection", "upgrade", "trailer", "te",
})
MAX_NAMES = 16  # an upstream that sends 200 headers is not 200 suggestions a request


def unexposed(decision: Decision, names: Sequence[str]) -> tuple[str, ...]:
    """The application header names a page could not read on this actual request's response."""
    rule = decision.rule.rule if decision.rule is not None else None
    if rule is None or decision.kind != "actual" or decision.origin is None or rule.expose_headers == ANY:
        return ()
    if len(names) > MAX_REMEMBERED_NAMES:
        return _unexposed(rule.expose_headers, tuple(names))
    # An upstream sends the same header names response after response: each list is worked out once.
    key = (rule.expose_headers, tuple(names))
    found = _REMEMBERED.get(key)
    if found is None:
        if len(_REMEMBERED) >= MAX_REMEMBERED:
            _REMEMBERED.clear()
        found = _REMEMBERED[key] = _unexposed(*key)
    return found


# (expose_headers, response header names) -> unexposed(): bounded in entries and in each key's length.
_REMEMBERED: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]] = {}
MAX_REMEMBERED = 1024
MAX_REMEMBERED_NAMES = 40


def _unexposed(expose_headers: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    readable = _readable(expose_headers)
    out: dict[str, str] = {}
    for name in names:
        low = name.lower()
        if low in readable or low.startswith("access-control-"):
            continue
        out.setdefault(low, name)
        if len(out) == MAX_NAMES:
            break
    return tuple(out.values())


@lru_cache(maxsize=256)  # one entry a rule's expose_headers: computed once, not per request
def _readable(expose_headers: tuple[str, ...]) -> frozenset[str]:
    return SAFELISTED | NOT_APPLICATION | {name.lower() for name in expose_headers}
