"""The request handler: decide with :mod:`policy`, answer or forward with bodies streamed.

Errors we map (one place, :func:`upstream_error`): connect failures and DNS -> 502,
timeouts -> 504, malformed or dropped upstream responses before headers -> 502.
After the response has started, an upstream failure aborts the client connection.
Everything else reaches aiohttp's 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Config, IPNetwork
from .headers import hop_by_hop, merge_vary, rewrite_location
from .paths import BadPath, decode_path, resolve_dots
from .policy import CorsRequest, Decision, Policy, decide, finish, respond_headers

log = logging.getLogger("corsproxy")

VIA = "1.1 corsproxy"
DECISION_HEADER = "CORS-Decision"
# Headers aiohttp's client would otherwise add on its own; a proxy sends what the client sent.
SKIP_AUTO_HEADERS = ("Accept-Encoding", "User-Agent", "Content-Type")
WS_HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
NO_BODY_STATUSES = frozenset({204, 304})
READ_CHUNK = 2**16


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded config with everything the handler derives from it; swapped whole on reload."""

    config: Config
    policy: Policy
    upstream: URL
    upstream_base: str  # "http://host:port/base" without a trailing slash
    upstream_host: str  # Host header value for host_header: upstream
    timeout: aiohttp.ClientTimeout

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
            upstream_host=host,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=config.upstream.connect_timeout,
                sock_read=config.upstream.read_timeout,
            ),
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


Observer = Callable[[Exchange], None]

LIVE_KEY = web.AppKey("live", Live)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
OBSERVERS_KEY = web.AppKey("observers", list[Observer])
# Told when a request starts (after the decision), before its observers are told it finished.
STARTED_KEY = web.AppKey("started", list[Observer])


class BodyTooLarge(Exception):
    """A streamed request body passed ``limits.max_body_size``."""


# ---------------------------------------------------------------------- handler


async def handle(request: web.Request) -> web.StreamResponse:
    snap = request.app[LIVE_KEY].current
    try:
        path = decode_path(request.raw_path)
    except BadPath as exc:
        path, bad = resolve_dots(request.raw_path), exc
    else:
        bad = None
    decision = decide(snap.policy, CorsRequest.from_headers(request.method, path, request.headers))
    ex = Exchange(request.method, request.raw_path, request.remote or "-", decision)
    for hook in request.app.get(STARTED_KEY, ()):
        hook(ex)
    try:
        if bad is not None:
            return _done(request, ex, _error(snap, decision, 400, f"{bad}; such paths are never forwarded"))
        if decision.status is not None and decision.enforce:
            return _done(request, ex, _answer(snap, decision))
        if _is_websocket(request):
            return await _websocket(request, snap, ex)
        return await _forward(request, snap, ex)
    finally:
        _notify(request, ex)


def _done(request: web.Request, ex: Exchange, resp: web.Response) -> web.Response:
    ex.status = resp.status
    ex.bytes_out = len(resp.body or b"") if isinstance(resp.body, bytes) else 0
    return resp


def _notify(request: web.Request, ex: Exchange) -> None:
    ex.duration = time.monotonic() - ex.started
    for observer in request.app[OBSERVERS_KEY]:
        observer(ex)


def _answer(snap: Snapshot, decision: Decision) -> web.Response:
    """A response the proxy makes from the decision alone (preflight 204/403, rejected 403)."""
    resp = web.Response(status=decision.status or 500, body=decision.body or None)
    for name, value in respond_headers(decision):
        resp.headers.add(name, value)
    _debug_header(snap, decision, resp)
    return resp


def _error(snap: Snapshot, decision: Decision, status: int, message: str) -> web.Response:
    """A 400/413/502/504 the proxy makes, with the CORS headers an upstream response would get."""
    resp = web.Response(status=status, text=message + "\n")
    finish(decision, resp.headers)
    _debug_header(snap, decision, resp)
    return resp


def _debug_header(snap: Snapshot, decision: Decision, resp: web.StreamResponse) -> None:
    if snap.config.debug.decision_header and decision.rule is not None:
        resp.headers[DECISION_HEADER] = decision.header_value()


# ---------------------------------------------------------------------- forwarding


def upstream_url(snap: Snapshot, request: web.Request) -> URL:
    # Raw path and query pass unchanged; the upstream's base path is prefixed.
    return URL(snap.upstream_base + request.raw_path, encoded=True)


def upstream_headers(snap: Snapshot, request: web.Request) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, with Host, Via and X-Forwarded-* set."""
    drop = hop_by_hop(request.headers.getall("Connection", ()))
    out = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    up = snap.config.upstream
    if up.host_header == "upstream":
        out["Host"] = snap.upstream_host
    out["Via"] = merge_vary(out.getall("Via", []), [VIA]) if "Via" in out else VIA
    if up.forwarded_headers:
        remote = request.remote or ""
        prior = ", ".join(out.getall("X-Forwarded-For", []))
        out["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
        trusted = snap.trusts(request.remote)
        # SECURITY: only a trusted proxy in front of us may say what the client used.
        if not trusted or "X-Forwarded-Proto" not in out:
            out["X-Forwarded-Proto"] = request.scheme
        if not trusted or "X-Forwarded-Host" not in out:
            out["X-Forwarded-Host"] = request.host
    return out


def proxy_origin(snap: Snapshot, request: web.Request) -> str:
    """The proxy's origin as the client sees it, for Location rewriting."""
    scheme = request.scheme
    if snap.trusts(request.remote):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
    return f"{scheme}://{request.host}"


async def _body(request: web.Request, limit: int | None, ex: Exchange) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        ex.bytes_in += len(chunk)
        if limit is not None and ex.bytes_in > limit:
            raise BodyTooLarge
        yield chunk


def _too_large(request: web.Request, limit: int | None) -> bool:
    return limit is not None and request.content_length is not None and request.content_length > limit


async def _forward(request: web.Request, snap: Snapshot, ex: Exchange) -> web.StreamResponse:
    limit = snap.config.limits.max_body_size
    if _too_large(request, limit):
        return _done(request, ex, _error(snap, ex.decision, 413, f"request body over {limit} bytes (max_body_size)"))
    session = request.app[SESSION_KEY]
    data = _body(request, limit, ex) if request.body_exists else None
    try:
        async with session.request(
            request.method,
            upstream_url(snap, request),
            headers=upstream_headers(snap, request),
            data=data,
            allow_redirects=False,
            timeout=snap.timeout,
            skip_auto_headers=SKIP_AUTO_HEADERS,
        ) as upstream:
            return await _relay(request, snap, ex, upstream)
    except aiohttp.ClientError as exc:
        if ex.status:  # the response had started: nothing to send but an aborted connection
            raise
        if limit is not None and ex.bytes_in > limit:
            return _done(request, ex, _error(snap, ex.decision, 413, f"request body over {limit} bytes (max_body_size)"))
        status, kind = upstream_error(exc)
        ex.upstream_error = kind
        log.warning("upstream %s for %s %s: %s", kind, request.method, request.raw_path, exc)
        return _done(request, ex, _error(snap, ex.decision, status, f"upstream {kind}: {_describe(exc)}"))


async def _relay(request: web.Request, snap: Snapshot, ex: Exchange,
                 upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    drop = hop_by_hop(upstream.headers.getall("Connection", ()))
    headers = resp.headers
    for name, value in upstream.headers.items():
        if name.lower() not in drop:
            headers.add(name, value)
    if snap.config.upstream.rewrite_location:
        _rewrite_locations(snap, request, headers)
    finish(ex.decision, headers)
    _debug_header(snap, ex.decision, resp)
    ex.status = upstream.status
    await resp.prepare(request)
    if request.method != "HEAD" and upstream.status not in NO_BODY_STATUSES:
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                ex.upstream_error = "aborted"
                log.warning("upstream failed mid-body for %s %s: %s; aborting the client connection",
                            request.method, request.raw_path, _describe(exc))
                _abort(request)
                return resp
            if not chunk:
                break
            ex.bytes_out += len(chunk)
            await resp.write(chunk)  # a client that went away raises here, and aiohttp closes up
    await resp.write_eof()
    return resp


def _abort(request: web.Request) -> None:
    # The status line is gone already: the only honest signal left is a broken connection.
    if request.transport is not None:
        request.transport.abort()


def _rewrite_locations(snap: Snapshot, request: web.Request, headers: CIMultiDict[str]) -> None:
    for name in ("Location", "Content-Location"):
        value = headers.get(name)
        if value:
            new = rewrite_location(value, snap.upstream, proxy_origin(snap, request))
            if new is not None:
                headers[name] = new


def upstream_error(exc: aiohttp.ClientError) -> tuple[int, str]:
    """Map a client error before the response started to (status, kind)."""
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
    return 502, "protocol"


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
    headers = upstream_headers(snap, request)
    for name in list(headers):
        if name.lower() in WS_HANDSHAKE_HEADERS:
            headers.popall(name, None)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await request.app[SESSION_KEY].ws_connect(
            upstream_url(snap, request), headers=headers, protocols=protocols, autoping=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        ex.upstream_error = "protocol"
        return _done(request, ex, _error(snap, ex.decision, 502, f"upstream refused the WebSocket: {exc.status}"))
    except aiohttp.ClientError as exc:
        status, ex.upstream_error = upstream_error(exc)
        return _done(request, ex, _error(snap, ex.decision, status, f"upstream {ex.upstream_error}: {exc}"))
    async with upstream:
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=False)
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
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        await client.close()


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, ex: Exchange, direction: str) -> None:
    async for msg in src:
        size = len(msg.data) if isinstance(msg.data, bytes | str) else 0
        if direction == "in":
            ex.bytes_in += size
        else:
            ex.bytes_out += size
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type == aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
    await dst.close(code=src.close_code or aiohttp.WSCloseCode.OK)


def client_ssl(config: Config) -> ssl.SSLContext | bool:
    """The upstream TLS setting for the connector: verified (default CA or ca_file) or off."""
    up = config.upstream
    if not up.tls_verify:
        return False
    if up.ca_file:
        return ssl.create_default_context(cafile=up.ca_file)
    return True
