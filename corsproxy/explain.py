"""``corsproxy explain``: one request as the browser would send it, and what the rules answer.

It reasons as the browser does (design §2): from the method and the headers the page sets, the
Fetch standard's safelists say whether a preflight goes first; then the preflight and the actual
request are each decided by :func:`policy.decide`, and printed with the exact headers the proxy
would send. A request may be given by flags or as the ``curl`` command line that a browser's
network panel copies ("Copy as cURL").

Pure: no I/O; :func:`explain` returns the lines to print and the exit code, the CLI prints them.

References: Fetch standard, "CORS-safelisted method", "CORS-safelisted request-header",
"CORS-unsafe request-header names" (https://fetch.spec.whatwg.org/#cors-safelisted-request-header).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from multidict import CIMultiDict

from .config import Config
from .paths import BadPath, decode_path
from .policy import CorsRequest, Decision, Policy, decide, finish, respond_headers

EXIT_OK, EXIT_DENIED = 0, 1
SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
MAX_SAFELISTED_VALUE = 128  # bytes of one safelisted value
MAX_SAFELISTED_TOTAL = 1024  # bytes of all safelisted values together
# Fetch "CORS-unsafe request-header byte": controls but tab, and "():<>?@[\]{} and DEL.
_UNSAFE_BYTE_RE = re.compile(r'[\x00-\x08\x0a-\x1f"():<>?@\[\\\]{}\x7f]')
_LANGUAGE_RE = re.compile(r"[0-9A-Za-z *,\-.;=]*")
_RANGE_RE = re.compile(r"bytes=[0-9]+-[0-9]*")
# Headers a page cannot set (Fetch "forbidden request-header") and those the browser adds itself; a copied
# request carries them, but they never make a preflight.
BROWSER_SET = frozenset({
    "accept-charset", "accept-encoding", "access-control-request-headers", "access-control-request-method",
    "connection", "content-length", "cookie", "cookie2", "date", "dnt", "expect", "host", "keep-alive", "origin",
    "referer", "set-cookie", "te", "trailer", "transfer-encoding", "upgrade", "via", "user-agent", "priority",
    "cache-control", "pragma", "upgrade-insecure-requests",
})
BROWSER_SET_PREFIXES = ("sec-", "proxy-")


@dataclass(frozen=True, slots=True)
class BrowserRequest:
    """What the page asked for: ``headers`` are the ones it set itself, ``(name, value or None)``."""

    origin: str | None
    method: str = "GET"
    target: str = "/"  # path and query, as sent
    headers: tuple[tuple[str, str | None], ...] = ()
    force_preflight: bool = False  # --preflight, or a copied OPTIONS preflight
    has_body: bool = False


# ---------------------------------------------------------------------- the browser's side


def safelisted(name: str, value: str | None) -> bool:
    """Whether a page may send this header without a preflight (Fetch "CORS-safelisted request-header").

    A ``Content-Type`` given without a value is taken as not safelisted (``fetch`` with a JSON body).
    """
    name = name.lower()
    if name not in ("accept", "accept-language", "content-language", "content-type", "range"):
        return False
    if value is None:
        return name != "content-type"
    if len(value.encode()) > MAX_SAFELISTED_VALUE:
        return False
    if name == "accept":
        return not _UNSAFE_BYTE_RE.search(value)
    if name in ("accept-language", "content-language"):
        return _LANGUAGE_RE.fullmatch(value) is not None
    if name == "content-type":
        essence = value.split(";", 1)[0].strip().lower()
        return not _UNSAFE_BYTE_RE.search(value) and essence in SIMPLE_CONTENT_TYPES
    return _RANGE_RE.fullmatch(value) is not None


def unsafe_names(headers: Sequence[tuple[str, str | None]]) -> list[str]:
    """Fetch "CORS-unsafe request-header names": what the preflight's Access-Control-Request-Headers lists
    (lowercase, sorted, each once)."""
    safe_total = sum(len((v or "").encode()) for n, v in headers if safelisted(n, v))
    unsafe = {n.lower() for n, v in headers if safe_total > MAX_SAFELISTED_TOTAL or not safelisted(n, v)}
    return sorted(unsafe)


def preflight_reasons(request: BrowserRequest) -> list[str]:
    """Why the browser sends a preflight first; empty for a simple request."""
    reasons = []
    if request.method not in SAFELISTED_METHODS:
        reasons.append(f"{request.method} is not GET, HEAD or POST")
    for name in unsafe_names(request.headers):
        value = dict((n.lower(), v) for n, v in request.headers).get(name)
        shown = f"{name}: {value}" if value is not None else name
        reasons.append(f"{shown} is not a CORS-safelisted header")
    if request.force_preflight and not reasons:
        reasons.append("--preflight was given (e.g. a streamed body or upload listeners)")
    return reasons


def is_browser_set(name: str) -> bool:
    lower = name.lower()
    return lower in BROWSER_SET or lower.startswith(BROWSER_SET_PREFIXES)


# ---------------------------------------------------------------------- curl


_ARG_OPTIONS = {"-X", "--request", "-H", "--header", "-d", "--data", "--data-raw", "--data-binary", "--data-ascii",
                "--data-urlencode", "-F", "--form", "-b", "--cookie", "-A", "--user-agent", "-e", "--referer",
                "--url", "-u", "--user", "-o", "--output", "-m", "--max-time", "--connect-timeout"}
_FLAG_OPTIONS = {"--compressed", "-s", "--silent", "-i", "--include", "-L", "--location", "-k", "--insecure", "-v",
                 "--verbose", "-g", "--globoff", "--http1.1", "--http2", "-S", "--show-error", "-N", "--no-buffer"}


def from_curl(argv: Sequence[str], origin: str | None = None) -> BrowserRequest:
    """A request from a ``curl`` command line as browsers copy it; raises ValueError naming what it cannot read."""
    args = list(argv)
    if len(args) == 1:  # the whole command pasted as one quoted argument
        args = shlex.split(args[0].replace("\\\n", " "))
    if args and args[0] == "curl":
        args = args[1:]
    read = _Curl()
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg in _ARG_OPTIONS:
            if i >= len(args):
                raise ValueError(f"curl option {arg} needs a value")
            read.option(arg, args[i])
            i += 1
        elif arg.startswith("-") and arg not in _FLAG_OPTIONS:
            raise ValueError(f"curl option {arg} is not one explain reads (it reads the URL, -X, -H, --data*, "
                             "-F and --compressed); drop it")
        elif not arg.startswith("-"):
            read.option("--url", arg)
    if read.url is None:
        raise ValueError("the curl command has no URL")
    return _copied(read.url, read.method or ("POST" if read.body else "GET"), read.headers, read.body, origin)


@dataclass(slots=True)
class _Curl:
    """What :func:`from_curl` has read so far."""

    url: str | None = None
    method: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bool = False

    def option(self, name: str, value: str) -> None:
        if name in ("-X", "--request"):
            self.method = value
        elif name in ("-H", "--header"):
            header, sep, text = value.partition(":")
            if not sep:
                raise ValueError(f"curl header {value!r} is not 'Name: value'")
            self.headers.append((header.strip(), text.strip()))
        elif name.startswith(("-d", "--data", "-F", "--form")):
            self.body = True
            if name in ("-F", "--form"):
                self.headers.append(("Content-Type", "multipart/form-data"))
        elif name == "--url":
            if self.url is not None:
                raise ValueError(f"two URLs in the curl command ({self.url!r} and {value!r}); give one")
            self.url = value


def _copied(url: str, method: str, headers: list[tuple[str, str]], body: bool, origin: str | None) -> BrowserRequest:
    sent = CIMultiDict(headers)
    origin = origin or sent.get("Origin")
    if method == "OPTIONS" and "Access-Control-Request-Method" in sent:  # the preflight itself was copied
        names = [n.strip() for n in sent.get("Access-Control-Request-Headers", "").split(",") if n.strip()]
        return BrowserRequest(origin, sent["Access-Control-Request-Method"], target_of(url),
                              tuple((n, None) for n in names), force_preflight=True)
    own = tuple((n, v) for n, v in headers if not is_browser_set(n))
    return BrowserRequest(origin, method, target_of(url), own, has_body=body)


def target_of(url: str) -> str:
    """The path and query of a whole URL (``--url``, a pasted ``--path``, curl's URL)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{url!r} is not a whole URL; write e.g. https://api.example.com/api/items?id=7")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def header_arg(text: str) -> tuple[str, str | None]:
    """``--header NAME`` or ``--header 'Name: value'``."""
    name, sep, value = text.partition(":")
    return name.strip(), value.strip() if sep else None


# ---------------------------------------------------------------------- the proxy's side


def explain(config: Config, request: BrowserRequest) -> tuple[list[str], int]:
    """The lines ``corsproxy explain`` prints for ``request``, and its exit code."""
    assert request.origin is not None
    head = [f"request:  {request.method} {request.target}  Origin: {request.origin}"]
    try:
        path = decode_path(request.target)
    except BadPath as exc:
        return head + ["verdict:  bad request", f"reason:   {exc}; the proxy answers 400"], EXIT_DENIED
    policy = Policy.from_config(config)
    reasons = preflight_reasons(request)
    actual = decide(policy, CorsRequest.from_headers(request.method, path, {"Origin": request.origin}))
    if actual.rule is None:
        return head + ["rule:     none matches; the request is forwarded untouched (no CORS headers added or "
                       "removed)"], EXIT_OK
    if not reasons:
        head.append("browser:  no preflight: a simple request (GET, HEAD or POST with CORS-safelisted headers only)")
        return head + _step(config, "", request.method, request.target, actual), _code(actual)
    head.append("browser:  sends a preflight first: " + "; ".join(reasons))
    asked = {"Origin": request.origin, "Access-Control-Request-Method": request.method}
    if names := unsafe_names(request.headers):
        asked["Access-Control-Request-Headers"] = ",".join(names)
    pre = decide(policy, CorsRequest.from_headers("OPTIONS", path, asked))
    lines = head + _step(config, "1. preflight", "OPTIONS", request.target, pre)
    if pre.verdict != "allowed" and pre.enforce:
        if pre.status is None:  # denied_preflight: forward: the upstream's own answer decides
            lines.append(f"2. actual: {request.method} {request.target} is sent only if the upstream's own answer "
                         "to the preflight allows it (denied_preflight: forward)")
        else:
            lines.append(f"2. actual: {request.method} {request.target} is never sent: the browser stops at a "
                         "failed preflight")
        return lines, EXIT_DENIED
    lines += _step(config, "2. actual", request.method, request.target, actual)
    return lines, max(_code(pre), _code(actual))


def _code(decision: Decision) -> int:
    return EXIT_DENIED if decision.verdict.startswith("denied") else EXIT_OK


def _step(config: Config, title: str, method: str, target: str, decision: Decision) -> list[str]:
    assert decision.rule is not None
    rule = decision.rule.rule
    line = config.marks.get(f"rules[{rule.index}]", (0, 0))[0]
    lines = [f"{title}: {method} {target}"] if title else []
    lines += [f"rule:     {rule.name} (rules[{rule.index}], {config.source}:{line})"
              f"{'  [report-only: nothing is changed]' if not decision.enforce else ''}",
              f"verdict:  {decision.verdict}", f"reason:   {decision.reason}"]
    if decision.status is not None and decision.enforce:
        lines.append(f"response: {decision.status} from the proxy (the upstream is not contacted)")
        lines += [f"  {name}: {value}" for name, value in respond_headers(decision)]
        if decision.status == 403:
            lines.append(f"  (body) {decision.body.decode().strip()}")
        return lines
    lines.append("response: forwarded; the upstream's response gets these CORS headers:")
    merged: CIMultiDict[str] = CIMultiDict()
    finish(decision, merged)
    lines += [f"  {name}: {value}" for name, value in merged.items()]
    if decision.verdict == "allowed" and decision.kind == "actual" and rule.upstream_cors == "keep":
        creds = "" if rule.allow_credentials else \
            " and it sends no Access-Control-Allow-Credentials (the rule allows none)"
        lines.append(f"upstream: upstream_cors: keep: the upstream's CORS headers are kept as sent when its "
                     f"Access-Control-Allow-Origin is * or {decision.origin}{creds}; otherwise replaced by these")
    return lines
