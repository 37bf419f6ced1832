"""The CORS decision: every rule of design §4 lives here and nowhere else.

Pure: no I/O, no aiohttp. The proxy, ``explain``, the access log, metrics and
``/decisions`` all ask :func:`decide`, then :func:`finish` writes the CORS part of a
response (the upstream's, or one the proxy makes itself) in place.

References: Fetch standard §3.2 "CORS protocol" (https://fetch.spec.whatwg.org/#http-cors-protocol);
Private Network Access (legacy: allow_private_network; https://wicg.github.io/private-network-access/).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from .config import ANY, Config, Rule
from .headers import CORS_RESPONSE_PREFIX, TOKEN_RE, merge_vary, split_tokens
from .origins import parse_origin

if TYPE_CHECKING:
    from multidict import MultiMapping

Verdict = Literal["allowed", "denied:origin", "denied:method", "denied:header", "denied:private-network", "none"]
Kind = Literal["preflight", "actual", "no-origin", "no-rule"]

ACAO = "Access-Control-Allow-Origin"
ACAC = "Access-Control-Allow-Credentials"
ACAM = "Access-Control-Allow-Methods"
ACAH = "Access-Control-Allow-Headers"
ACEH = "Access-Control-Expose-Headers"
ACMA = "Access-Control-Max-Age"
ACAPN = "Access-Control-Allow-Private-Network"
TAO = "Timing-Allow-Origin"
CORP = "Cross-Origin-Resource-Policy"
PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
ORIGIN_VARY = ("Origin",)
# Response headers a page can always read (Fetch "CORS-safelisted response-header name"),
# and those it never can; neither belongs in a computed Expose-Headers list.
_NOT_EXPOSED = frozenset({"set-cookie", "set-cookie2", "vary"})

Headers = tuple[tuple[str, str], ...]
# What upstream_cors: keep did with a response's upstream CORS headers, and why (None: it had nothing to decide).
UpstreamCorsOutcome = tuple[Literal["kept", "replaced"], str] | None


class MultiHeaders(Protocol):
    """What :func:`finish` needs of a response's headers (``multidict.CIMultiDict`` has it)."""

    def getall(self, key: str, default: list[str]) -> list[str]: ...
    def keys(self) -> Iterable[str]: ...
    def popall(self, key: str, default: list[str]) -> list[str]: ...
    def add(self, key: str, value: str) -> None: ...
    def __setitem__(self, key: str, value: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with every header value it can send computed at load (style habit 1)."""

    rule: Rule
    star: bool  # answer with a literal "*" (any origin, no credentials)
    methods: frozenset[str] | None  # None = any
    actual_methods: frozenset[str] | None  # methods an actual request may use: + HEAD where GET, + OPTIONS
    headers: frozenset[str] | None  # lowercase; None = any
    preflight_headers: Headers  # allowed preflight, minus ACAO and the per-request ones
    actual_headers: Headers  # allowed actual request, minus ACAO / TAO
    expose_names_from_response: bool  # expose_headers "*" with credentials
    resource_policy: Headers = ()  # Cross-Origin-Resource-Policy on every response of the rule, when set

    @classmethod
    def build(cls, rule: Rule) -> CompiledRule:
        creds: Headers = ((ACAC, "true"),) if rule.allow_credentials else ()
        any_method, any_header, expose_all = rule.allow_methods == ANY, rule.allow_headers == ANY, \
            rule.expose_headers == ANY
        pre: list[tuple[str, str]] = list(creds)
        if not any_method:
            pre.append((ACAM, ", ".join(rule.allow_methods)))
        if rule.allow_headers and not any_header:
            pre.append((ACAH, ", ".join(rule.allow_headers)))
        if rule.max_age is not None:
            pre.append((ACMA, str(rule.max_age)))
        actual = list(creds)
        # SECURITY: browsers read "*" literally in Expose-Headers when credentials are on,
        # so then the response's own names are listed instead (in finish()).
        if rule.expose_headers and not (expose_all and rule.allow_credentials):
            actual.append((ACEH, ", ".join(rule.expose_headers)))
        return cls(
            rule=rule,
            star=rule.origins.allow_all and not rule.allow_credentials,
            methods=None if any_method else frozenset(rule.allow_methods),
            actual_methods=None if any_method else _actual_methods(rule.allow_methods),
            headers=None if any_header else frozenset(h.lower() for h in rule.allow_headers),
            preflight_headers=tuple(pre),
            actual_headers=tuple(actual),
            expose_names_from_response=expose_all and rule.allow_credentials,
            resource_policy=((CORP, rule.cross_origin_resource_policy),) if rule.cross_origin_resource_policy else (),
        )


def _actual_methods(listed: tuple[str, ...]) -> frozenset[str]:
    """HTTP serves HEAD wherever GET (RFC 9110 §9.3.2), and an OPTIONS that is not a preflight always counts
    (as in rs/cors): neither needs listing for an actual request."""
    extra = {"OPTIONS"} | ({"HEAD"} if "GET" in listed else set())
    return frozenset(listed) | extra


@dataclass(frozen=True, slots=True)
class Policy:
    """The compiled rules of one config; swapped whole on reload."""

    rules: tuple[CompiledRule, ...]
    # Every rule's paths in one anchored alternation, a named group a rule: one regex call finds
    # the first rule that matches (alternatives are tried in order), however many rules there are.
    paths: re.Pattern[str] = re.compile("(?!)")

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        rules = tuple(CompiledRule.build(r) for r in config.rules)
        alternation = "|".join(f"(?P<r{i}>{c.rule.paths.regex.pattern})" for i, c in enumerate(rules))
        return cls(rules, re.compile(alternation or "(?!)"))

    def match(self, path: str) -> CompiledRule | None:
        """The first rule whose paths match the decoded request path."""
        m = self.paths.fullmatch(path)
        return self.rules[int(m.lastgroup[1:])] if m is not None and m.lastgroup else None


@dataclass(slots=True)  # made and dropped per request: a frozen __init__ costs twice as much
class CorsRequest:
    """What a decision needs of a request (treat as read-only)."""

    method: str
    path: str  # decoded (paths.decode_path)
    origins: tuple[str, ...] = ()  # every Origin header value, in order
    request_method: str | None = None  # Access-Control-Request-Method
    request_headers: str = ""  # Access-Control-Request-Headers, all values joined
    private_network: bool = False  # Access-Control-Request-Private-Network: true

    @classmethod
    def from_headers(cls, method: str, path: str, headers: Mapping[str, str]) -> CorsRequest:
        """From a header mapping; one with ``getall`` (CIMultiDict) lets a repeated Origin be seen."""
        getall = getattr(headers, "getall", None)
        if getall is not None:
            origins = tuple(getall("Origin", ()))
            acrh = ",".join(getall("Access-Control-Request-Headers", ()))
        else:
            origins = (headers["Origin"],) if "Origin" in headers else ()
            acrh = headers.get("Access-Control-Request-Headers", "")
        return cls(
            method=method,
            path=path,
            origins=origins,
            request_method=headers.get("Access-Control-Request-Method"),
            request_headers=acrh,
            private_network=headers.get("Access-Control-Request-Private-Network", "").lower() == "true",
        )

    @staticmethod
    def header_key(headers: MultiMapping[str]) -> tuple[object, ...]:
        """The header values :meth:`from_headers` reads, as a hashable key: two requests with the same
        method, path and key get the same decision (fastpath.py remembers decisions by it)."""
        getall = headers.getall
        return (tuple(getall("Origin", ())), headers.get("Access-Control-Request-Method"),
                tuple(getall("Access-Control-Request-Headers", ())),
                headers.get("Access-Control-Request-Private-Network"))

    @property
    def is_preflight(self) -> bool:
        return self.method == "OPTIONS" and bool(self.origins) and self.request_method is not None

    @property
    def origin(self) -> str | None:
        """The Origin if it is one valid serialized origin (or ``null``), else None."""
        if len(self.origins) != 1:
            return None
        value = self.origins[0]
        return value if value == "null" or parse_origin(value) is not None else None


@dataclass(slots=True)  # per request, like CorsRequest; treat as read-only
class Decision:
    """A verdict and what to do about it.

    ``status`` set: the proxy answers itself (preflight ``204``/``403``, rejected ``403``).
    ``status`` None: forward, then :func:`finish` the response with ``headers``.
    """

    kind: Kind
    verdict: Verdict
    detail: str
    rule: CompiledRule | None = None
    origin: str | None = None
    status: int | None = None
    headers: Headers = ()
    enforce: bool = True  # False for a report-only rule: decided and logged, nothing changed

    @property
    def rule_name(self) -> str:
        return self.rule.rule.name if self.rule else "-"

    @property
    def reason(self) -> str:
        return f"{self.detail} (rule '{self.rule_name}')" if self.rule else self.detail

    @property
    def body(self) -> bytes:
        return (self.reason + "\n").encode() if self.status == 403 else b""

    def header_value(self, kept: UpstreamCorsOutcome = None) -> str:
        """The ``CORS-Decision`` debug header (design §5); ``kept``: what ``upstream_cors: keep`` did."""
        detail = self.detail if kept is None else f"{self.detail}; upstream CORS headers {kept[0]}: {kept[1]}"
        detail = detail.replace("\\", "\\\\").replace('"', '\\"')
        mode = "; mode=report-only" if not self.enforce else ""
        upstream = f"; upstream_cors={kept[0]}" if kept is not None else ""
        return f'rule={self.rule_name}; verdict={self.verdict}{mode}{upstream}; detail="{detail}"'


NO_RULE = Decision("no-rule", "none", "no rule matches this path")


def decide(policy: Policy, request: CorsRequest) -> Decision:
    """Decide one request against the first rule that matches its path."""
    compiled = policy.match(request.path)
    if compiled is None:
        return NO_RULE
    if not request.origins:
        decision = Decision("no-origin", "none", "no Origin header: not a CORS request", compiled)
    elif request.is_preflight:
        decision = _preflight(compiled, request, request.origin)
    else:
        decision = _actual(compiled, request, request.origin)
    if compiled.rule.mode == "report-only":
        # Decide and log as usual, change nothing (design §5): not even the Vary a no-Origin request gets.
        return Decision(decision.kind, decision.verdict, decision.detail, compiled, decision.origin, enforce=False)
    return decision


def _origin_denial(compiled: CompiledRule, request: CorsRequest, origin: str | None) -> str | None:
    if origin is None:
        if len(request.origins) > 1:
            return "Origin header sent more than once"
        return f"Origin {request.origins[0]!r} is not a valid origin"
    if not compiled.rule.origins.allows(origin):
        return f"origin {origin} not in allow_origins"
    return None


def _preflight(compiled: CompiledRule, request: CorsRequest, origin: str | None) -> Decision:
    rule = compiled.rule
    method = request.request_method or ""
    names = split_tokens(request.request_headers) if request.request_headers else []
    verdict: Verdict = "denied:origin"
    why = _origin_denial(compiled, request, origin)
    if why is None:
        verdict, why = _request_denial(compiled, method, names)
    if why is None and request.private_network and not rule.allow_private_network:
        verdict, why = "denied:private-network", "private network access not allowed (allow_private_network)"
    vary = (("Vary", ", ".join(PREFLIGHT_VARY)),)
    if why is not None:
        status = 403 if rule.denied_preflight == "reject" else None
        return Decision("preflight", verdict, why, compiled, origin, status, vary)
    headers = [(ACAO, "*" if compiled.star else request.origins[0]), *compiled.preflight_headers]
    if compiled.methods is None:
        headers.append((ACAM, method))
    if compiled.headers is None and names:
        headers.append((ACAH, ", ".join(names)))  # echoing covers Authorization, which "*" does not
    if request.private_network:
        headers.append((ACAPN, "true"))
    headers.extend(vary)
    return Decision("preflight", "allowed", "preflight allowed", compiled, origin, 204, tuple(headers))


def _request_denial(compiled: CompiledRule, method: str, names: list[str]) -> tuple[Verdict, str | None]:
    """The method and header checks of a preflight; configured names are valid tokens already."""
    if compiled.methods is None:
        if not TOKEN_RE.fullmatch(method):
            return "denied:method", f"method {method!r} is not a valid method name"
    elif method not in compiled.methods:
        # Compared exactly, as browsers do: "patch" is not "PATCH" (Fetch "CORS-preflight fetch" step 7).
        return "denied:method", f"method {method} not in allow_methods"
    allowed = compiled.headers
    if allowed is None:
        bad = [n for n in names if not TOKEN_RE.fullmatch(n)]
    else:  # isascii: a non-ASCII name may lowercase onto an allowed one ("\u212a" -> "k")
        bad = [n for n in names if n.lower() not in allowed or not n.isascii()]
    if bad:
        return "denied:header", f"{', '.join(bad)} not in allow_headers"
    return "allowed", None


def _actual(compiled: CompiledRule, request: CorsRequest, origin: str | None) -> Decision:
    rule = compiled.rule
    why = _origin_denial(compiled, request, origin)
    if why is not None and not compiled.star:
        status = 403 if rule.disallowed_origin == "reject" else None
        return Decision("actual", "denied:origin", why, compiled, origin, status)
    if compiled.actual_methods is not None and request.method not in compiled.actual_methods:
        # SECURITY: a simple cross-site POST is sent without a preflight; a rule that does not list the method
        # must not let the page read the answer (design §4, as rs/cors): the answer of a disallowed origin.
        status = 403 if rule.disallowed_origin == "reject" else None
        return Decision("actual", "denied:method", f"method {request.method} not in allow_methods", compiled,
                        origin, status)
    # SECURITY: an invalid Origin is only ever answered with a literal "*", never echoed.
    allow_origin = "*" if compiled.star else request.origins[0]
    headers = [(ACAO, allow_origin), *compiled.actual_headers]
    if rule.timing_allow_origin:
        headers.append((TAO, allow_origin))
    verdict: Verdict = "allowed" if why is None else "denied:origin"
    detail = "origin allowed" if why is None else f"{why}; answered with a literal * (any origin allowed)"
    return Decision("actual", verdict, detail, compiled, origin, None, tuple(headers))


def finish(decision: Decision, headers: MultiHeaders) -> UpstreamCorsOutcome:
    """Write the CORS part of a forwarded (or proxy-made) response's headers, in place.

    Returns what ``upstream_cors: keep`` did with the upstream's CORS headers, ``("kept" | "replaced", why)``,
    for the log, ``CORS-Decision`` and ``explain``; None when ``keep`` had nothing to decide.
    """
    if decision.rule is None or not decision.enforce:
        return None
    for name, value in decision.rule.resource_policy:
        # A no-cors embed (<img> without crossorigin, no Origin sent) in a page with COEP require-corp
        # loads only with this header; CORS headers do not help there (design §3).
        headers[name] = value
    if decision.status is not None:
        return None
    if decision.kind == "no-origin":
        headers["Vary"] = merge_vary(headers.getall("Vary", []), ORIGIN_VARY)
        return None
    allowed = bool(decision.headers) and decision.kind == "actual"
    outcome: UpstreamCorsOutcome = None
    # SECURITY: only a truly allowed origin keeps the upstream's answer; an invalid or repeated Origin
    # that a "*" rule answers with a literal * must not get the upstream's reflection of it.
    if allowed and decision.verdict == "allowed" and decision.rule.rule.upstream_cors == "keep" and ACAO in headers:
        why = _not_keepable(decision, headers)
        outcome = ("kept", "the upstream's Access-Control-* grant no more than the rule") if why is None else \
            ("replaced", why)
    # A denied preflight passed on (denied_preflight: forward) keeps the upstream's answer,
    # unless the origin itself is denied.
    keep = (outcome is not None and outcome[0] == "kept") or (
        decision.kind == "preflight" and decision.verdict != "denied:origin")
    if not keep:
        # SECURITY: the upstream's own Access-Control-* never reach the client beside ours,
        # and never for an origin the rules deny.
        for name in [n for n in headers.keys() if n.lower().startswith(CORS_RESPONSE_PREFIX)]:
            headers.popall(name, [])
        if allowed:
            _add_actual(decision, headers)
    vary = PREFLIGHT_VARY if decision.kind == "preflight" else ORIGIN_VARY
    headers["Vary"] = merge_vary(headers.getall("Vary", []), vary)
    return outcome


def _not_keepable(decision: Decision, headers: MultiHeaders) -> str | None:
    """Why ``upstream_cors: keep`` must not pass the upstream's CORS headers (design §5); None if it may.

    SECURITY: keep never grants more than the rule: an upstream that reflects every Origin with
    credentials must not hand them to an origin the rule admits without credentials.
    """
    assert decision.rule is not None
    values = headers.getall(ACAO, [])
    if len(values) != 1:
        return f"the upstream sent Access-Control-Allow-Origin {len(values)} times"
    value = values[0].strip()
    if value != "*" and value != decision.origin:
        return f"the upstream's Access-Control-Allow-Origin {value!r} is neither * nor the request's origin"
    if ACAC in headers:
        if not decision.rule.rule.allow_credentials:
            return "the upstream sent Access-Control-Allow-Credentials and the rule does not allow credentials"
        if value == "*":
            return "the upstream sent Access-Control-Allow-Origin * with credentials, which browsers refuse"
    return None


def _add_actual(decision: Decision, headers: MultiHeaders) -> None:
    assert decision.rule is not None
    if decision.rule.rule.timing_allow_origin:
        headers.popall(TAO, [])
    names = []
    if decision.rule.expose_names_from_response:
        names = sorted({n for n in headers.keys() if n.lower() not in _NOT_EXPOSED})
    for name, value in decision.headers:
        headers.add(name, value)
    if names:
        headers.add(ACEH, ", ".join(names))


def respond_headers(decision: Decision) -> list[tuple[str, str]]:
    """Headers of a response the proxy makes for a decision with ``status`` set."""
    out = list(decision.headers)
    if decision.rule is not None and decision.enforce:
        out.extend(decision.rule.resource_policy)
    if decision.status == 403:
        out.append(("Content-Type", "text/plain; charset=utf-8"))
        if not any(name == "Vary" for name, _ in out):
            out.append(("Vary", ", ".join(ORIGIN_VARY)))
    return out

