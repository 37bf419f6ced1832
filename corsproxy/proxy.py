"""The request handler: decide with :mod:`policy`, answer or forward with bodies streamed.

HTTP requests go upstream through :mod:`upstream` (a lean keep-alive pool); WebSockets through
aiohttp's client. Errors we map (one place, :func:`upstream_error`): connect failures and DNS ->
502, timeouts -> 504, malformed or dropped upstream responses before headers -> 502, a refused
WebSocket handshake -> 502, and a request body that passes ``max_body_size`` or breaks its
framing -> 413 / 400 (:class:`RequestBodyError`, raised in our body generator and passed through
by the pool). After the response has started, an upstream failure (or a client write that
fails) aborts the client connection. A client that goes away cancels the handler
(``handler_cancellation``), and so the upstream request. Everything else reaches aiohttp's 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from . import splice
from .config import Config, IPNetwork
from .guard import MIN_RATE_GRACE, RESPONSE_BUFFER, abort
from .headers import HOP_BY_HOP, SERVER, hop_by_hop, rewrite_location
from .paths import BadPath, decode_path, resolve_dots
from .policy import CorsRequest, Decision, Policy, UpstreamCorsOutcome, decide, finish, respond_headers
from .readable import unexposed
from .upstream import Pool, UpstreamError, UpstreamResponse

log = logging.getLogger("corsproxy")

VIA = "1.1 corsproxy"
DECISION_HEADER = "CORS-Decision"
WS_HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
NO_BODY_STATUSES = frozenset({204, 304})
# Request headers this hop has already answered: aiohttp's server sent the client its "100 Continue", and
# passing Expect on would stall the body behind an upstream that never sends one (lowercase).
PROXY_ANSWERED = frozenset({"expect"})
# Client headers never passed on: the proxy writes its own (lowercase). FORWARDED_BY_US too, unless the client
# is a trusted proxy.
OWN_HEADERS = frozenset({"host", "via", "content-length"})
BODY_BEFORE_CONNECTING = 2**16  # bytes of a request body read before taking an upstream connection
FORWARDED_BY_US = frozenset({"x-forwarded-proto", "x-forwarded-host"})


class Incoming(Protocol):
    """What forwarding reads of a client's request: an aiohttp ``web.Request``, or fastpath's own (read-only)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded config with everything the handler derives from it; swapped whole on reload."""

    config: Config
    policy: Policy
    upstream: URL
    upstream_base: str  # "http://host:port/base" without a trailing slash
    upstream_path: str  # "/base" (raw, without a trailing slash), prefixed to every request target
    upstream_host: str  # Host header value for host_header: upstream
    # Everything an upstream pool (and the WebSocket session) is made from: a reload that changes any of it gets
    # a new one, and requests already running finish on theirs.
    pool_key: tuple[object, ...] = ()

    @classmethod
    def build(cls, config: Config) -> Snapshot:
        up = URL(config.upstream.url)
        host = up.raw_host or ""
        if up.explicit_port:
            host = f"{host}:{up.port}"
        return cls(
            config=config,
            policy=Policy.from_config(config),
            upstream=up,
            upstream_base=config.upstream.url.rstrip("/"),
            upstream_path=up.raw_path.rstrip("/"),
            upstream_host=host,
            pool_key=(up.scheme, up.raw_host, up.port, config.upstream.tls_verify, config.upstream.ca_file,
                      config.upstream.connect_timeout, config.upstream.read_timeout,
                      config.upstream.max_connections),
        )

    def trusts(self, remote: str | None) -> bool:
        nets: tuple[IPNetwork, ...] = self.config.listen.trusted_proxies
        if not nets or not remote:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in net for net in nets)


class Live:
    """The config in force. Handlers read ``current`` once, so in-flight requests finish on theirs."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot


@dataclass(slots=True)
class Exchange:
    """What happened to one request: fed to the access log, metrics and /decisions."""

    method: str
    path: str
    client: str
    decision: Decision
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duration: float = 0.0
    upstream_error: str | None = None  # refused, dns, timeout, reset, tls, protocol, aborted
    websocket: bool = False
    unexposed: tuple[str, ...] = ()  # response header names the page could not read (for `corsproxy suggest`)
    upstream_cors: UpstreamCorsOutcome = None  # upstream_cors: keep kept or replaced the upstream's, and why


Observer = Callable[[Exchange], None]

LIVE_KEY = web.AppKey("live", Live)
SESSIONS_KEY = web.AppKey("sessions", dict)  # Snapshot.pool_key -> aiohttp.ClientSession, for WebSockets only
POOLS_KEY = web.AppKey("pools", dict)  # Snapshot.pool_key -> upstream.Pool
OBSERVERS_KEY = web.AppKey("observers", list[Observer])
# Told when a request starts (after the decision), before its observers are told it finished.
STARTED_KEY = web.AppKey("started", list[Observer])
# Told the head of each response the fast path sends, as (method, target, request headers, status, reason,
# response headers); aiohttp's path has on_response_prepare. For the demo's wire view; empty in production.
Tap = Callable[[str, str, list[tuple[str, str]], int, str, list[tuple[str, str]]], None]
TAPS_KEY = web.AppKey("taps", list[Tap])


class RequestBodyError(Exception):
    """The client's request body failed on its way upstream (malformed framing); the client gets ``status``."""

    status, kind = 400, "bad-body"


class BodyTooLarge(RequestBodyError):
    """A streamed request body passed ``limits.max_body_size``."""

    status, kind = 413, "too-large"


# ---------------------------------------------------------------------- handler


async def handle(request: web.Request) -> web.StreamResponse:
    snap = request.app[LIVE_KEY].current
    bad: BadPath | None = None
    try:
        path = _rule_path(request.raw_path)
    except BadPath as exc:
        path, bad = resolve_dots(request.raw_path), exc
    decision = decide(snap.policy, CorsRequest.from_headers(request.method, path, request.headers))
    ex = begin(request.app, Exchange(request.method, request.raw_path, request.remote or "-", decision))
    try:
        if bad is not None:
            return _done(request, ex, _error(snap, decision, 400, f"{bad}; such paths are never forwarded"))
        if decision.status is not None and decision.enforce:
            return _done(request, ex, _answer(snap, decision))
        if _is_websocket(request):
            return await _websocket(request, snap, ex)
        return await _forward(request, snap, ex)
    finally:
        notify(request.app, ex)


def _rule_path(raw_path: str) -> str:
    """The path rules match (paths.decode_path), for an origin-form target only."""
    # SECURITY: an absolute-form target ("GET http://host/admin", RFC 9112 §3.2.2) matches no rule and
    # would be forwarded as "/base" + "http://host/admin": only "/path?query" is matched and forwarded.
    if not raw_path.startswith("/"):
        raise BadPath(f"request target {raw_path!r} is not a path (only origin-form '/path?query' is served)")
    return decode_path(raw_path)


def _done(request: web.Request, ex: Exchange, resp: web.Response) -> web.Response:
    ex.status = resp.status
    body = resp.body  # (aiohttp sends a HEAD answer's length only)
    ex.bytes_out = len(body) if request.method != "HEAD" and isinstance(body, bytes) else 0
    return resp


def begin(app: web.Application, ex: Exchange) -> Exchange:
    """Tell the ``started`` hooks (the in-flight gauge) about ``ex``: every exchange, on either path, begins here
    and ends in :func:`notify`."""
    for hook in app[STARTED_KEY]:
        hook(ex)
    return ex


def notify(app: web.Application, ex: Exchange) -> None:
    ex.duration = time.monotonic() - ex.started
    for observer in app[OBSERVERS_KEY]:
        observer(ex)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response the proxy makes itself, as data: both ways through the proxy serialise it (:func:`_response`
    here into aiohttp's, fastpath's into bytes), so they cannot drift apart."""

    status: int
    headers: tuple[tuple[str, str], ...]  # in order; Content-Length, Date and Server are the serialiser's
    body: bytes = b""

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


def answer(snap: Snapshot, decision: Decision, error: tuple[int, str] | None = None) -> Answer:
    """What the proxy answers itself: from the decision alone (preflight 204/403, a rejected origin's 403); or,
    with ``error`` (status, message), a 400/413/502/504 carrying the CORS headers an upstream response would get."""
    if error is None:
        status, body = decision.status or 500, decision.body
        headers: CIMultiDict[str] = CIMultiDict(respond_headers(decision))
    else:
        status, body = error[0], (error[1] + "\n").encode()
        headers = CIMultiDict({"Content-Type": "text/plain; charset=utf-8"})
        finish(decision, headers)
    if (debug := decision_header(snap, decision)) is not None:
        headers[DECISION_HEADER] = debug
    return Answer(status, tuple(headers.items()), body)


def _response(made: Answer) -> web.Response:
    """An :class:`Answer` as aiohttp's response (which adds Content-Length, Date and Server)."""
    return web.Response(status=made.status, body=made.body or None, headers=CIMultiDict(made.headers))


def _answer(snap: Snapshot, decision: Decision) -> web.Response:
    return _response(answer(snap, decision))


def _error(snap: Snapshot, decision: Decision, status: int, message: str) -> web.Response:
    return _response(answer(snap, decision, (status, message)))


def decision_header(snap: Snapshot, decision: Decision, kept: UpstreamCorsOutcome = None) -> str | None:
    """The ``CORS-Decision`` value when ``debug.decision_header`` is on and a rule matched."""
    if not snap.config.debug.decision_header or decision.rule is None:
        return None
    return decision.header_value(kept)


def _debug_header(snap: Snapshot, decision: Decision, resp: web.StreamResponse) -> None:
    if (debug := decision_header(snap, decision)) is not None:
        resp.headers[DECISION_HEADER] = debug


# ---------------------------------------------------------------------- forwarding


def upstream_url(snap: Snapshot, request: web.Request) -> URL:
    # Raw path and query pass unchanged; the upstream's base path is prefixed.
    return URL(snap.upstream_base + request.raw_path, encoded=True)


def upstream_headers(snap: Snapshot, request: Incoming, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop ones (and ``drop``), with Host, Via and X-Forwarded-* set.

    Never ``Content-Length``: the pool frames the body it sends from the body it reads (upstream.Pool.request).
    The proxy's own headers are computed from what is left after hop-by-hop removal.
    """
    headers = request.headers
    drop = (hop_by_hop(headers.getall("Connection")) if "Connection" in headers else HOP_BY_HOP) | drop | PROXY_ANSWERED
    up = snap.config.upstream
    trusted = up.forwarded_headers and snap.trusts(request.remote)
    # SECURITY: framing is the proxy's own, never copied; only a trusted proxy may say X-Forwarded-Proto/-Host.
    own = OWN_HEADERS if trusted or not up.forwarded_headers else OWN_HEADERS | FORWARDED_BY_US
    out, via, xff = [], [], []
    for name, value in headers.items():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "via":
            via.append(value)
        elif lower == "x-forwarded-for" and up.forwarded_headers:
            xff.append(value)
        elif lower not in own:
            out.append((name, value))
    host = headers.get("Host") if up.host_header == "preserve" else None
    out.append(("Host", host or snap.upstream_host))
    # Appended, never merged: a second corsproxy in a chain is a second hop (RFC 9110 §7.6.3).
    out.append(("Via", ", ".join([*via, VIA])))
    if up.forwarded_headers:
        remote = request.remote or ""
        out.append(("X-Forwarded-For", ", ".join([*xff, remote])))
        kept = {name.lower() for name, _ in out} if trusted else frozenset()
        if "x-forwarded-proto" not in kept:
            out.append(("X-Forwarded-Proto", request.scheme))
        if "x-forwarded-host" not in kept:
            out.append(("X-Forwarded-Host", request.host))
    return out


def proxy_origin(snap: Snapshot, request: Incoming) -> str:
    """The proxy's origin as the client sees it, for Location rewriting."""
    scheme = request.scheme
    if snap.trusts(request.remote):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
    return f"{scheme}://{request.host}"


@dataclass(slots=True)
class _Upload:
    """The client's request body on its way upstream, counted against ``limits.max_body_size``."""

    request: web.Request
    limit: int | None
    ex: Exchange

    async def first(self, size: int) -> bytes:
        """The body's first ``size`` bytes or all of it, read before an upstream connection is taken: a client
        trickling a small body holds no connection of the pool meanwhile (limits.min_data_rate ends it)."""
        content = self.request.content
        try:
            parts = [self._counted(content.read_nowait())]  # what came with the head (often all of it)
            got = len(parts[0])
            while got < size and not content.at_eof():
                parts.append(self._counted(await content.readany()))
                got += len(parts[-1])
        except HttpProcessingError as exc:
            raise RequestBodyError(f"malformed request body: {exc}") from exc
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.content.iter_any():
                yield self._counted(chunk)
        except HttpProcessingError as exc:  # malformed chunked framing, from aiohttp's server parser
            raise RequestBodyError(f"malformed request body: {exc}") from exc

    def _counted(self, chunk: bytes) -> bytes:
        self.ex.bytes_in += len(chunk)
        if self.limit is not None and self.ex.bytes_in > self.limit:
            raise BodyTooLarge(_over_limit(self.limit))
        return chunk


def _over_limit(limit: int | None) -> str:
    return f"request body over {limit} bytes (limits.max_body_size)"


def _too_large(request: web.Request, limit: int | None) -> bool:
    return limit is not None and request.content_length is not None and request.content_length > limit


def pool_for(app: web.Application, snap: Snapshot) -> Pool:
    """The keep-alive pool for the snapshot's upstream and its settings (``Snapshot.pool_key``)."""
    key = snap.pool_key
    pools = app[POOLS_KEY]
    pool = pools.get(key)
    if pool is None:
        up = snap.config.upstream
        tls = pool_ssl(snap.config) if snap.upstream.scheme == "https" else None
        pool = pools[key] = Pool(
            snap.upstream.raw_host or "", snap.upstream.port or 80, ssl_context=tls,
            server_hostname=snap.upstream.raw_host, limit=up.max_connections,
            connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
        )
    return pool


def ws_session(app: web.Application, snap: Snapshot) -> aiohttp.ClientSession:
    """aiohttp's client session for WebSockets, made from the same settings as the pool (``Snapshot.pool_key``)."""
    key = snap.pool_key
    sessions = app[SESSIONS_KEY]
    session = sessions.get(key)
    if session is None:
        up = snap.config.upstream
        session = sessions[key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=up.max_connections, ssl=client_ssl(snap.config),
                                           enable_cleanup_closed=False),
            auto_decompress=False,  # encoded bodies pass byte for byte
            cookie_jar=aiohttp.DummyCookieJar(),  # SECURITY: never carry one client's cookies to another
            trust_env=False,
            read_bufsize=2**16,
            # The handshake is bounded like any upstream request; once open, aiohttp drops the read
            # timeout (ws_receive=None), so an idle WebSocket is not cut.
            timeout=aiohttp.ClientTimeout(total=None, connect=up.connect_timeout, sock_connect=up.connect_timeout,
                                          sock_read=up.read_timeout),
        )
    return session


def retire_pools(app: web.Application, snap: Snapshot) -> None:
    """After a reload: pools made for other settings keep no idle connection and reuse none (the requests still
    running on them finish there). Their WebSocket sessions stay until the app stops: closing one would cut
    the WebSockets open on it."""
    key = snap.pool_key
    pools = app[POOLS_KEY]
    for old in [k for k in pools if k != key]:
        pools.pop(old).retire()


async def _forward(request: web.Request, snap: Snapshot, ex: Exchange) -> web.StreamResponse:
    limit = snap.config.limits.max_body_size
    if _too_large(request, limit):
        return _done(request, ex, _error(snap, ex.decision, 413, _over_limit(limit)))
    has_body = request.body_exists
    body, ready = None, b""
    try:
        if has_body:
            upload = _Upload(request, limit, ex)
            ready = await upload.first(BODY_BEFORE_CONNECTING)
            body = None if request.content.at_eof() else upload.chunks()
        upstream = await pool_for(request.app, snap).request(
            request.method, snap.upstream_path + request.raw_path, upstream_headers(snap, request), body,
            length=request.content_length, chunked=has_body and request.content_length is None, ready=ready,
            may_splice=body is None and may_splice(request.transport),
        )
    except (UpstreamError, RequestBodyError) as exc:
        return _done(request, ex, _failed(request, snap, ex, exc))
    try:
        return await _relay(request, snap, ex, upstream)
    finally:
        upstream.release()


def _failed(request: web.Request, snap: Snapshot, ex: Exchange, exc: Exception) -> web.Response:
    """The response for a request that failed before any of the upstream's response was relayed."""
    return _error(snap, ex.decision, *failure(request, snap, ex, exc))


def failure(request: Incoming, snap: Snapshot, ex: Exchange, exc: Exception) -> tuple[int, str]:
    """Status and message for a request that failed before the upstream answered; logged, counted in ``ex``."""
    status, kind = upstream_error(exc)
    if status == 413:  # the client's fault, not the upstream's: no upstream_error
        return status, _over_limit(snap.config.limits.max_body_size)
    if status == 400:
        return status, f"request body: {_describe(exc)}"
    ex.upstream_error = kind
    log.warning("upstream %s for %s %s: %s", kind, request.method, request.raw_path, _describe(exc))
    return status, f"upstream {kind}: {_describe(exc)}"


class RelayedResponse(web.StreamResponse):
    """The upstream's response on its way to the client; ``untyped`` when the upstream sent no Content-Type,
    ``named`` when it sent a Server header (kept as sent)."""

    untyped = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.named = "Server" in self.headers


async def keep_untyped(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: take back the ``application/octet-stream`` aiohttp adds to an untyped body.

    A proxy does not generate the content (RFC 9110 §8.3), and a made-up type changes what a browser
    does with it (no sniffing, a download instead of a page).
    """
    if isinstance(response, RelayedResponse) and response.untyped:
        response.headers.popall("Content-Type", None)


async def name_server(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: ``Server: corsproxy`` instead of the ``Python/3.x aiohttp/3.x`` aiohttp has just
    added where no Server was set (the proxy's own answers, an upstream response without one)."""
    if response.headers.get("Server") == SERVER_SOFTWARE and not (isinstance(response, RelayedResponse) and
                                                                    response.named):
        response.headers["Server"] = SERVER


async def _relay(request: web.Request, snap: Snapshot, ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    resp = RelayedResponse(status=upstream.status, reason=upstream.reason,
                           headers=relay_headers(request, snap, ex, upstream.headers))
    resp.untyped = "Content-Type" not in resp.headers
    ex.status = upstream.status
    has_body = request.method != "HEAD" and upstream.status not in NO_BODY_STATUSES
    whole = upstream.whole_body() if has_body else b""
    try:
        if whole is not None:
            # All of it is here already: head and body leave in one write (aiohttp's opt-in buffering).
            resp._send_headers_immediately = False
            if has_body:  # framed by its length, whatever the upstream's framing was (as the fast path does)
                resp.content_length = len(whole)
            ex.bytes_out += len(whole)
            await resp.prepare(request)
            await resp.write_eof(whole)
            return resp
        # Part of the body is here: the head leaves with it (aiohttp holds the head until the first
        # write), else at once, so that a client of a stream (SSE) sees the response begin. And at once
        # when the rest may bypass the process: it must be out before splice_rest writes.
        resp._send_headers_immediately = not upstream.has_data or may_splice(request.transport)
        await resp.prepare(request)
        if await relay_body(request, snap, ex, upstream, request.transport, resp.write):
            await resp.write_eof()
        return resp  # (broken off: aiohttp's own write_eof meets a closed transport, logged at debug)
    except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError is one)
        abort(request.transport)
    return resp


async def relay_body(request: Incoming, snap: Snapshot, ex: Exchange, upstream: UpstreamResponse,
                     transport: asyncio.Transport | None, write: Callable[[bytes], Awaitable[None]]) -> bool:
    """Relay the upstream's body, on either path: spliced socket to socket when it may be, else each chunk through
    ``write`` (which waits while the client is slow). False when it broke off (the client connection is aborted)."""
    try:
        if await splice_rest(transport, ex, upstream, snap.config.limits.min_data_rate):
            return True
        while chunk := await upstream.read():
            await write(chunk)
            ex.bytes_out += len(chunk)
    except (UpstreamError, RequestBodyError, splice.DestinationStalled) as exc:
        broke_off(request, ex, exc, transport)
        return False
    return True


def may_splice(transport: asyncio.BaseTransport | None) -> bool:
    """Whether a response body for this client connection may go socket to socket (:func:`splice_rest`)."""
    return splice.AVAILABLE and transport is not None and transport.get_extra_info("sslcontext") is None


async def splice_rest(transport: asyncio.BaseTransport | None, ex: Exchange, upstream: UpstreamResponse,
                      min_rate: float | None) -> bool:
    """Send the rest of the upstream's body to the client without it entering the process
    (``Connection.splice_body``); False when it cannot go that way (nothing sent), or stopped because the
    client is slow and the rest fits guard.RESPONSE_BUFFER (the caller relays the rest; its connection's
    buffer holds it for the client).

    Raises UpstreamError, splice.DestinationStalled, or ConnectionResetError when the client went away.
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    # (Bytes still in the transport's buffer would reach the client after the spliced ones.)
    if sock is None or not may_splice(transport) or transport.get_write_buffer_size():  # type: ignore[union-attr]
        return False
    sent = [0]
    try:
        return await upstream.splice_body(sock.fileno(), sent, budget=RESPONSE_BUFFER, min_rate=min_rate,
                                          grace=MIN_RATE_GRACE)
    finally:
        ex.bytes_out += sent[0]


def broke_off(request: Incoming, ex: Exchange, exc: Exception, transport: asyncio.Transport | None) -> None:
    """Log an exchange that broke off after its response began, and abort the client connection."""
    abort(transport, reset=isinstance(exc, splice.DestinationTooSlow))
    if isinstance(exc, UpstreamError):  # resets, malformed framing and the read timeout
        ex.upstream_error = "aborted"
        log.warning("upstream failed mid-body for %s %s: %s; aborting the client connection",
                    request.method, request.raw_path, _describe(exc))
    elif isinstance(exc, RequestBodyError):  # the request body failed after the response began
        log.warning("request body for %s %s failed after the response started (%s); closing the client "
                    "connection", request.method, request.raw_path, _describe(exc))
    else:  # splice.DestinationStalled
        log.warning("%s %s: %s; closing its connection", request.method, request.raw_path, exc)


def relay_headers(request: Incoming, snap: Snapshot, ex: Exchange, raw: list[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers as the client gets them: hop-by-hop dropped, Location rewritten,
    the CORS part written by policy.finish, and the decision header when on. ``ex`` is told what
    ``upstream_cors: keep`` did (for the access log) and which headers the page cannot read (for suggest)."""
    decision = ex.decision
    if decision.kind == "actual" and decision.origin is not None:
        ex.unexposed = unexposed(decision, (name for name, _ in raw))
    names = {name.lower() for name, _ in raw}
    drop = hop_by_hop(v for k, v in raw if k.lower() == "connection") if "connection" in names else HOP_BY_HOP
    headers = CIMultiDict([(name, value) for name, value in raw if name.lower() not in drop])
    if snap.config.upstream.rewrite_location and ("location" in names or "content-location" in names):
        _rewrite_locations(snap, request, headers)
    ex.upstream_cors = kept = finish(decision, headers)
    if (debug := decision_header(snap, decision, kept)) is not None:
        headers[DECISION_HEADER] = debug
    return headers


def _rewrite_locations(snap: Snapshot, request: Incoming, headers: CIMultiDict[str]) -> None:
    for name in ("Location", "Content-Location"):
        value = headers.get(name)
        if value:
            new = rewrite_location(value, snap.upstream, proxy_origin(snap, request))
            if new is not None:
                headers[name] = new


def upstream_error(exc: BaseException) -> tuple[int, str]:
    """Map a failure before the response started to (status, kind): the one place errors get a status."""
    if isinstance(exc, RequestBodyError | UpstreamError):
        return exc.status, exc.kind
    # WebSockets go through aiohttp's client.
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return 504, "timeout"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
        return 502, "tls"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return 502, "dns"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return 502, "refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return 502, "reset"
    return 502, "protocol"  # a malformed response, or a WebSocket handshake the upstream refused


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- websockets


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and request.method == "GET"


async def _websocket(request: web.Request, snap: Snapshot, ex: Exchange) -> web.StreamResponse:
    ex.websocket = True
    if ex.decision.verdict == "denied:origin" and ex.decision.enforce:
        # SECURITY: browsers apply no CORS to WebSockets; this check is the only one.
        refused = web.Response(status=403, text=f"WebSocket refused: {ex.decision.reason}\n",
                               headers={"Vary": "Origin"})
        _debug_header(snap, ex.decision, refused)
        return _done(request, ex, refused)
    headers = CIMultiDict(upstream_headers(snap, request, WS_HANDSHAKE_HEADERS))
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await ws_session(request.app, snap).ws_connect(
            upstream_url(snap, request), headers=headers, protocols=protocols, autoping=False, autoclose=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT),
        )
    except aiohttp.ClientError as exc:  # a refused handshake (WSServerHandshakeError) included
        return _done(request, ex, _failed(request, snap, ex, exc))
    async with upstream:
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=False,
                                       autoclose=False)  # close frames are relayed by _pump
        finish(ex.decision, client.headers)
        _debug_header(snap, ex.decision, client)
        await client.prepare(request)
        ex.status = 101
        await _pump_both(client, upstream, ex)
    return client


async def _pump_both(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, ex: Exchange) -> None:
    tasks = [asyncio.ensure_future(_pump(client, upstream, ex, "in")),
             asyncio.ensure_future(_pump(upstream, client, ex, "out"))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if not first.cancelled() and first.exception() is None and first.result() is False and pending:
            # Woken by the other pump's close() of its source: that pump is in the middle of the close
            # handshake (sending one side's close on, waiting for the answer); cancelling it would cut it.
            await asyncio.wait(pending, timeout=WS_CLOSE_TIMEOUT * 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close(code=WS_LOST["in"])
        await client.close(code=WS_LOST["out"])


WSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
# Codes a peer may report that must never be sent in a close frame (RFC 6455 §7.4.1): 1005 (none given)
# is passed on as 1000; 1006/1015 (connection lost) as WS_LOST: "going away" (1001) to the upstream when
# the client vanished ("in"), "bad gateway" (1014) to the client when the upstream did ("out").
WS_NO_CODE = 1005
WS_CLOSE_TIMEOUT = 10.0  # seconds the upstream has to answer a close frame
WS_UNSENDABLE = frozenset({1006, 1015})
WS_LOST = {"in": aiohttp.WSCloseCode.GOING_AWAY, "out": aiohttp.WSCloseCode.BAD_GATEWAY}
WS_DATA = {aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG}


async def _pump(src: WSocket, dst: WSocket, ex: Exchange, direction: str) -> bool:
    """Relay src -> dst; when src closes, close dst with src's code and reason, then answer src's close with
    dst's answer. False when this pump was only woken by the other one closing src."""
    while (msg := await src.receive()).type in WS_DATA:
        await _send(dst, msg)
        size = len(msg.data)
        if direction == "in":
            ex.bytes_in += size
        else:
            ex.bytes_out += size
    if msg.type == aiohttp.WSMsgType.CLOSING:
        return False  # our own close() of src woke this receive: the other pump is closing both sides
    code, reason = _close_frame(msg, WS_LOST[direction])
    await dst.close(code=code, message=reason)
    answer = dst.close_code  # what dst answered the close with (1006 when it did not)
    await src.close(code=code if answer is None or answer in WS_UNSENDABLE else answer, message=reason)
    return True


async def _send(dst: WSocket, msg: aiohttp.WSMessage) -> None:
    if msg.type == aiohttp.WSMsgType.TEXT:
        await dst.send_str(msg.data)
    elif msg.type == aiohttp.WSMsgType.BINARY:
        await dst.send_bytes(msg.data)
    elif msg.type == aiohttp.WSMsgType.PING:
        await dst.ping(msg.data)
    else:
        await dst.pong(msg.data)


def _close_frame(msg: aiohttp.WSMessage, lost: int) -> tuple[int, bytes]:
    """The code and reason to pass on for how src ended: its CLOSE frame, or ``lost`` when it just vanished."""
    code = int(msg.data or WS_NO_CODE) if msg.type == aiohttp.WSMsgType.CLOSE else 1006  # else CLOSED or ERROR
    if code == WS_NO_CODE:
        return aiohttp.WSCloseCode.OK, b""
    if code in WS_UNSENDABLE:
        return lost, b""
    return code, (msg.extra or "").encode()


def pool_ssl(config: Config) -> ssl.SSLContext:
    """The TLS context for an https upstream: verified (system CAs or ca_file), or not at all."""
    setting = client_ssl(config)
    if isinstance(setting, ssl.SSLContext):
        return setting
    ctx = ssl.create_default_context()
    if setting is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_ssl(config: Config) -> ssl.SSLContext | bool:
    """The upstream TLS setting for the connector: verified (default CA or ca_file) or off."""
    up = config.upstream
    if not up.tls_verify:
        return False
    if up.ca_file:
        return ssl.create_default_context(cafile=up.ca_file)
    return True
