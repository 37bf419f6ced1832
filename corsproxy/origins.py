"""Origin parsing and the allow-list matchers of a rule.

An *origin* is what a browser sends in the ``Origin`` header: ``scheme://host[:port]``
or the literal ``null`` (Fetch standard, "origin" serialization; RFC 6454 §6.2).
A configured ``allow_origins`` list is classified once, at load, into an
:class:`OriginSet`: a flag for ``*``, a flag for ``null``, a frozenset of exact
canonical origins, label wildcards, any-port hosts and compiled regexes, so that a
request only pays for a dict lookup in the common case.

Pure module: stdlib only (and the Public Suffix List, read offline from the ``publicsuffixlist`` package),
raises ``ValueError`` with a message that names the fix.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from publicsuffixlist import PublicSuffixList

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
WILDCARD_SCHEMES = frozenset({"http", "https"})
ANY_PORT = -1
MAX_ORIGIN_LENGTH = 512  # scheme + "://" + a 253-character host + ":65535", with room for long schemes

# Host: a DNS name (ASCII; browsers send IDNs as punycode; a trailing dot is kept, as
# browsers keep it: "https://a.com." is another origin than "https://a.com"), an IPv4
# address or a bracketed IPv6 address. Anything else (spaces, CR/LF, userinfo, paths)
# is not an origin a browser would send. A serialized port has no leading zero and is
# never 0 (WHATWG URL serializer; port 0 is a "bad port" browsers refuse to fetch).
_ORIGIN_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*\.?)"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?",
    re.IGNORECASE | re.ASCII,
)
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?", re.ASCII)


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed origin: scheme and host lowercased, a default port dropped (None)."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def parse_origin(value: str) -> Origin | None:
    """Parse a serialized origin as sent in an ``Origin`` header; ``None`` when it is not one.

    ``null`` is not parsed here (it is a literal, see :meth:`OriginSet.allows`).
    """
    # A host name has at most 253 characters (RFC 1035); longer values are never cached, so a
    # client cannot fill the cache with 8 KiB headers.
    return None if len(value) > MAX_ORIGIN_LENGTH else _parse_origin(value)


@functools.lru_cache(maxsize=4096)
def _parse_origin(value: str) -> Origin | None:
    m = _ORIGIN_RE.fullmatch(value)
    if m is None:
        return None
    scheme = m["scheme"].lower()
    port = int(m["port"]) if m["port"] else None
    if port is not None and port > 65535:
        return None
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    host = m["host"].lower()
    if host.startswith("["):
        try:  # one spelling per address, as browsers serialize it: [0:0::1] -> [::1]
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    return Origin(scheme, host, port)


@dataclass(frozen=True, slots=True)
class Wildcard:
    """``scheme://*.suffix[:port]`` or ``scheme://host:*``: the host part and port to match."""

    scheme: str
    suffix: str  # ".example.com" for label wildcards, "" when the host is exact
    host: str  # the exact host, "" for label wildcards
    port: int | None  # None = default port, ANY_PORT = any port or none

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme:
            return False
        if self.port != ANY_PORT and origin.port != self.port:
            return False
        if self.host:
            return origin.host == self.host
        # SECURITY: one or more whole labels before the suffix; never the apex itself,
        # never "evil-example.com" (the suffix starts with a dot).
        return len(origin.host) > len(self.suffix) and origin.host.endswith(self.suffix)


@dataclass(frozen=True, slots=True)
class OriginSet:
    """A rule's ``allow_origins``, classified once."""

    allow_all: bool = False
    allow_null: bool = False
    exact: frozenset[str] = frozenset()
    wildcards: tuple[Wildcard, ...] = ()
    regexes: tuple[re.Pattern[str], ...] = ()
    # The wildcards by the suffix they match (".example.com") or their exact host ("localhost"): a
    # request looks up its host's few dot-suffixes instead of trying each of 1,000 SaaS wildcards.
    by_host: Mapping[str, tuple[Wildcard, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Wildcard]] = {}
        for w in self.wildcards:
            index.setdefault(w.suffix or w.host, []).append(w)
        object.__setattr__(self, "by_host", {key: tuple(ws) for key, ws in index.items()})

    def allows(self, value: str) -> bool:
        """True when the raw ``Origin`` header value is allowed by this set.

        A value that is not a valid serialized origin is never allowed, except by ``*``
        (which is answered with a literal ``*`` and so echoes nothing).
        """
        if self.allow_all:
            return True
        if value == "null":
            return self.allow_null
        origin = parse_origin(value)
        if origin is None:
            return False
        if str(origin) in self.exact:
            return True
        if self.wildcards and self._wildcard_allows(origin):
            return True
        # SECURITY: fullmatch anchors the pattern at both ends whatever the author wrote.
        return any(r.fullmatch(value) for r in self.regexes)

    def _wildcard_allows(self, origin: Origin) -> bool:
        host, index = origin.host, self.by_host
        candidates = index.get(host)
        dot = host.find(".")
        while True:
            if candidates is not None:
                for w in candidates:
                    if w.matches(origin):
                        return True
            if dot == -1:
                return False
            candidates = index.get(host[dot:])  # ".b.example.com", then ".example.com", then ".com"
            dot = host.find(".", dot + 1)


def compile_origins(entries: Sequence[str | Mapping[str, str]]) -> OriginSet:
    """Classify ``allow_origins`` entries; raises ``ValueError`` naming the bad entry's index."""
    allow_all = allow_null = False
    exact: set[str] = set()
    wildcards: list[Wildcard] = []
    regexes: list[re.Pattern[str]] = []
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, str):
                regexes.append(compile_regex_entry(entry))
            elif entry == "*":
                allow_all = True
            elif entry == "null":
                allow_null = True
            elif "*" in entry:
                wildcards.append(parse_wildcard(entry))
            else:
                canonical = str(parse_exact(entry))
                exact.add(entry if entry == canonical else canonical)  # one string, not two, for 100,000 entries
        except ValueError as exc:
            raise IndexedError(i, str(exc)) from None
    return OriginSet(allow_all, allow_null, frozenset(exact), tuple(wildcards), tuple(regexes))


class IndexedError(ValueError):
    """A ValueError about one entry of a list, so config.py can point at its line."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def parse_exact(entry: str) -> Origin:
    origin = parse_origin(entry)
    if origin is not None:
        return origin
    raise ValueError(_origin_hint(entry))


def _origin_hint(entry: str) -> str:
    if entry != entry.strip():
        return f"{entry!r} has spaces around it; write {entry.strip()!r}"
    if entry.lower() == "null":
        return f"{entry!r}: browsers send the null origin as lowercase 'null'; write 'null'"
    m = re.match(r"([a-z][a-z0-9+.\-]*://[^/?#]+)([/?#].*)$", entry, re.I)
    if m:
        return f"{entry!r} has a path, query or trailing '/'; an origin is scheme://host[:port]: write {m[1]!r}"
    if "://" not in entry:
        return f"{entry!r} has no scheme; write e.g. 'https://{entry}'"
    if re.fullmatch(r"[^:/]+://[^/?#]*:[0-9]*", entry):
        return f"{entry!r}: the port must be a number from 1 to 65535 without leading zeros, or left out"
    return f"{entry!r} is not an origin; write scheme://host[:port], e.g. 'https://app.example.com'"


def parse_wildcard(entry: str) -> Wildcard:
    """``https://*.example.com[:port]``, ``http://localhost:*`` (or both wildcards)."""
    m = re.fullmatch(r"([a-z][a-z0-9+.\-]*)://(\*\.)?([^:/?#*]+)(?::(\*|[0-9]{1,5}))?", entry, re.I)
    if m is None:
        raise ValueError(
            f"{entry!r}: '*' may only stand as whole leading labels ('https://*.example.com') "
            "or as the port ('http://localhost:*'); for anything else use {regex: '...'}"
        )
    scheme, label_wild, host, port_text = m[1].lower(), bool(m[2]), m[3].lower(), m[4]
    if scheme not in WILDCARD_SCHEMES:
        raise ValueError(f"{entry!r}: wildcards are for http/https origins only; list {scheme}:// origins exactly")
    if not all(_LABEL_RE.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"{entry!r}: {host!r} is not a valid host name; labels are letters, digits and inner '-' "
                         "(punycode for others), as in 'https://*.example.com'")
    if label_wild and host.rsplit(".", 1)[-1].isdigit():
        # SECURITY: '*.0.0.1' would match 127.0.0.1 and 10.0.0.1: IP addresses have no subdomains.
        raise ValueError(f"{entry!r}: '*.' is for subdomains of a domain name, not an IP address; "
                         "list each address exactly")
    if port_text == "*":
        port: int | None = ANY_PORT
    else:
        port = int(port_text) if port_text else None
        if port is not None and not 0 < port <= 65535:
            raise ValueError(f"{entry!r}: port {port} is out of range 1-65535")
        if port == DEFAULT_PORTS[scheme]:
            port = None
    if label_wild:
        return Wildcard(scheme, "." + host, "", port)
    if port != ANY_PORT:
        raise ValueError(f"{entry!r} has no wildcard; write it without '*'")
    return Wildcard(scheme, "", host, port)


def compile_regex_entry(entry: Mapping[str, str]) -> re.Pattern[str]:
    if set(entry) != {"regex"} or not isinstance(entry["regex"], str):
        raise ValueError("an origin pattern is written {regex: '^https://[a-z]+\\.example\\.com$'}")
    try:
        return re.compile(entry["regex"])
    except re.error as exc:
        raise ValueError(
            f"regex {entry['regex']!r} does not compile: {exc}; fix the pattern (Python re syntax)"
        ) from None


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # ICANN and private sections (github.io, herokuapp.com); a name on no list (localhost, corp) is not public.
    return PublicSuffixList(accept_unknown=False)


def public_suffix_wildcard(host: str) -> bool:
    """Whether ``*.host`` admits sites anyone can register: ``host`` is a public suffix of the Public Suffix
    List (``com``, ``co.uk``, ``github.io``, ``herokuapp.com``), where every subdomain is someone else's."""
    return _public_suffixes().is_public(host.lower().rstrip("."))


def registrable_domain(host: str) -> str | None:
    """``example.co.uk`` for ``a.b.example.co.uk`` (one site under a public suffix); None for a public suffix
    itself, an IP address, a single label or a name on no list."""
    bare = host.lower().rstrip(".")
    if bare.startswith("[") or "." not in bare or _is_ip(bare):
        return None
    return _public_suffixes().privatesuffix(bare)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
