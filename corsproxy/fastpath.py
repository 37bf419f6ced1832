"""Answers at the connection, before aiohttp makes request objects.

aiohttp's per-request machinery (a ``Request``, a Task, ``StreamResponse.prepare``/``write_eof``)
is most of what a preflight costs and a third of a small proxied GET (bench/README.md). For the
commonest requests the proxy answers them from the parsed message instead:

- a bodiless request the decision answers itself (an allowed or denied preflight, a rejected
  origin): the whole response, as bytes;
- a request to forward with no body, or a ``Content-Length`` body that arrived with its head: a
  coroutine that relays it through the same pool, the body leaving with the head in one write.

A head the proxy answered itself is remembered as its bytes (``Memo.heads``): when those very bytes come again
as a chunk of their own on a connection between messages, they get that answer again without a parse.

Everything else — bodies still arriving, chunked or over ``limits.max_body_size`` or with
``Expect``, WebSockets, odd targets, ``Connection: close`` — returns None and takes aiohttp's path
in :mod:`proxy`. This module is the connection's adapter over :mod:`exchange`, as :mod:`proxy` is aiohttp's:
the decision, the proxy's own answers (``exchange.answer``, serialised here into bytes), forwarding, relaying,
errors and the observers are the core's; tests/test_edge.py holds both paths to the same header lists.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from .exchange import (
    LIVE_KEY,
    NO_BODY_STATUSES,
    TAPS_KEY,
    Answer,
    Exchange,
    Tap,
    Whole,
    answer,
    begin,
    forward,
    notify,
)
from .guard import GuardedHandler, GuardedServer, peer
from .headers import SERVER
from .paths import BadPath, decode_path
from .policy import CorsRequest, Decision, decide
from .snapshot import Snapshot

log = logging.getLogger("corsproxy")


@dataclass(slots=True)
class Message:
    """A parsed request as :mod:`proxy`'s forwarding helpers read it (its ``Incoming``)."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    remote: str | None
    scheme: str
    host: str


# Seconds between requests on a connection within which it keeps its request parser (FastHandler._parser_back).
KEEP_PARSER = 1.0

# Remembered decisions per config snapshot; a full memo starts over, and a request whose CORS inputs are
# longer than MAX_REMEMBERED_CHARS is decided each time: together they bound its memory to a few MiB.
MAX_REMEMBERED = 1024
MAX_REMEMBERED_CHARS = 2048
# Request heads the proxy answered itself, remembered byte for byte (Memo.heads), and the longest so remembered:
# a browser repeats its preflights to an endpoint exactly, and answering one again unparsed costs a third of it.
MAX_REMEMBERED_HEAD = 2048


@dataclass(frozen=True, slots=True)
class Known:
    """What every request with the same inputs gets under one config: the decision and, when the proxy
    answers itself, the whole response but its Date (``decide`` is pure, and a Decision is never changed)."""

    decision: Decision
    head: bytes | None = None  # status line and header lines, without Date and the blank line
    body: bytes = b""

    def response(self) -> bytes:
        assert self.head is not None
        return b"%sDate: %s\r\n\r\n%s" % (self.head, rfc822_formatted_time().encode(), self.body)


@dataclass(frozen=True, slots=True)
class Again:
    """A request head the proxy answered itself, as the bytes it came in: all it takes to answer them again."""

    known: Known
    method: str
    path: str


@dataclass(slots=True)
class Memo:
    """:class:`Known` answers by (method, path without query, ``CorsRequest.header_key``), for one snapshot; and
    by the whole head's bytes, for heads the proxy answered itself (``heads``)."""

    snap: Snapshot
    known: dict[tuple[object, ...], Known]
    heads: dict[bytes, Again] = field(default_factory=dict)

    def learn(self, key: tuple[object, ...], msg: RawRequestMessage) -> Known | None:
        """Decide ``msg`` (None: its path is refused, aiohttp's path answers it) and remember the answer."""
        try:
            path = decode_path(msg.path)
        except BadPath:
            return None
        decision = decide(self.snap.policy, CorsRequest.from_headers(msg.method, path, msg.headers))
        known = Known(decision)
        if decision.status is not None and decision.enforce:
            made = answer(self.snap, decision)
            known = Known(decision, _made_head(made, date=False), b"" if msg.method == "HEAD" else made.body)
        if len(repr(key)) <= MAX_REMEMBERED_CHARS:  # every client-sent string of the key, and a little more
            if len(self.known) >= MAX_REMEMBERED:
                self.known.clear()
            self.known[key] = known
        return known

    def learn_head(self, head: bytes, known: Known, msg: RawRequestMessage) -> None:
        """Remember that ``head``, a whole request head on a parser that held nothing, parsed to ``msg`` and was
        answered with ``known`` (the same bytes parse the same way, and ``decide`` is pure)."""
        if len(head) <= MAX_REMEMBERED_HEAD:
            if len(self.heads) >= MAX_REMEMBERED:
                self.heads.clear()
            self.heads[head] = Again(known, msg.method, msg.path)


class FastHandler(GuardedHandler):
    """A guarded connection that answers what it can of its queued messages itself (``fast_answer``), in order,
    before aiohttp's loop makes request objects of them; it owns that part of the pipeline: holding aiohttp's
    loop back meanwhile, resuming reading as the queue drains (as aiohttp's loop does), one relay at a time."""

    __slots__ = ("_fast_answer", "_answering", "_client", "_keep_parser", "_chunk")
    answers_queue = True

    def __init__(self, manager: web.Server, *, fast_answer: Answerer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._fast_answer = fast_answer
        self._answering = False
        self._client: str | None = None
        self._keep_parser = False  # between requests (_parser_back)
        self._chunk: bytes | None = None  # the chunk being parsed, when it may be a whole head alone (_received)
        # A deque holds a 64-slot block (760 B) from the start; this queue is almost always empty or one deep.
        self._messages = MessageQueue()  # type: ignore[assignment]
        if isinstance(manager, GuardedServer):
            manager.watch_keepalive()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiohttp's loop (its task, the futures it waits on: ~0.9 KiB) starts only once a message is left for it
        # (_start_loop): most connections never need it, and an idle one then holds none of it.
        task, self._task_handler = self._task_handler, None
        if task is not None:
            task.cancel()  # (not begun: its coroutine just closes)
        # Nor a keep-alive timer of its own: the server's one timer looks at its clock (_process_keepalive; the
        # server runs it from __init__ on).
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    @property
    def client(self) -> str:
        """The client's address, as logs and metrics name it ("-" when unknown)."""
        if self._client is None:
            # (Not aiohttp's peername, which keeps the whole tuple: 0.15 KiB a connection; the connections from one
            # address share the string.)
            peer = None if self.transport is None else self.transport.get_extra_info("peername")
            self._client = sys.intern(str(peer[0])) if isinstance(peer, tuple) else "-"
        return self._client

    def _received(self, data: bytes) -> None:
        # A chunk may be one whole head the proxy answered itself before: those very bytes, byte for byte, get the
        # same answer again without a parse, when the connection is between messages with nothing of aiohttp's loop
        # or a relay on it (a head that differs in one byte, or with anything before or after it, is parsed as ever).
        # (A longer chunk is never looked up: hashing it would cost a body's chunks more than the look-up saves.)
        again = self._fast_answer.heads.get(data) if len(data) <= MAX_REMEMBERED_HEAD else None
        held_nothing = (self._at_rest or not self._rx) and not self._messages  # the parser, before this chunk
        if again is not None and held_nothing and self._relay_task is None and self._task_handler is None \
                and not self._after_chunked and not self._closing() \
                and (response := self._fast_answer.again(again, self)) is not None:
            self._answered_again(data, response)
            return
        self._chunk = data if held_nothing else None  # (its first message may be all of it: sole_head)
        super()._received(data)
        self._chunk = None

    def _answered_again(self, data: bytes, response: bytes) -> None:
        """What parsing ``data`` into one message and answering it would have left on the connection."""
        self._last_rx = self._loop.time()
        self._rx_mark, self._rx = self._rx, self._rx + len(data)
        self._request_count += 1
        self._cancel(header=True)
        self._at_rest = True
        assert self.transport is not None
        self.transport.write(response)
        self._restart_keepalive()

    def sole_head(self) -> bytes | None:
        """The bytes of the message being answered when they are the whole chunk just received, on a parser that held
        nothing before it (the fast path's ``again`` may then answer the same bytes without a parse)."""
        return self._chunk if self._at_rest and len(self._messages) == 1 else None

    def _parser_back(self) -> None:
        # Requests that come this close together keep their parser between them (making one costs a tenth of a
        # preflight); the server's sweep takes it once they stop (_swept).
        self._keep_parser = self._loop.time() - self._last_rx < KEEP_PARSER
        super()._parser_back()

    def _start_loop(self) -> None:
        if self._task_handler is None and not self._closing():
            self._task_handler = self._loop.create_task(self.start())

    def close(self) -> None:
        super().close()
        if self._task_handler is None and self._relay_task is None:
            self.force_close()  # idle, and aiohttp's loop never started: no response of it to wait for

    def _loop_not_started(self) -> bool:
        return self._task_handler is None or super()._loop_not_started()

    def _answer_queue(self) -> None:
        """Answer the queue's head messages that ``fast_answer`` can, in order, without a request object;
        then wake aiohttp's loop if a message is left for it."""
        if self._answering:
            return  # re-entered from the re-parse below: the loop there takes what it queued
        self._answering = True
        try:
            while True:
                self._answer_queued()
                # aiohttp's parser stops at a full queue and its loop resumes reading as it takes messages
                # (aiohttp >= 3.14.1); messages taken here must do the same, or a deep pipeline stalls.
                if not self._buffer_paused or len(self._messages) > self._msg_queue_resume_size \
                        or (self._messages and self._relay_task is None) or self._closing():
                    break
                before = len(self._messages)
                self._resume_reading_if_drained()  # re-parses what the parser held back: may queue more
                if len(self._messages) == before:
                    break
        finally:
            self._answering = False
        if self._messages and self._relay_task is None:  # the head message is aiohttp's to answer
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._start_loop()
        elif not self._keep_parser:
            self._rest()

    def _rest(self) -> None:
        """Between requests, with a parser that holds nothing, let it go, and the last request's headers, path and
        URL it keeps with it (1.7 KiB an idle connection in all); the next bytes make a new one (guard._received)."""
        if self._at_rest and not self._messages and self._relay_task is None and self._task_handler is None:
            self._parser = None
            self._keep_parser = False

    def _swept(self, now: float) -> None:
        super()._swept(now)
        if self._keep_parser and now - self._last_rx >= KEEP_PARSER:
            self._rest()

    def _answer_queued(self) -> None:
        while self._messages and not self._closing():
            msg, payload = self._messages[0]
            # HTTP/1.1 keep-alive only: an HTTP/1.0 client needs "Connection: keep-alive" and no chunking,
            # which aiohttp's own path handles. A body must be all here (no waiting, no body timer).
            if not isinstance(msg, RawRequestMessage) or msg.should_close or msg.version != HttpVersion11 \
                    or (payload is not EMPTY_PAYLOAD and not payload.is_eof()):
                break
            assert self._fast_answer is not None
            answer = self._fast_answer(msg, payload, self)
            if answer is None:
                break
            self._messages.popleft()
            self._chunk = None  # (only a chunk's first message can be all of it: sole_head)
            if self._parser is not None:
                self._parser.message_consumed()  # as aiohttp's loop does for each message it takes
            if not isinstance(answer, bytes):  # relayed by a task; the queue waits for it
                self._relay_task = self._loop.create_task(self._run_fast(answer))
                return
            assert self.transport is not None
            self.transport.write(answer)
            self._restart_keepalive()

    async def _run_fast(self, answer: Coroutine[Any, Any, None]) -> None:
        try:
            await answer
        except Exception:  # no aiohttp 500 handler here: log it and close, never leave the client hanging
            log.exception("unhandled error relaying a request from %s; closing the connection", peer(self))
            self.force_close()
        finally:
            self._relay_task = None
            if self._close and not self._force_close:
                self.force_close()  # draining: the connection ends after its response (which close() flushes)
            elif self.transport is not None and not self._force_close:
                self._restart_keepalive()
                self._answer_queue()

    def _restart_keepalive(self) -> None:
        if self._keepalive_timeout > 0:  # the keep-alive clock restarts, as after any response
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout

    def _process_keepalive(self) -> None:
        """Called by the server's timer (GuardedServer.watch_keepalive) once the keep-alive time is up, or by a
        timer of aiohttp's own once its loop has answered a request."""
        if self._relay_task is not None:  # a response is being relayed: not idle (the server's timer looks again)
            self._keepalive_handle = None
            return
        if self._task_handler is None and not self._messages and not self._force_close:
            # Idle without aiohttp's loop, whose waiter would say so.
            self._keepalive_handle = None
            if self._loop.time() >= self._next_keepalive_close_time:
                self.force_close()
            return
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()  # as handler_cancellation does for aiohttp's own handlers
        super().connection_lost(exc)

    async def drain(self) -> None:
        """Wait until the client has taken what was written (raises if it went away)."""
        await self._drain_helper()


class MessageQueue(list[Any]):
    """aiohttp's parsed-message queue (``RequestHandler._messages``, a deque) as a list: aiohttp appends, takes
    ``popleft()`` and asks its length; pipelines are a few messages deep."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class Answerer:
    """The proxy app's ``fast_answer``, and its answers to heads it has seen before (``again``)."""

    __slots__ = ("app", "live", "taps", "memo", "heads")

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.live = app[LIVE_KEY]
        self.taps = app[TAPS_KEY]  # (the list itself: a tap added later is seen)
        self.memo: Memo | None = None
        self.heads: dict[bytes, Again] = {}  # the memo's, for a look-up that costs a chunk nothing when it misses

    def _memo(self) -> Memo:
        snap = self.live.current
        if self.memo is None or self.memo.snap is not snap:  # a reload forgets everything decided before
            self.memo = Memo(snap, {})
            self.heads = self.memo.heads
        return self.memo

    def __call__(self, msg: RawRequestMessage, payload: StreamReader,
                 handler: FastHandler) -> bytes | Coroutine[Any, Any, None] | None:
        """Given a parsed keep-alive request, its body (EMPTY_PAYLOAD, or a StreamReader that has all of it) and its
        connection: the whole response's bytes, or a coroutine that relays it (writing to ``handler.transport``),
        when it can be answered without aiohttp's request objects; else None, and aiohttp's loop takes the request.
        Only the coroutine may read the body: reading can resume a paused transport, which re-enters data_received.
        """
        if msg.upgrade or not msg.path.startswith("/"):
            return None
        memo = self._memo()
        key = (msg.method, msg.path.partition("?")[0], CorsRequest.header_key(msg.headers))
        known = memo.known.get(key) or memo.learn(key, msg)
        if known is None:
            return None
        has_body = payload is not EMPTY_PAYLOAD
        if known.head is not None:  # answered here, unless a body must be read first (rare: a rejection)
            if has_body:
                return None
            if (head := handler.sole_head()) is not None:
                memo.learn_head(head, known, msg)
            response = _answered(self.app, known, msg.method, msg.path, handler.client)
            if self.taps:  # (a demo's wire view; empty in production)
                _tap(self.taps, msg.method, msg.path, msg.headers, response)
            return response
        host = msg.headers.get("Host")
        if not host or (has_body and not _takes_body(memo.snap, msg)):
            return None
        request = Message(msg.method, msg.path, msg.headers, handler.client, _scheme(handler), host)
        return _relayed(self.app, self.taps, memo.snap, known.decision, request, handler, payload)

    def again(self, again: Again, handler: FastHandler) -> bytes | None:
        """The response to a head found in ``heads``, if it was remembered under the config in force; else None."""
        if self.taps or self.memo is None or self.memo.snap is not self.live.current:
            return None  # (taps want the request's headers, which only the parser gives)
        return _answered(self.app, again.known, again.method, again.path, handler.client)


def _takes_body(snap: Snapshot, msg: RawRequestMessage) -> bool:
    """A body this path forwards: ``Content-Length`` framed, within the limit, no ``100-continue`` to send."""
    if msg.chunked or "Expect" in msg.headers:
        return False
    limit = snap.config.limits.max_body_size
    return limit is None or int(msg.headers.get("Content-Length", "0")) <= limit




def _scheme(handler: FastHandler) -> str:
    transport = handler.transport
    return "https" if transport is not None and transport.get_extra_info("sslcontext") else "http"


def _answered(app: web.Application, known: Known, method: str, path: str, client: str) -> bytes:
    ex = begin(app, Exchange(method, path, client, known.decision))
    ex.status, ex.bytes_out = known.decision.status or 500, len(known.body)
    notify(app, ex)
    return known.response()


def _tap(taps: list[Tap], method: str, path: str, headers: CIMultiDictProxy[str], head: bytes) -> None:
    """Tell the taps (exchange.TAPS_KEY) the head just sent, parsed back from its bytes."""
    status_line, *lines = head.partition(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape").split("\r\n")
    _, status, reason = (status_line.split(" ", 2) + [""])[:3]
    sent = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    for tap in taps:
        tap(method, path, list(headers.items()), int(status), reason, sent)


async def _relayed(app: web.Application, taps: list[Tap], snap: Snapshot, decision: Decision, request: Message,
                   handler: FastHandler, payload: StreamReader) -> None:
    data = payload.read_nowait()  # all of it is here (Answerer.__call__)
    body = Whole(data, len(data) if data or "Content-Length" in request.headers else None)
    ex = begin(app, Exchange(request.method, request.raw_path, request.remote or "-", decision, bytes_in=len(data)))
    try:
        await forward(app, snap, ex, request, body, Wire(taps, handler, request))
    finally:
        notify(app, ex)


class Wire:
    """:class:`exchange.Responder` writing the response's bytes to the connection itself."""

    __slots__ = ("taps", "handler", "request", "transport", "chunked")

    def __init__(self, taps: list[Tap], handler: FastHandler, request: Message) -> None:
        self.taps, self.handler, self.request = taps, handler, request
        # Kept, as aiohttp's StreamWriter keeps it: a write after the client went away fails in drain().
        self.transport: asyncio.Transport | None = handler.transport  # type: ignore[assignment]
        self.chunked = False

    async def send(self, made: Answer, method: str) -> None:
        head = _made_head(made) + b"\r\n"
        if self.taps:
            _tap(self.taps, method, self.request.raw_path, self.request.headers, head)
        if self.transport is not None:
            self.transport.write(head + (b"" if method == "HEAD" else made.body))  # HEAD: the length, no body

    async def start(self, status: int, reason: str, headers: CIMultiDict[str], *, whole: bytes | None,
                    bodiless: bool, flush: bool) -> None:
        # The upstream's framing (chunked, or until close) is not ours to pass on: without a length, chunked.
        self.chunked = whole is None and not bodiless and "Content-Length" not in headers
        if self.chunked:
            headers["Transfer-Encoding"] = "chunked"
        head = _head(status, reason, headers, b"") + b"\r\n"
        if self.taps:
            _tap(self.taps, self.request.method, self.request.raw_path, self.request.headers, head)
        if self.transport is not None:  # (a head not flushed leaves at once all the same)
            if whole:  # one vectored write on uvloop: the body is not copied to join it to the head
                self.transport.writelines((head, whole))
            else:
                self.transport.write(head)

    async def write(self, chunk: bytes) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client connection is closed")
        self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked else chunk)
        await self.handler.drain()

    async def finish(self) -> None:
        if self.chunked and self.transport is not None:
            self.transport.write(b"0\r\n\r\n")


def _made_head(made: Answer, *, date: bool = True) -> bytes:
    """An :class:`exchange.Answer`'s head as aiohttp's Response would send it (a length even when empty)."""
    return _head(made.status, made.reason, CIMultiDict(made.headers), made.body, date=date,
                 length=made.status not in NO_BODY_STATUSES)


def _head(status: int, reason: str, headers: CIMultiDict[str], body: bytes, *, date: bool = True,
          length: bool = False) -> bytes:
    """Status line and header lines, with Content-Length (for a body, or with ``length``), Date (unless ``date``
    is False) and Server added as aiohttp adds them; without the blank line that ends the head."""
    if body or length:
        headers["Content-Length"] = str(len(body))
    if date and "Date" not in headers:
        headers["Date"] = rfc822_formatted_time()
    if "Server" not in headers:
        headers["Server"] = SERVER
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    return f"HTTP/1.1 {status} {reason}\r\n{''.join(lines)}".encode("utf-8", "surrogateescape")

