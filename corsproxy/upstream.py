"""A lean HTTP/1.1 client for the one upstream: a keep-alive pool of asyncio protocols.

Why not aiohttp's ClientSession: for a small proxied GET its request/response objects
cost several times the whole of the rest of the proxy (see bench/README.md). This client
does only what a reverse proxy needs — send a head and a streamed body, hand back the
status, the raw header list and the body as it arrives — and leaves parsing to
httptools (llhttp, the parser Node.js uses). It never follows redirects, never decodes
bodies and keeps no cookies.

Errors: everything that goes wrong is one :class:`UpstreamError` whose ``kind`` is
``refused``, ``dns``, ``tls``, ``timeout``, ``reset`` or ``protocol``; :attr:`status` maps it
to 502 or 504. A request body iterator that raises passes its exception through.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import socket
import ssl
from collections.abc import AsyncIterable
from typing import Any

import httptools

from . import splice

log = logging.getLogger("corsproxy")
READ_HIGH_WATER = 2**18  # buffered body bytes before we stop reading from the upstream
READ_SIZE = 2**17  # bytes per read: the rest of a larger body can bypass the process (splice_body)
MAX_HEAD = 64 * 1024  # bytes of response head we hold; more is a broken (or hostile) upstream -> 502
NO_BODY_STATUSES = frozenset({204, 304})
LAST_CHUNK = b"0\r\n\r\n"


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer properly."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502


class State(enum.Enum):
    """Where the exchange on a connection is (as httpcore's HTTP11Connection tracks it).

    IDLE -> HEAD (``start``: the request goes out, its answer's head is awaited) -> BODY (the final head is in)
    -> DONE (the whole response is read), or FAILED from HEAD or BODY (``error`` says why); DONE or IDLE again at
    the next ``start``. Whether the socket is still open is apart from this (``closed``): a DONE exchange's
    connection goes back to its pool only when it is open and the response allowed keep-alive.
    """

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    DONE = "done"
    FAILED = "failed"


IDLE, HEAD, BODY, DONE, FAILED = State  # (a module global is read faster than an Enum's member)


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; carries one request at a time.

    Reads into its pool's buffer (``get_buffer``): bytes handed to the parser are not first copied into
    a new ``bytes``, and a read stops at ``READ_SIZE``, so most of a large body is still on the socket
    when its head is parsed (:meth:`splice_body`). One buffer serves every connection of a pool: the
    parser has copied what it keeps before ``buffer_updated`` returns, and reads never overlap.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float, buffer: memoryview) -> None:
        self.loop = loop
        self._buffer = buffer
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._head: asyncio.Future[None] | None = None
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._framing: list[tuple[bytes, str]] = []  # (lowercased name, value) of Content-Length, Transfer-Encoding
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._received = 0
        self.state = IDLE
        self.error: BaseException | None = None  # why the exchange FAILED
        self._interim = False  # inside a 1xx response
        self._extra = False  # bytes came after the response: never reuse this connection
        self._ended_early = False  # we ended the message at its head (HEAD, 204, 304); llhttp may end it again
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._head_only = False
        self._may_splice = False
        self._splice_length: int | None = None  # the body's length, when it may be spliced (on_headers_complete)
        self._head_bytes = 0
        self._until_close = False  # a body with neither Content-Length nor chunked framing ends at EOF
        self.keep_alive = True
        self._parser: httptools.HttpResponseParser | None = None
        # llhttp ended the last response itself, right at its end: the next exchange reuses the parser (making one
        # looks up its eight callbacks); after a body it did not see (spliced, HEAD, an error), a new one.
        self._spare: httptools.HttpResponseParser | None = None
        self._feeding = False
        self._pipe: splice.Pipe | None = None  # made by the first splice_body, closed with the connection
        self._splicing = False
        self._unparsed = 0  # bytes of a body still to come after splice_body stopped part way

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._last_data = self.loop.time()
        if self._unparsed:  # the rest of a Content-Length body splice_body began: counted, past the parser
            n = min(len(data), self._unparsed)
            self._unparsed -= n
            self.on_body(bytes(data[:n]))
            if not self._unparsed:
                self.on_message_complete()
            data = data[n:]
            if not data:
                return
        if self._parser is None:  # bytes nobody asked for: the connection cannot be trusted
            self.keep_alive = False
            self.close()
            return
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._spare = None
            cause = exc.__cause__ or exc.__context__ or exc  # our own callbacks' reason, when they raised
            if self._extra:
                log.warning("the upstream sent bytes after the end of its response; they were dropped and its "
                            "connection closed")
            self._fail(UpstreamError("protocol", f"malformed HTTP from the upstream: {cause}"))
            self.close()  # (after a complete response, too: its bytes are kept, the connection is not)
        finally:
            self._feeding = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._close_pipe()
        if self._until_close and exc is None and self._head is not None and self._head.done():
            self.on_message_complete()  # RFC 9112 §6.3 rule 8: the body was everything up to the close
        elif self.state in (HEAD, BODY):
            self._fail(UpstreamError("reset", "the upstream closed the connection" + (f": {exc}" if exc else "")))
        self._wake_drain()

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_drain()

    # -- httptools callbacks
    # SECURITY: one exchange reads exactly one final response (after any 1xx). llhttp goes on parsing the
    # rest of a read after a message ends: a second message begins with on_message_begin, and a body we ended
    # at its head (HEAD, 204, 304) reaches on_body/on_message_complete; those ask _expecting(), so its first
    # byte is refused and the connection, which cannot be trusted, is closed. (The other callbacks only follow
    # on_message_begin.)

    def on_message_begin(self) -> None:
        self._expecting()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason.decode("latin-1")  # (llhttp may hand the status text over in pieces)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD:
            raise httptools.HttpParserError(f"response head over {MAX_HEAD} bytes")
        if self._status:
            return  # SECURITY: a chunked body's trailer fields; never passed on, never added to the head
        # As aiohttp decodes them, so that non-ASCII bytes pass through the server's writer unchanged.
        pair = (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        self._headers.append(pair)
        if len(name) in (14, 17) and (lower := name.lower()) in (b"content-length", b"transfer-encoding"):
            self._framing.append((lower, pair[1]))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:  # we never ask for an upgrade here (WebSockets go through aiohttp's client)
                raise httptools.HttpParserError("101 Switching Protocols to a request that asked for no upgrade")
            self._interim = True  # 100 Continue, 103 Early Hints: the real response follows
            self._headers, self._framing, self._reason, self._head_bytes = [], [], "", 0
            return
        if (problem := _ambiguous_framing(self._framing)) is not None:
            raise httptools.HttpParserError(problem)
        self._status = status
        self.state = BODY
        self.keep_alive = self._parser.should_keep_alive()
        self._until_close = not self.keep_alive and not self._framing
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only or status in NO_BODY_STATUSES:
            self._ended_early = True
            self.on_message_complete()  # (llhttp does not know we sent HEAD, and may read a body anyway)
        elif self._may_splice and (length := self._plain_length()) is not None:
            self._splice_length = length
            if length > READ_SIZE:
                self._pause()  # the rest stays on the socket for splice_body, or until the caller reads

    def on_body(self, chunk: bytes) -> None:
        self._expecting()
        self._body.append(chunk)
        self._buffered += len(chunk)
        self._received += len(chunk)
        if self._buffered > READ_HIGH_WATER:
            self._pause()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.state is DONE:
            if not self._ended_early:
                self._expecting()
            self._ended_early = False  # llhttp's own end of the HEAD/204/304 message we ended at its head
            return
        self.state = DONE
        if self._feeding and not self._ended_early:  # llhttp's own end of the message, at its last byte
            self._spare = self._parser
        self._parser = None  # what comes after this message is not ours (_expecting, data_received)
        self._wake()

    def _expecting(self) -> None:
        """Raise when the response has ended already: what llhttp is parsing now is not ours to pass on."""
        if self.state is DONE:
            self._extra = True
            raise httptools.HttpParserError("bytes after the end of the response")

    # -- one exchange

    def start(self, head_only: bool, may_splice: bool = False) -> None:
        """Expect a response. ``may_splice``: the caller may send a large body on with :meth:`splice_body`,
        so reading stops when the head is in, and resumes only when the caller reads."""
        self._status, self._reason, self._headers, self._framing = 0, "", [], []
        self._head_bytes = 0
        self._body.clear()
        self._buffered = self._received = 0
        self.state, self.error = HEAD, None
        self._interim = self._extra = self._ended_early = False
        self._head_only = head_only
        self._may_splice = may_splice
        self._splice_length = None
        self._unparsed = 0
        self._until_close = False
        self._head = self.loop.create_future()
        self._parser = self._spare or httptools.HttpResponseParser(self)
        self._spare = None
        self._last_data = self.loop.time()
        if self._timer is None:  # (one still pending from the last exchange looks at _last_data when it fires)
            self._timer = self.loop.call_at(self._last_data + self.read_timeout, self._check_timeout)

    async def head(self) -> tuple[int, str, list[tuple[str, str]]]:
        assert self._head is not None
        await self._head
        return self._status, self._reason, self._headers

    async def read(self) -> bytes:
        """The next body chunk; ``b""`` once the body is complete."""
        while not self._body:
            if self.state is FAILED:
                assert self.error is not None
                raise self.error
            if self.state is DONE:
                return b""
            self._resume()  # paused at the head (``start(may_splice=True)``) with nothing buffered
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._buffered <= READ_HIGH_WATER // 4:
            self._resume()
        return chunk

    def whole_body(self) -> bytes | None:
        """The entire body when it has already arrived (typical for small responses), else None."""
        if self.state is not DONE:
            return None
        data = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        return data

    async def splice_body(self, dst_fd: int, sent: list[int], *, budget: int = 0, min_rate: float | None = None,
                          grace: float = 5.0) -> bool:
        """Send the rest of the body to socket ``dst_fd`` with :func:`splice.move`: it never enters the process.

        Only after ``start(may_splice=True)``, for a body framed by ``Content-Length`` alone with at least
        ``READ_SIZE`` still to come, over plain TCP; else False, and nothing was sent. ``sent[0]`` counts
        what was. Also False when the destination stalls and the rest fits ``budget``: :meth:`read` then
        returns the rest (so the exchange can complete, and this connection go back to its pool, while the
        destination catches up). ``min_rate``/``grace``: see :func:`splice.move`. Raises UpstreamError as
        :meth:`read` does, and what :func:`splice.move` raises for the destination.
        """
        transport = self.transport
        length = self._splice_length
        if (length is None or length - self._received < READ_SIZE or self.state is not BODY
                or transport is None or transport.get_extra_info("sslcontext") is not None
                or (sock := transport.get_extra_info("socket")) is None):
            return False
        self._pause()
        self._cancel_timer()  # move() times its own waits
        first = list(self._body)
        self._body.clear()
        self._buffered = 0
        if self._pipe is None:
            self._pipe = splice.Pipe()
        self._splicing = True
        try:
            rest = await splice.move(sock.fileno(), dst_fd, length - self._received, self._pipe, self.read_timeout,
                                     sent, first, budget=budget, min_rate=min_rate, grace=grace)
        except splice.SourceClosed as exc:
            raise self.fail(UpstreamError("reset", f"the upstream closed the connection: {exc}")) from None
        except splice.SourceStalled:
            raise self.fail(UpstreamError("timeout", f"no byte from the upstream for {self.read_timeout:g}s")) \
                from None
        except BaseException as exc:  # the destination failed, or a cancel
            self.fail(exc)
            raise
        finally:
            self._splicing = False
            if self.closed:
                self._close_pipe()
        if rest is not None:  # the destination is slow: the rest goes through the process after all
            chunks, self._unparsed = rest
            for chunk in chunks:
                if chunk:
                    self._body.append(chunk)
                    self._buffered += len(chunk)
            if not self._unparsed:
                self.on_message_complete()
            else:
                self._last_data = self.loop.time()
                self._timer = self.loop.call_at(self._last_data + self.read_timeout, self._check_timeout)
            self._resume()
            return False
        self.on_message_complete()
        self._resume()  # an idle pooled connection must notice the upstream closing it
        return True

    def _plain_length(self) -> int | None:
        """The body's ``Content-Length`` when that alone frames it; anything odd stays with llhttp's rules."""
        if len(self._framing) != 1:
            return None
        name, value = self._framing[0]
        return int(value) if name == b"content-length" and value.isascii() and value.isdigit() else None

    def _close_pipe(self) -> None:
        if self._pipe is not None and not self._splicing:  # (while splicing, splice_body closes it after)
            self._pipe.close()
            self._pipe = None

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    @property
    def reusable(self) -> bool:
        return self.state is DONE and self.keep_alive and not self.closed and not self._extra

    def write(self, *parts: bytes) -> None:
        """Send ``parts`` (one vectored write with uvloop: nothing is copied to join them)."""
        if self.transport is None or self.closed:
            raise UpstreamError("reset", "the upstream connection is closed")
        self.transport.writelines(parts)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamError("reset", "the upstream connection is closed")
        if self._drain is not None:
            await self._drain

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        self._close_pipe()
        if self.transport is not None:
            self.transport.close()

    def fail(self, exc: BaseException) -> BaseException:
        """Abandon the exchange (body iterator failed, client went away) and close: never reused. Returns ``exc``."""
        self._fail(exc)
        self.close()
        return exc

    # -- internals

    def _fail(self, exc: BaseException) -> None:
        """The exchange FAILED with ``exc`` (unless it was DONE already): its reader is woken to raise it."""
        if self.state in (HEAD, BODY):
            self.state, self.error = FAILED, exc
        self.keep_alive = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: a failure nobody awaits is not an error to log
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain is not None:
            if not self._drain.done():
                self._drain.set_result(None)
            self._drain = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        # One timer per connection, re-armed lazily: "read_timeout seconds without a byte" while an exchange
        # runs. It outlives the exchange that armed it (no timer made and cancelled per request); once it finds
        # the connection between exchanges it stops, and the next start arms it again.
        self._timer = None
        if self.state is not HEAD and self.state is not BODY:
            return
        deadline = self._last_data + self.read_timeout
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check_timeout)
            return
        self._fail(UpstreamError("timeout", f"no byte from the upstream for {self.read_timeout:g}s"))
        self.close()


class Pool:
    """Keep-alive connections to one upstream, at most ``limit`` at a time."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, server_hostname: str | None,
                 limit: int, connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port = host, port
        self.ssl_context, self.server_hostname = ssl_context, server_hostname
        self.limit = limit
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: list[Connection] = []
        self._count = 0
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._read_buffer = memoryview(bytearray(READ_SIZE))  # shared by its connections (see Connection)
        self.retired = False

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: AsyncIterable[bytes] | None, *, length: int | None, chunked: bool = False,
                      ready: bytes = b"", may_splice: bool = False) -> UpstreamResponse:
        """Send a request; returns once the response head is in. The caller must ``release``.

        ``headers`` must carry no framing (Content-Length, Transfer-Encoding): this writes its own, from the
        body it sends: ``Content-Length: length`` when ``length`` is given (the caller reads exactly that
        many bytes, and no more is sent), chunked when ``chunked``, else none (no body).

        ``ready`` is the start of the body, already at hand: it leaves with the head in one write (a
        separate write would cost a syscall, and the upstream a read). ``body`` is the rest, if any.
        ``may_splice``: see :meth:`Connection.start`.
        """
        assert not (chunked and length is not None), "a body is framed one way"
        head = [_encode_head(method, target, headers, length, chunked)]
        if ready:
            head.extend(_frame(ready, chunked))
        if chunked and body is None:
            head.append(LAST_CHUNK)
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            conn.start(method == "HEAD", may_splice)
            try:
                conn.write(*head)
            except UpstreamError:
                self._discard(conn)
                continue
            exchange = UpstreamResponse(self, conn, body, chunked,
                                        None if length is None else length - len(ready))
            try:
                await exchange.wait_head()
            except UpstreamError as exc:
                exchange.release()
                # A pooled connection the upstream had already closed: safe to retry only
                # when nothing of a body was sent and the answer never started.
                if attempt == 0 and reused and body is None and not ready and exc.kind == "reset":
                    continue
                raise
            except BaseException:
                exchange.release()
                raise
            return exchange
        raise UpstreamError("reset", "the upstream closed the connection twice")

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def retire(self) -> None:
        """Replaced (a reload changed the settings): close the idle connections, and each busy one when released."""
        self.retired = True
        for conn in self._idle:
            conn.close()
            self._count -= 1
        self._idle.clear()

    async def _acquire(self) -> tuple[Connection, bool]:
        # First come, first served: while requests wait, a connection or slot that frees goes to the one waiting
        # longest (_hand_over), and a newer request queues behind them. (Woken to look again, a waiter found the
        # connection taken by newer requests run before it, and queued again at the back: at 1,000 clients on 100
        # connections the p99 was four times the median; bench/README.md.)
        if not self._waiters:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
                self._count -= 1
            if self._count < self.limit:
                self._count += 1
                return await self._connect_counted(), False
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # Long streams (SSE) can hold every connection: bound the wait like a connect.
            async with asyncio.timeout(self.connect_timeout):
                given = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._pass_on(waiter.result())  # given as this request stopped waiting: the next one's
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise UpstreamError("timeout", f"no free upstream connection within {self.connect_timeout:g}s "
                                               f"(all {self.limit} of upstream.max_connections busy)") from None
            raise
        if given is None or given.closed:  # a slot, counted for this request (or the closed connection's)
            return await self._connect_counted(), False
        return given, True

    async def _connect_counted(self) -> Connection:
        """Connect in a slot already counted for it; the slot goes on if that fails."""
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._wake_one()
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self.read_timeout, self._read_buffer), self.host, self.port,
                    ssl=self.ssl_context, server_hostname=self.server_hostname if self.ssl_context else None,
                )
        except TimeoutError:
            raise UpstreamError("timeout", f"connecting to {self.host}:{self.port} took over "
                                           f"{self.connect_timeout:g}s") from None
        except socket.gaierror as exc:
            raise UpstreamError("dns", f"cannot resolve {self.host}: {exc.strerror}") from None
        except ssl.SSLError as exc:
            raise UpstreamError("tls", f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except OSError as exc:
            raise UpstreamError("refused", f"cannot connect to {self.host}:{self.port}: "
                                           f"{exc.strerror or exc}") from None
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def detached(self, conn: Connection) -> None:
        """``conn`` no longer counts against ``limit`` (UpstreamResponse.detach): a waiter may connect."""
        self._count -= 1
        self._wake_one()

    def _put_back(self, conn: Connection) -> None:
        if not conn.reusable or self.retired:
            self._discard(conn, close=True)
        elif not self._hand_over(conn):
            self._idle.append(conn)

    def _discard(self, conn: Connection, close: bool = True) -> None:
        if close:
            conn.close()
        self._count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot is free: the request waiting longest gets it (counted for it) and connects."""
        if self._count < self.limit and self._hand_over(None):
            self._count += 1

    def _hand_over(self, given: Connection | None) -> bool:
        """Give a connection, or a slot (None), to the request waiting longest; False if none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(given)
                return True
        return False

    def _pass_on(self, given: Connection | None) -> None:
        """What was given to a request that stopped waiting goes to the next (or back to the pool)."""
        if given is None:
            self._count -= 1
            self._wake_one()
        else:
            self._put_back(given)


class UpstreamResponse:
    """One request/response on a pooled connection: the head, then the body as it arrives."""

    def __init__(self, pool: Pool, conn: Connection, body: AsyncIterable[bytes] | None, chunked: bool,
                 remaining: int | None) -> None:
        self.pool, self.conn = pool, conn
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._released = False
        self._detached = False
        self._writer: asyncio.Task[None] | None = None
        if body is not None:
            # Sent alongside reading the answer: an upstream that streams its reply while it
            # reads (an echo) would otherwise deadlock once the socket buffers fill.
            self._writer = asyncio.ensure_future(self._send(body, chunked, remaining))

    async def wait_head(self) -> None:
        self.status, self.reason, self.headers = await self.conn.head()

    async def read(self) -> bytes:
        return await self.conn.read()

    def whole_body(self) -> bytes | None:
        return self.conn.whole_body()

    async def splice_body(self, dst_fd: int, sent: list[int], **kwargs: Any) -> bool:
        """:meth:`Connection.splice_body`, unless a request body is still being sent (its failure must reach
        :meth:`read`)."""
        if self._writer is not None and not self._writer.done():
            return False
        return await self.conn.splice_body(dst_fd, sent, **kwargs)

    @property
    def has_data(self) -> bool:
        """Some of the body has arrived and is waiting to be read."""
        return bool(self.conn._body)

    async def _send(self, body: AsyncIterable[bytes], chunked: bool, remaining: int | None) -> None:
        """Write the rest of the body; with a Content-Length (``remaining`` bytes still owed), exactly that many."""
        conn = self.conn
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining < 0:  # SECURITY: never write past the length we declared
                        raise UpstreamError("protocol", "request body longer than its Content-Length")
                conn.write(*_frame(chunk, chunked))
                await conn.drain()
            if remaining:  # the body ended early: the upstream must not wait for (or take) more
                raise UpstreamError("reset", "request body ended before its Content-Length")
            if chunked:
                conn.write(LAST_CHUNK)
        except asyncio.CancelledError:
            conn.fail(UpstreamError("reset", "request body abandoned"))
            raise
        except BaseException as exc:  # the body iterator's own error (e.g. too large) wins
            conn.fail(exc)

    def detach(self) -> None:
        """Take this exchange's connection out of the pool's count: a stream open for hours (SSE) must not hold
        one of the pool's ``limit`` slots from ordinary requests. It is closed when released, never reused."""
        if not self._detached and not self._released:
            self._detached = True
            self.pool.detached(self.conn)

    def release(self) -> None:
        """Give the connection back (reused only when the whole exchange completed cleanly)."""
        if self._released:
            return
        self._released = True
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            self.conn.fail(UpstreamError("reset", "request body abandoned"))
        if self._detached:
            self.conn.close()
        else:
            self.pool._put_back(self.conn)


def _ambiguous_framing(framing: list[tuple[bytes, str]]) -> str | None:
    """Why a response's framing (its lowercased Content-Length and Transfer-Encoding fields) is ambiguous
    (RFC 9112 §6.3: a request smuggling shape), or None."""
    if not framing:
        return None
    lengths = [value for name, value in framing if name == b"content-length"]
    if len(lengths) > 1 or (lengths and "," in lengths[0]):
        return "more than one Content-Length"
    if lengths and len(lengths) < len(framing):
        return "both Content-Length and Transfer-Encoding"
    return None


def _frame(chunk: bytes, chunked: bool) -> tuple[bytes, ...]:
    """``chunk`` as parts of a write: framed as one chunk of a chunked body, without copying it."""
    return (b"%x\r\n" % len(chunk), chunk, b"\r\n") if chunked else (chunk,)


def _encode_head(method: str, target: str, headers: list[tuple[str, str]], length: int | None,
                 chunked: bool) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend([f"{name}: {value}" for name, value in headers])
    if length is not None:
        lines.append(f"Content-Length: {length}")
    elif chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
