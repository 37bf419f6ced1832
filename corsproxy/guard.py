"""Socket-level hardening aiohttp's server lacks: read timeouts, a head size cap, no HTTP/0.9.

aiohttp's ``RequestHandler`` waits for a request's headers for as long as its keep-alive
timer allows (an hour by default), so a client trickling one header byte at a time
(slowloris) holds a connection open indefinitely; and it has no timeout on a request body
that stops arriving. It also answers ``GET /path`` with no HTTP version (HTTP/0.9) and
lets the handler forward it. :class:`GuardedRunner` is an ``AppRunner`` whose connections
close those gaps:

- request headers not complete ``header_timeout`` seconds after the connection opens, or
  after the first byte of a keep-alive request, -> ``408`` and close (nginx
  ``client_header_timeout``, Apache ``mod_reqtimeout``);
- a request body that sends nothing for ``body_timeout`` seconds while it is being read
  -> ``408`` and close (or a plain close if the response has started);
- an HTTP/0.9 request, an HTTP/1.0 one with ``Transfer-Encoding`` (RFC 9112 §6.1:
  faulty framing), or one whose ``Connection`` names ``Content-Length``, ``Transfer-Encoding`` or
  ``Host`` (headers.FRAMING) -> ``400`` and close, before any handler runs;
- a request head over ``MAX_HEAD`` bytes in all (aiohttp bounds each line and the number
  of headers, not their sum) -> ``431`` and close.

It also drains what is in flight at a stop (uploads still arriving included), bounds what a slow client
costs (``limits.min_data_rate``, RESPONSE_BUFFER), and leaves room for a subclass that answers queued
messages itself (fastpath.FastHandler: ``answers_queue``, ``_relay_task``, ``_answer_queue``).

Everything else that is malformed (request line, header syntax, lengths, duplicate or
conflicting ``Content-Length``/``Transfer-Encoding``, chunk syntax, header count and size)
is already refused with ``400`` by aiohttp's parser, and covered by tests/reliability.

This touches aiohttp internals (``RequestHandler`` attributes, ``_ErrInfo``), listed in corsproxy/internals.py;
tests/test_internals.py and tests/reliability/test_socket_input.py pin them on every aiohttp upgrade.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from .headers import lowered_tokens, names_framing

log = logging.getLogger("corsproxy")

HEADER_TIMEOUT = 20.0  # seconds for a whole request head
BODY_TIMEOUT = 30.0  # seconds without a byte while a request body is being read
# Bytes for a whole request head (Envoy's max_request_headers_kb is 60). Within it aiohttp's
# own limits apply: 128 headers, 16 KiB a field (app.py's handler_args), 8190 bytes a request line.
MAX_HEAD = 64 * 1024
LINGER = 2.0  # seconds to drain a refused request's remaining bytes before closing
# limits.min_data_rate is averaged over this long before it applies (Kestrel's grace period), and checked every
# RATE_TICK seconds while a request body is read or the proxy waits for a client to take a response.
MIN_RATE_GRACE = 5.0
RATE_TICK = 1.0
# Bytes of response a connection may hold for a client slower than the upstream (the transport's buffer) before
# the relay waits for it: an answer up to this size leaves the upstream at the upstream's speed, and its
# connection goes back to the pool, whatever the client's (nginx proxy_buffering, in memory only).
RESPONSE_BUFFER = 2**20
TCP_INFO_SIZE = 128  # struct tcp_info up to tcpi_bytes_acked (u64 at offset 120, Linux >= 4.1)
# File descriptors (RLIMIT_NOFILE): a client connection is refused (503) when it would leave fewer than its
# server's reserve free, so the upstream pool (upstream.max_connections, server.make_runner) can still open its
# connections (three descriptors each: its socket and a splice pipe) and the open client connections keep being
# answered; the reserve is at most half the limit.
FD_SPARE = 16  # beyond the pool: the admin listener, a reload's files, the log
KEEPALIVE_SWEEP = 1.0  # seconds between looks at the keep-alive clocks (GuardedServer.watch_keepalive)
FD_LOG_INTERVAL = 60.0  # seconds: at most one "out of file descriptors" line in this long
ACCEPT_EMFILE = "socket.accept() out of system resource"  # asyncio's selector loop (selector_events.py)
CLOSING_RESPONSE = (
    b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class GuardedHandler(web_protocol.RequestHandler):
    """One connection: aiohttp's handler plus the timers and checks above."""

    __slots__ = ("_header_timeout", "_body_timeout", "_header_timer", "_body_timer", "_last_rx", "_quiet",
                 "_head_bytes", "_rx", "_rx_mark", "_after_chunked", "_min_rate", "_body_active", "_body_tick",
                 "_body_mark", "_wait_since", "_wait_acked", "_write_timer", "_relay_task", "_started", "_descriptors",
                 "_at_rest", "_decompress")

    def __init__(self, manager: web.Server, *, header_timeout: float, body_timeout: float,
                 min_data_rate: float | None = None, descriptors: Descriptors | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._decompress = bool(kwargs.get("auto_decompress", True))  # for a parser made again (_new_parser)
        self._descriptors = descriptors
        self._min_rate = min_data_rate
        # Over each MIN_RATE_GRACE seconds a body is read (not paused by us): seconds so far, last look, bytes before.
        self._body_active = self._body_tick = 0.0
        self._body_mark = 0
        self._wait_since: float | None = None  # waiting for the client to take a response since
        self._wait_acked = 0  # bytes it had acknowledged then
        self._write_timer: asyncio.TimerHandle | None = None
        self._relay_task: asyncio.Task[None] | None = None  # a response relayed outside aiohttp's loop (FastHandler)
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._quiet = False
        self._head_bytes = 0
        self._rx = self._rx_mark = 0  # bytes received; at most where the next request's head began
        self._after_chunked = False  # a chunked request came: nothing after it on this connection is served
        self._started = False  # aiohttp's loop (start(), its task) has begun
        self._at_rest = False  # the bytes received so far end where a message without a body ends (_received)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._descriptors is not None and not self._descriptors.admits(transport):
            self._send_and_close(b"503 Service Unavailable", "out of file descriptors; retry later")
            return
        # A connection that never completes a request head gets header_timeout, not the
        # keep-alive timer's hour.
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._close and not self._force_close and self._request_in_progress and data:
            # Draining (Server.pre_shutdown closed us): aiohttp would drop every byte from now on, and an
            # upload in progress would stall until drain_timeout. Its body still arrives; the loop stops
            # after this response, so nothing behind it is answered.
            self._close = False
            try:
                self._received(data)
            finally:
                self._close = True
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self._parser is None and self.transport is not None:
            self._parser_back()  # (let go between requests: fastpath.FastHandler)
        self._last_rx = self._loop.time()
        start = self._rx
        self._rx = start + len(data)
        before = len(self._messages)
        waiter = self._waiter
        # (aiohttp's loop not started yet counts as waiting: on Python < 3.12 its task starts a loop turn after the
        # connection, and the first request often comes in that turn: it would take aiohttp's slower path, and its
        # request and response objects would stay referenced by that loop's frame for as long as the connection idles.)
        waiting = waiter is not None and not waiter.done() or self._loop_not_started()
        # A response relayed outside aiohttp's loop is a request in progress; b"" is aiohttp re-parsing after a pause.
        idle = waiting and self._relay_task is None and bool(data)
        in_head = self._header_timer is not None or idle
        if in_head:
            self._head_bytes = self._head_bytes + len(data) if self._header_timer is not None else len(data)
        # A subclass that answers queued messages itself (fastpath.FastHandler): while aiohttp's loop waits,
        # hold back its wake-up until we know a message is left for it: it takes one message a wake-up, an
        # answer on the connection takes the message away, and while one is relayed the messages behind it wait.
        hold = waiting and self.answers_queue and (before == 0 or self._relay_task is not None)
        if hold:
            self._waiter = None
        super().data_received(data)
        # Whether the parser is left between messages holding nothing (fastpath.FastHandler then lets it go): these
        # bytes queued a message without a body and end in the blank line that ends a head. A head cannot hold CRLF
        # CRLF, so bytes of a next head behind that message would have made a message, or a parse error, of their
        # own; a full queue pauses the parser, which then holds the bytes behind it. (Inline: every chunk runs it.)
        self._at_rest = len(self._messages) > before and data.endswith(b"\r\n\r\n") \
            and self._messages[-1][1] is EMPTY_PAYLOAD and not self._buffer_paused and not self._upgraded
        if hold:
            self._waiter = waiter
        if len(self._messages) > before:
            self._cancel(header=True)
            # A new message's head lies within the bytes since the chunk the previous one ended in; a
            # re-parse (b"") may hold older bytes back.
            self._check_new(before, sized=not data or self._rx - self._rx_mark > MAX_HEAD)
            if data:
                self._rx_mark = start
            if hold and self._relay_task is None:
                self._answer_queue()
        elif in_head and self._head_bytes > MAX_HEAD and not self._force_close and self.transport is not None:
            # aiohttp bounds each header line and the count, not the sum: 127 x 16 KiB would pass.
            self._cancel(header=True)
            log.warning("closing connection from %s: request head over %d bytes (431)", peer(self), MAX_HEAD)
            self._send_and_close(b"431 Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes",
                                 linger=True)
        elif idle and self._header_timer is None and not self._force_close:
            self._arm_header_timer()  # first bytes of the next keep-alive request

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp's StreamReader calls this after each read that leaves it under its low-water mark, paused or
        # not; unpaused, there is nothing to resume, and the re-parse (data_received(b"")) cost a request body
        # ~1 µs. The parser holds bytes back only after pause_reading (_reading_paused) or at a full message
        # queue (_buffer_paused), and then the re-parse must run.
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    answers_queue = False  # fastpath.FastHandler: it answers messages off the queue (see _received)

    def _parser_back(self) -> None:
        self._parser = self._new_parser()

    def _new_parser(self) -> Any:
        """A request parser as aiohttp's ``RequestHandler.__init__`` makes one (tests/test_internals.py compares)."""
        return web_protocol.HttpRequestParser(
            self, self._loop, self._read_bufsize, max_line_size=self.max_line_size,
            max_field_size=self.max_field_size, max_headers=self.max_headers,
            payload_exception=web_protocol.RequestPayloadError, auto_decompress=self._decompress,
            max_msg_queue_size=web_protocol.MAX_MSG_QUEUE_SIZE)

    def _swept(self, now: float) -> None:
        """The server's look at a connection that keeps no keep-alive timer of its own, every KEEPALIVE_SWEEP
        seconds (GuardedServer.watch_keepalive)."""
        if self._keepalive_handle is None and self._keepalive_timeout > 0 and now >= self._next_keepalive_close_time:
            self._process_keepalive()

    def _loop_not_started(self) -> bool:
        return not self._started  # (its task is made in connection_made, before any data_received)

    async def start(self) -> None:
        self._started = True
        # Messages answered at the connection go first, in order: aiohttp's loop starts once none is being relayed
        # (answers_queue's _answer_queue wakes it when a message is left for it, as it does the waiting loop).
        while self._relay_task is not None and not self._force_close:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        await super().start()

    def _answer_queue(self) -> None:
        """Answer what can be of the messages just queued (fastpath.FastHandler)."""

    def _closing(self) -> bool:
        return self.transport is None or self._force_close or self._close

    def _check_new(self, before: int, sized: bool) -> None:
        """Refuse new messages with faulty framing; ``sized``: their heads may be over MAX_HEAD."""
        for i in range(before, len(self._messages)):
            msg, payload = self._messages[i]
            if not isinstance(msg, RawRequestMessage):
                continue
            if self._after_chunked:
                self._drop_from(i)
                return
            if msg.chunked:
                # SECURITY: aiohttp's C parser (3.14.5) adds a chunked body's trailer fields to the headers of
                # the next request on the connection. Nothing after a chunked request is served: the connection
                # closes after its response (RFC 9112 §9.6), and a client retries what was left unanswered.
                self._after_chunked = True
                msg = msg._replace(should_close=True)
                self._messages[i] = (msg, payload)
            status, problem = _framing_problem(msg, sized)
            if problem is not None:
                # Handled like any other parse error: aiohttp's error response and a closed connection.
                self._messages[i] = (web_protocol._ErrInfo(status, BadHttpMessage(problem), problem), EMPTY_PAYLOAD)
            elif payload is not EMPTY_PAYLOAD and not payload.is_eof() and self._body_timer is None:
                self._body_active, self._body_tick, self._body_mark = 0.0, self._loop.time(), 0
                self._body_timer = self._loop.call_later(min(RATE_TICK, self._body_timeout), self._check_body,
                                                         payload)

    def _drop_from(self, index: int) -> None:
        """Discard the queued messages from ``index`` on, unanswered (they are read, so the parser's count of
        messages in flight is given back as aiohttp's loop does)."""
        while len(self._messages) > index:
            self._messages.pop()
            if self._parser is not None:
                self._parser.message_consumed()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Let the request in flight finish, within ``timeout`` (listen.drain_timeout), before aiohttp's stop.

        aiohttp's stop waits for its own handler only, and first sets ``_force_close``, after which every byte
        received is dropped: an upload in progress would stall to the end. Here a response relayed on the
        connection counts as a request in flight too, and a request body still arriving is still read.
        """
        deadline = None if timeout is None else self._loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                if (relaying := self._relay_task) is not None:
                    await asyncio.shield(relaying)
                if self._request_in_progress:
                    self._handler_waiter = self._loop.create_future()  # set by aiohttp's _handle_request
                    try:
                        await self._handler_waiter
                    finally:
                        self._handler_waiter = None
        except (TimeoutError, asyncio.CancelledError):
            if (me := asyncio.current_task()) is not None and me.cancelling():
                raise  # our own stop was cancelled, not the request
        # (at least a moment: aiohttp reads a timeout of 0 as none at all)
        left = None if deadline is None else max(0.01, deadline - self._loop.time())
        await super().shutdown(left)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # A client's malformed request: one warning line, not aiohttp's traceback (or, for a
        # garbage first line, its debug-only note), so every refusal shows in the log.
        log.warning("refused a malformed request from %s with %d: %s", peer(self), status, _summary(exc))
        self._quiet = True
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            self._quiet = False

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        if not self._quiet:
            super().log_exception(*args, **kwargs)

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout, self._on_header_timeout)

    def _cancel(self, *, header: bool) -> None:
        timer = self._header_timer if header else self._body_timer
        if timer is not None:
            timer.cancel()
        if header:
            self._header_timer = None
        else:
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel(header=True)
        self._cancel(header=False)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._messages or self._current_request is not None or self.transport is None:
            return  # a request is queued or running: its head is complete
        log.warning("closing connection from %s: request head not complete within %ss (408)",
                    peer(self), self._header_timeout)
        self._send_and_close(b"408 Request Timeout", "request head not received in time")

    def _check_body(self, payload: StreamReader) -> None:
        self._body_timer = None
        if payload.is_eof() or self.transport is None:
            return
        now = self._loop.time()
        if self._reading_paused:
            # The proxy stopped reading (the upstream is slow to take the body): not the client's fault.
            self._last_rx = now
        else:
            self._body_active += now - self._body_tick
        self._body_tick = now
        idle = now - self._last_rx
        rate = self._min_rate
        if idle >= self._body_timeout:
            why, reason = f"request body stalled for {self._body_timeout}s", "request body stalled"
        elif rate is not None and self._body_active >= MIN_RATE_GRACE and \
                payload.total_bytes - self._body_mark < rate * self._body_active:
            why = (f"request body at {(payload.total_bytes - self._body_mark) / self._body_active:.0f} bytes/s "
                   f"over {self._body_active:.0f}s, under limits.min_data_rate ({rate:g} bytes/s)")
            reason = "request body too slow"
        else:
            if self._body_active >= MIN_RATE_GRACE:  # one window of reading: the next begins now
                self._body_active, self._body_mark = 0.0, payload.total_bytes
            self._body_timer = self._loop.call_later(min(RATE_TICK, self._body_timeout - idle), self._check_body,
                                                     payload)
            return
        request = self._current_request
        started = request is not None and request._payload_writer.output_size > 0
        log.warning("closing connection from %s: %s%s", peer(self), why,
                    " (response already started)" if started else " (408)")
        if started:
            self.force_close()
        else:
            self._send_and_close(b"408 Request Timeout", reason)

    # -- a client slow to take its response (limits.min_data_rate): while the transport's buffer stays over its
    # high-water mark (pause_writing until resume_writing) the proxy waits on the client; over each
    # MIN_RATE_GRACE seconds of that it must take (TCP-acknowledge) min_data_rate bytes a second.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._min_rate is not None and self.transport is not None:
            acked = bytes_acked(self.transport)
            if acked is not None:  # (Linux; elsewhere no rate is enforced on responses)
                self._wait_since, self._wait_acked = self._loop.time(), acked
                if self._write_timer is None:
                    self._write_timer = self._loop.call_later(RATE_TICK, self._check_write)

    def resume_writing(self) -> None:
        self._wait_since = None
        super().resume_writing()

    def _check_write(self) -> None:
        self._write_timer = None
        transport, since, rate = self.transport, self._wait_since, self._min_rate
        if since is None or transport is None or rate is None:
            return
        now, acked = self._loop.time(), bytes_acked(transport) or 0
        waited, taken = now - since, acked - self._wait_acked
        if waited >= MIN_RATE_GRACE:  # one window: the next begins now
            if taken < rate * waited:
                log.warning("closing connection from %s: the client took %d bytes of its response in %.0fs, under "
                            "limits.min_data_rate (%g bytes/s)", peer(self), taken, waited, rate)
                abort(transport, reset=True)  # (close() would go on writing the buffer to it)
                return
            self._wait_since, self._wait_acked = now, acked
        self._write_timer = self._loop.call_later(RATE_TICK, self._check_write)

    async def _drain_helper(self) -> None:
        transport = self.transport
        if transport is not None and self._paused and transport.get_write_buffer_size() <= RESPONSE_BUFFER:
            return  # a slow client: its response waits here, not in the upstream connection (RESPONSE_BUFFER)
        await super()._drain_helper()

    def _send_and_close(self, status: bytes, reason: str, *, linger: bool = False) -> None:
        body = (reason + "\n").encode()
        transport = self.transport
        assert transport is not None
        transport.write(CLOSING_RESPONSE % (status, len(body), body))
        if not linger:
            self.force_close()  # transport.close() flushes the answer first
            return
        # The client is still sending: closing now would reset the connection and could destroy
        # the answer in its receive buffer. Half-close, drop what comes, close a moment later.
        self.close()
        self._force_close = True  # data_received ignores the rest
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, transport.close)


def soft_nofile() -> int:
    """The soft RLIMIT_NOFILE now (it may be changed from outside, ``prlimit --pid``)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Descriptors:
    """What a listener does when file descriptors run out (its server's ``descriptors``).

    A new connection whose descriptor leaves fewer than ``reserve`` free under the soft limit is answered ``503``
    and closed (descriptors are numbered lowest-free first, so its number counts the ones in use): the upstream
    pool keeps room to connect, and the open connections keep being answered. When ``accept()`` itself fails with
    EMFILE, the proxy listener (listener.Acceptor) stops accepting for a second and retries (no busy loop) and
    reports it here (:meth:`accept_failed`); for the admin listener on asyncio's loop, which does the same but
    reports to the loop's exception handler with a traceback each time, :meth:`watch_accept` makes it the same
    line. Either is logged at most once a FD_LOG_INTERVAL, with how many happened since.
    """

    def __init__(self, reserve: int = FD_SPARE, *, limit: Callable[[], int] = soft_nofile,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reserve, self.limit, self.clock = reserve, limit, clock
        self.refused = self.failed = 0  # since the last line
        self._logged_at: float | None = None

    def admits(self, transport: asyncio.BaseTransport) -> bool:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        soft = self.limit()
        free = soft - 1 - sock.fileno()
        if free >= min(self.reserve, soft // 2):
            return True
        self.refused += 1
        self._report(f"descriptor {sock.fileno()} of RLIMIT_NOFILE {soft}, {self.reserve} kept free for upstream "
                     "connections")
        return False

    def accept_failed(self, exc: OSError) -> None:
        self.failed += 1
        self._report(f"accept() failed: {exc.strerror or exc}; RLIMIT_NOFILE {self.limit()}")

    def _report(self, why: str) -> None:
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < FD_LOG_INTERVAL:
            return
        self._logged_at = now
        log.error("out of file descriptors (%s): %d new connection(s) refused with 503, %d accept() failure(s) "
                  "since the last report; open connections are still served. Raise the limit (LimitNOFILE=, docker "
                  "run --ulimit nofile=N:N, ulimit -n) or run more replicas; next report in %.0fs at the earliest",
                  why, self.refused, self.failed, FD_LOG_INTERVAL)
        self.refused = self.failed = 0

    def watch_accept(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop``'s exception handler take accept()'s EMFILE/ENFILE (:meth:`accept_failed`) and pass the
        rest on (to the handler it had, else the loop's default one)."""
        previous = loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if context.get("message") == ACCEPT_EMFILE and isinstance(exc, OSError) \
                    and exc.errno in (errno.EMFILE, errno.ENFILE):
                self.accept_failed(exc)
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handle)


def abort(transport: asyncio.Transport | None, *, reset: bool = False) -> None:
    """Break a client connection whose response cannot be finished (the status line is gone already: a broken
    connection is the only honest signal left). ``reset``: at once, with an RST, dropping what the kernel still
    holds for it (a client too slow to take it would otherwise get it, and the FIN, minutes later)."""
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (AttributeError, OSError):
            pass
    transport.abort()


def bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """Bytes the peer's TCP has acknowledged on this connection (Linux ``tcpi_bytes_acked``), or None."""
    sock = transport.get_extra_info("socket")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (AttributeError, OSError):
        return None
    return int.from_bytes(info[120:128], sys.byteorder) if len(info) >= TCP_INFO_SIZE else None


def _framing_problem(msg: RawRequestMessage, sized: bool) -> tuple[int, str | None]:
    if msg.version < HttpVersion10:
        return 400, "HTTP/0.9 request (no HTTP version in the request line) is not supported"
    if msg.version > HttpVersion11:
        return 400, f"HTTP/{msg.version.major}.{msg.version.minor} request line (this listener serves HTTP/1.0 and 1.1)"
    if msg.version == HttpVersion10 and "Transfer-Encoding" in msg.headers:
        return 400, "Transfer-Encoding in an HTTP/1.0 request is faulty framing (RFC 9112 section 6.1)"
    if "Transfer-Encoding" in msg.headers and lowered_tokens(msg.headers.getall("Transfer-Encoding")) != ["chunked"]:
        # SECURITY: the proxy decodes chunked only; another coding would reach the upstream undecoded (nginx: 501).
        return 400, "Transfer-Encoding other than 'chunked' is not supported"
    if "Connection" in msg.headers and (named := names_framing(msg.headers.getall("Connection"))):
        # SECURITY: dropping a header Connection lists would unframe the body (request smuggling).
        return 400, f"Connection names {', '.join(named)}: a request may not ask to drop its own framing or Host"
    if sized and len(msg.path) + sum(len(name) + len(value) + 4 for name, value in msg.raw_headers) > MAX_HEAD:
        return 431, f"request head over {MAX_HEAD} bytes"
    return 400, None


def _summary(exc: HttpProcessingError) -> str:
    text = " ".join(str(exc.message).split())  # the parser's message quotes the bad bytes over lines
    return text if len(text) <= 200 else text[:200] + "..."


def peer(handler: web_protocol.RequestHandler) -> str:
    peer = handler.peername
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class GuardedServer(web.Server):
    """aiohttp's Server, making :class:`GuardedHandler` connections (or ``handler``'s, a subclass of it, with
    ``handler_kwargs``)."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, min_data_rate: float | None = None,
                 handler: type[GuardedHandler] = GuardedHandler, handler_kwargs: dict[str, Any] | None = None,
                 descriptors: Descriptors | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handler = handler
        self._sweep: asyncio.TimerHandle | None = None
        self._guard: dict[str, Any] = {"header_timeout": header_timeout, "body_timeout": body_timeout,
                                       "min_data_rate": min_data_rate, "descriptors": descriptors,
                                       **(handler_kwargs or {})}

    def __call__(self) -> GuardedHandler:
        return self._handler(self, loop=self._loop, **self._guard, **self._kwargs)

    def watch_keepalive(self) -> None:
        """Run the one timer that looks at the keep-alive clocks of the connections that keep none of their own
        (fastpath.FastHandler: a timer each is half a KiB an idle connection)."""
        if self._sweep is None:
            self._sweep = self._loop.call_later(KEEPALIVE_SWEEP, self._sweep_keepalive)

    def _sweep_keepalive(self) -> None:
        self._sweep = None
        now = self._loop.time()
        connections = self.connections  # (a copy: a connection closed here leaves it)
        for conn in connections:
            if isinstance(conn, GuardedHandler):
                conn._swept(now)
        if connections:
            self.watch_keepalive()

    async def shutdown(self, timeout: float | None = None) -> None:
        await super().shutdown(timeout)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def set_timeouts(self, header_timeout: float, body_timeout: float, min_data_rate: float | None = None) -> None:
        """For connections opened from now on (a reload)."""
        self._guard.update(header_timeout=header_timeout, body_timeout=body_timeout, min_data_rate=min_data_rate)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose server makes :class:`GuardedHandler` connections.

    ``header_timeout``/``body_timeout`` are attributes so a test may shorten them before ``setup()``;
    :meth:`set_timeouts` changes them for new connections after it. ``descriptors``: what its listener does when
    file descriptors run out (:class:`Descriptors`, with FD_SPARE kept free unless given).
    """

    def __init__(self, app: web.Application, *, header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, min_data_rate: float | None = None,
                 handler: type[GuardedHandler] = GuardedHandler, handler_kwargs: dict[str, Any] | None = None,
                 descriptors: Descriptors | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.descriptors = descriptors if descriptors is not None else Descriptors()
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.min_data_rate = min_data_rate
        self.handler, self.handler_kwargs = handler, handler_kwargs

    def set_timeouts(self, header_timeout: float, body_timeout: float, min_data_rate: float | None = None) -> None:
        self.header_timeout, self.body_timeout, self.min_data_rate = header_timeout, body_timeout, min_data_rate
        if isinstance(self.server, GuardedServer):
            self.server.set_timeouts(header_timeout, body_timeout, min_data_rate)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                             header_timeout=self.header_timeout, body_timeout=self.body_timeout,
                             min_data_rate=self.min_data_rate, handler=self.handler,
                             handler_kwargs=self.handler_kwargs, descriptors=self.descriptors, **plain._kwargs)
