"""The aiohttp way in: its request handler as a thin adapter over :mod:`exchange`, and WebSockets.

``handle`` decides, then answers itself (``exchange.answer``, as an aiohttp response) or hands the request to
``exchange.forward`` with the body as it streams in (:class:`Upload`) and :class:`AiohttpResponder`. This path
takes what the connection-level one (:mod:`fastpath`) leaves: bodies still arriving or chunked, ``Expect``,
HTTP/1.0, WebSockets, odd targets. WebSockets go through aiohttp's client (``ws_session``), their close codes and
reasons relayed both ways. A client that goes away cancels the handler (``handler_cancellation``), and so the
upstream request; everything unexpected reaches aiohttp's 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from .exchange import (
    DECISION_HEADER,
    LIVE_KEY,
    SESSIONS_KEY,
    Answer,
    BodyTooLarge,
    Exchange,
    RequestBodyError,
    Whole,
    answer,
    begin,
    decision_header,
    failure,
    forward,
    notify,
    over_limit,
    respond,
    upstream_headers,
)
from .headers import SERVER
from .paths import BadPath, decode_path, resolve_dots
from .policy import CorsRequest, decide, finish
from .snapshot import Snapshot, client_ssl

log = logging.getLogger("corsproxy")

WS_HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
BODY_BEFORE_CONNECTING = 2**16  # bytes of a request body read before taking an upstream connection


async def handle(request: web.Request) -> web.StreamResponse:
    snap = request.app[LIVE_KEY].current
    bad: BadPath | None = None
    try:
        path = _rule_path(request.raw_path)
    except BadPath as exc:
        path, bad = resolve_dots(request.raw_path), exc
    decision = decide(snap.policy, CorsRequest.from_headers(request.method, path, request.headers))
    ex = begin(request.app, Exchange(request.method, request.raw_path, request.remote or "-", decision))
    out = AiohttpResponder(request)
    limit = snap.config.limits.max_body_size
    try:
        if bad is not None:
            await respond(ex, answer(snap, decision, (400, f"{bad}; such paths are never forwarded")), out)
        elif decision.status is not None and decision.enforce:
            await respond(ex, answer(snap, decision), out)
        elif _is_websocket(request):
            return await _websocket(request, snap, ex, out)
        elif limit is not None and (request.content_length or 0) > limit:
            await respond(ex, answer(snap, decision, (413, over_limit(limit))), out)
        else:
            body = Upload(request, limit, ex) if request.body_exists else Whole(b"", request.content_length)
            await forward(request.app, snap, ex, request, body, out)
        return out.sent
    finally:
        notify(request.app, ex)


def _rule_path(raw_path: str) -> str:
    """The path rules match (paths.decode_path), for an origin-form target only."""
    # SECURITY: an absolute-form target ("GET http://host/admin", RFC 9112 §3.2.2) matches no rule and
    # would be forwarded as "/base" + "http://host/admin": only "/path?query" is matched and forwarded.
    if not raw_path.startswith("/"):
        raise BadPath(f"request target {raw_path!r} is not a path (only origin-form '/path?query' is served)")
    return decode_path(raw_path)


class AiohttpResponder:
    """:class:`exchange.Responder` over aiohttp's response objects (which add Date, Server and the framing)."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None  # what handle returns, once sent or started

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.request.transport  # type: ignore[return-value]

    async def send(self, made: Answer, method: str) -> None:
        self.response = web.Response(status=made.status, body=made.body or None, headers=CIMultiDict(made.headers))
        # (returned unprepared: aiohttp's loop sends it, a HEAD's with its length and no body)

    async def start(self, status: int, reason: str, headers: CIMultiDict[str], *, whole: bytes | None,
                    bodiless: bool, flush: bool) -> None:
        resp = self.response = RelayedResponse(status=status, reason=reason, headers=headers)
        resp.untyped = "Content-Type" not in headers
        # aiohttp's opt-in buffering: the head leaves with the first write (or the whole body) unless flushed.
        resp._send_headers_immediately = flush
        await resp.prepare(self.request)
        if whole is not None:
            await resp.write_eof(whole)

    async def write(self, chunk: bytes) -> None:
        await self.sent.write(chunk)

    async def finish(self) -> None:
        await self.sent.write_eof()

    @property
    def sent(self) -> web.StreamResponse:
        """The response sent or begun (every way through :mod:`exchange` makes one)."""
        assert self.response is not None
        return self.response


def upstream_url(snap: Snapshot, request: web.Request) -> URL:
    # Raw path and query pass unchanged; the upstream's base path is prefixed.
    return URL(snap.upstream_base + request.raw_path, encoded=True)


@dataclass(slots=True)
class Upload:
    """The client's request body as it streams in (:class:`exchange.Body`), counted against
    ``limits.max_body_size``."""

    request: web.Request
    limit: int | None
    ex: Exchange

    @property
    def length(self) -> int | None:
        return self.request.content_length

    @property
    def chunked(self) -> bool:
        return self.request.content_length is None

    async def first(self) -> bytes:
        """The first BODY_BEFORE_CONNECTING bytes or all of it, read before an upstream connection is taken: a
        client trickling a small body holds no connection of the pool meanwhile (limits.min_data_rate ends it)."""
        content = self.request.content
        try:
            parts = [self._counted(content.read_nowait())]  # what came with the head (often all of it)
            got = len(parts[0])
            while got < BODY_BEFORE_CONNECTING and not content.at_eof():
                parts.append(self._counted(await content.readany()))
                got += len(parts[-1])
        except HttpProcessingError as exc:
            raise RequestBodyError(f"malformed request body: {exc}") from exc
        return b"".join(parts)

    def rest(self) -> AsyncIterator[bytes] | None:
        return None if self.request.content.at_eof() else self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.content.iter_any():
                yield self._counted(chunk)
        except HttpProcessingError as exc:  # malformed chunked framing, from aiohttp's server parser
            raise RequestBodyError(f"malformed request body: {exc}") from exc

    def _counted(self, chunk: bytes) -> bytes:
        self.ex.bytes_in += len(chunk)
        if self.limit is not None and self.ex.bytes_in > self.limit:
            raise BodyTooLarge(over_limit(self.limit))
        return chunk


def ws_session(app: web.Application, snap: Snapshot) -> aiohttp.ClientSession:
    """aiohttp's client session for WebSockets, made from the same settings as the pool (``Snapshot.pool_key``)."""
    key = snap.pool_key
    sessions = app[SESSIONS_KEY]
    session = sessions.get(key)
    if session is None:
        up = snap.config.upstream
        session = sessions[key] = aiohttp.ClientSession(
            # limit=0: a WebSocket is not a pooled connection (each has its own, for as long as it is open), so
            # upstream.max_connections does not bound them; the descriptors do (guard: 503 when they run out).
            connector=aiohttp.TCPConnector(limit=0, ssl=client_ssl(snap.config),
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


# ---------------------------------------------------------------------- websockets


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and request.method == "GET"


async def _websocket(request: web.Request, snap: Snapshot, ex: Exchange, out: AiohttpResponder) -> web.StreamResponse:
    ex.websocket = True
    if ex.decision.verdict == "denied:origin" and ex.decision.enforce:
        # SECURITY: browsers apply no CORS to WebSockets; this check is the only one.
        await respond(ex, _refused(snap, ex), out)
        return out.sent
    headers = CIMultiDict(upstream_headers(snap, request, WS_HANDSHAKE_HEADERS))
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    try:
        upstream = await ws_session(request.app, snap).ws_connect(
            upstream_url(snap, request), headers=headers, protocols=protocols, autoping=False, autoclose=False,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT),
        )
    except aiohttp.ClientError as exc:  # a refused handshake (WSServerHandshakeError) included
        await respond(ex, answer(snap, ex.decision, failure(request, snap, ex, exc)), out)
        return out.sent
    async with upstream:
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (), autoping=False,
                                       autoclose=False)  # close frames are relayed by _pump
        finish(ex.decision, client.headers)
        if (debug := decision_header(snap, ex.decision)) is not None:
            client.headers[DECISION_HEADER] = debug
        await client.prepare(request)
        ex.status = 101
        await _pump_both(client, upstream, ex)
    return client


def _refused(snap: Snapshot, ex: Exchange) -> Answer:
    headers = [("Vary", "Origin"), ("Content-Type", "text/plain; charset=utf-8")]
    if (debug := decision_header(snap, ex.decision)) is not None:
        headers.append((DECISION_HEADER, debug))
    return Answer(403, tuple(headers), f"WebSocket refused: {ex.decision.reason}\n".encode())


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
