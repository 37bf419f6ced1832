"""One request's way through the proxy, written once for both ways in: decide, answer itself or forward, relay,
finish, observe.

The two ways in are thin adapters over this core: aiohttp's request handler (:mod:`proxy`) and the
connection-level path (:mod:`fastpath`). Each decides (``policy.decide``), then either serialises the proxy's own
:class:`Answer` (a pure function of the decision: preflights, 403, and with an error 400/413/502/504) or hands the
request to :func:`forward` with its body (:class:`Body`) and a :class:`Responder`: the few things the core needs
of a client connection (start the response, write, finish, the transport for splicing and aborting). Pool use,
framing, header rewriting, error mapping and the observers live here only, so no path can skip or reorder them;
tests/test_edge.py holds both paths to the same header lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from . import splice
from .guard import MIN_RATE_GRACE, RESPONSE_BUFFER, abort
from .headers import HOP_BY_HOP, hop_by_hop, rewrite_location
from .policy import Decision, UpstreamCorsOutcome, finish, respond_headers
from .readable import unexposed
from .snapshot import Live, Snapshot, pool_ssl
from .upstream import Pool, UpstreamError, UpstreamResponse

log = logging.getLogger("corsproxy")

VIA = "1.1 corsproxy"
DECISION_HEADER = "CORS-Decision"
NO_BODY_STATUSES = frozenset({204, 304})
# Request headers this hop has already answered: aiohttp's server sent the client its "100 Continue", and
# passing Expect on would stall the body behind an upstream that never sends one (lowercase).
PROXY_ANSWERED = frozenset({"expect"})
# Client headers never passed on: the proxy writes its own (lowercase). FORWARDED_BY_US too, unless the client
# is a trusted proxy.
OWN_HEADERS = frozenset({"host", "via", "content-length"})
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


class Body(Protocol):
    """A request body as the core forwards it: what is read before an upstream connection is taken (a client
    trickling a small body holds none of the pool meanwhile), then the rest, streamed."""

    @property
    def length(self) -> int | None:
        """Content-Length, when the body is framed by one."""
        ...

    @property
    def chunked(self) -> bool:
        """Framed chunked (``length`` is None)."""
        ...

    async def first(self) -> bytes:
        """The body's start (all of it, when small): raises RequestBodyError."""
        ...

    def rest(self) -> AsyncIterator[bytes] | None:
        """The rest, after :meth:`first`; None when :meth:`first` had all of it."""
        ...


@dataclass(slots=True)
class Whole:
    """A body that is all at hand (or none)."""

    data: bytes
    length: int | None
    chunked: bool = False

    async def first(self) -> bytes:
        return self.data

    def rest(self) -> None:
        return None


class Responder(Protocol):
    """What the core needs of one client connection to send it a response (one adapter per way in)."""

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's transport: for splicing to its socket, and for aborting."""
        ...

    async def send(self, made: Answer, method: str) -> None:
        """Send a whole response the proxy made itself (a HEAD gets its length, no body)."""
        ...

    async def start(self, status: int, reason: str, headers: CIMultiDict[str], *, whole: bytes | None,
                    bodiless: bool, flush: bool) -> None:
        """Send the head of a relayed response. ``whole``: the whole body, which leaves with the head (framed by
        ``Content-Length``, which is set). Else the body follows through :meth:`write`, then :meth:`finish`,
        framed as the headers say (chunked when they give no length, unless ``bodiless``); ``flush``: the head
        must leave now, not with the first write (a stream's client sees it begin, a splice writes after it)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Send a body chunk; waits while the client is slow."""
        ...

    async def finish(self) -> None:
        """End the body."""
        ...


async def respond(ex: Exchange, made: Answer, out: Responder) -> None:
    """Send one of the proxy's own answers and count it in ``ex``."""
    ex.status, ex.bytes_out = made.status, 0 if ex.method == "HEAD" else len(made.body)
    await out.send(made, ex.method)


async def forward(app: web.Application, snap: Snapshot, ex: Exchange, request: Incoming, body: Body,
                  out: Responder) -> None:
    """Forward ``request`` through the upstream pool and relay the response; a failure before the response
    began gets its 400/413/502/504 (:func:`failure`), one after it aborts the client connection."""
    try:
        ready = await body.first()
        rest = body.rest()
        upstream = await pool_for(app, snap).request(
            request.method, snap.upstream_path + request.raw_path, upstream_headers(snap, request), rest,
            length=body.length, chunked=body.chunked, ready=ready,
            may_splice=rest is None and may_splice(out.transport))
    except (UpstreamError, RequestBodyError) as exc:
        await respond(ex, answer(snap, ex.decision, failure(request, snap, ex, exc)), out)
        return
    try:
        await relay(request, snap, ex, upstream, out)
    except ConnectionResetError:  # the client went away while we wrote (aiohttp's ClientConnectionResetError too)
        abort(out.transport)
    finally:
        upstream.release()


async def relay(request: Incoming, snap: Snapshot, ex: Exchange, upstream: UpstreamResponse,
                out: Responder) -> None:
    """The upstream's response to the client: its head as :func:`relay_headers` makes it, framed by the proxy
    (never the upstream's framing passed on), then its body."""
    headers = relay_headers(request, snap, ex, upstream.headers)
    status = ex.status = upstream.status
    bodiless = request.method == "HEAD" or status in NO_BODY_STATUSES
    whole = b"" if bodiless else upstream.whole_body()
    if status in NO_BODY_STATUSES:
        headers.popall("Content-Length", None)  # RFC 9110 §8.6
    elif whole is not None and not bodiless:
        headers["Content-Length"] = str(len(whole))  # whatever the upstream's framing was
    if whole is not None:  # all of it is here: head and body leave in one write
        await out.start(status, upstream.reason, headers, whole=whole, bodiless=bodiless, flush=False)
        ex.bytes_out = len(whole)
        return
    if _is_event_stream(headers):
        upstream.detach()  # open for as long as the page listens: it must not hold a slot of the pool
    # Part of the body is here: the head leaves with it, else at once, so that a client of a stream (SSE) sees
    # the response begin. And at once when the rest may bypass the process: it must be out before splice_rest.
    await out.start(status, upstream.reason, headers, whole=None, bodiless=False,
                    flush=not upstream.has_data or may_splice(out.transport))
    if await relay_body(request, snap, ex, upstream, out.transport, out.write):
        await out.finish()


def _is_event_stream(headers: CIMultiDict[str]) -> bool:
    return headers.get("Content-Type", "").partition(";")[0].strip().lower() == "text/event-stream"


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


def decision_header(snap: Snapshot, decision: Decision, kept: UpstreamCorsOutcome = None) -> str | None:
    """The ``CORS-Decision`` value when ``debug.decision_header`` is on and a rule matched."""
    if not snap.config.debug.decision_header or decision.rule is None:
        return None
    return decision.header_value(kept)


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


def over_limit(limit: int | None) -> str:
    return f"request body over {limit} bytes (limits.max_body_size)"


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


def retire_pools(app: web.Application, snap: Snapshot) -> None:
    """After a reload: pools made for other settings keep no idle connection and reuse none (the requests still
    running on them finish there). Their WebSocket sessions stay until the app stops: closing one would cut
    the WebSockets open on it."""
    key = snap.pool_key
    pools = app[POOLS_KEY]
    for old in [k for k in pools if k != key]:
        pools.pop(old).retire()


def failure(request: Incoming, snap: Snapshot, ex: Exchange, exc: Exception) -> tuple[int, str]:
    """Status and message for a request that failed before the upstream answered; logged, counted in ``ex``."""
    status, kind = upstream_error(exc)
    if status == 413:  # the client's fault, not the upstream's: no upstream_error
        return status, over_limit(snap.config.limits.max_body_size)
    if status == 400:
        return status, f"request body: {_describe(exc)}"
    ex.upstream_error = kind
    log.warning("upstream %s for %s %s: %s", kind, request.method, request.raw_path, _describe(exc))
    return status, f"upstream {kind}: {_describe(exc)}"


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
        ex.unexposed = unexposed(decision, [name for name, _ in raw])
    lowered = [name.lower() for name, _ in raw]
    names = set(lowered)
    drop = hop_by_hop(v for k, v in raw if k.lower() == "connection") if "connection" in names else HOP_BY_HOP
    headers = CIMultiDict([pair for pair, low in zip(raw, lowered) if low not in drop])
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
