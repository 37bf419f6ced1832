"""Security fixtures: the proxy as ``serve`` runs it, on both request paths, between raw sockets.

- ``strict_upstream``: a raw TCP server that parses what reaches it with llhttp in strict mode (httptools),
  records every message (method, target, headers, body) and every byte per connection, and answers each
  message with a small JSON naming what it saw. A message it cannot parse is recorded as an error: the
  proxy must never send one.
- ``scripted_upstream``: a raw TCP server that answers ``/script`` requests with the bytes a test scripts
  (misbehaving on purpose) and every other request with a plain ``200 normal``.
- ``edge``: the proxy in front of either, parametrised over the two ways a request is served: the
  connection-level path (``fastpath``, on in production) and aiohttp's own (the same server with it off).
- ``Conn``: a client connection that reads responses with llhttp, so a test sees exactly what came back,
  message by message, and whether the proxy closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httptools
import pytest

from corsproxy import config as cfg
from corsproxy.app import build_app
from corsproxy.server import make_runner
from corsproxy.testing import listen_loopback

APP = "https://app.example.com"
RULES = """
rules:
  - name: admin
    paths: ["/admin/**"]
    allow_origins: [https://app.example.com]
    disallowed_origin: reject
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, HEAD, POST, PUT]
    allow_headers: [Content-Type]
    allow_credentials: true
    disallowed_origin: reject
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
"""
PATHS = ["connection-level", "aiohttp"]
IDLE = 0.05  # seconds of silence after which a live connection is taken to have sent everything


# ------------------------------------------------------------------ the strict recording upstream


@dataclass
class Message:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class RawServer:
    """A TCP server on 127.0.0.1 whose connections ``_conn`` serves; ``stop`` drops those still open."""

    port = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            await self._conn(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class StrictUpstream(RawServer):
    """Records what reached it; ``errors`` are messages llhttp (strict) refused: framing the proxy broke."""

    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    raw: dict[int, bytes] = field(default_factory=dict)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.raw)
        self.raw[conn] = b""
        collect = _Collect(self, conn, writer)
        parser = collect.parser = httptools.HttpRequestParser(collect)
        while data := await reader.read(65536):
            self.raw[conn] += data
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.errors.append(f"conn {conn}: an upgrade reached the upstream")
                return
            except httptools.HttpParserError as exc:
                self.errors.append(f"conn {conn}: {exc!r} in {self.raw[conn][-300:]!r}")
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            await writer.drain()


class _Collect:
    """httptools callbacks: one Message per request; answered as soon as it is complete."""

    def __init__(self, up: StrictUpstream, conn: int, writer: asyncio.StreamWriter) -> None:
        self.up, self.conn, self.writer = up, conn, writer
        self.parser: httptools.HttpRequestParser | None = None
        self._reset()

    def _reset(self) -> None:
        self.target, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        msg = Message(self.parser.get_method().decode("latin-1"), self.target.decode("latin-1"), self.headers,
                      self.body, self.conn)
        self.up.messages.append(msg)
        answer = json.dumps({"target": msg.target, "body_len": len(msg.body)}).encode()
        self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(answer), answer))
        self._reset()


# ------------------------------------------------------------------ the scripted upstream

Script = Sequence[bytes | float]  # bytes to write, or seconds to wait


@dataclass
class ScriptedUpstream(RawServer):
    """Answers ``/script`` with ``script`` (then keeps the connection open, or closes it when the script ends with
    ``CLOSE``), anything else with ``200 normal``. Counts connections and requests."""

    script: Script = ()
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if b"/script" not in head.split(b"\r\n", 1)[0]:
                writer.write(NORMAL)
                await writer.drain()
                continue
            for part in self.script:
                if part is CLOSE:
                    return
                if isinstance(part, float):
                    await asyncio.sleep(part)
                else:
                    writer.write(part)
                    await writer.drain()


CLOSE = b"<close>"
NORMAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nnormal"


# ------------------------------------------------------------------ the proxy


@dataclass
class Edge:
    port: int
    path: str  # which of PATHS serves the requests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve_edge(upstream_url: str, path: str, extra: str = "") -> AsyncIterator[Edge]:
    """The proxy as ``serve`` runs it (server.make_runner, the guard), with the connection-level path on or off."""
    text = (f"upstream:\n  url: {upstream_url}\n  read_timeout: 1\n  connect_timeout: 1\n{extra}\nadmin: null\n"
            f"limits:\n  body_timeout: 1\n  header_timeout: 2\n{RULES}")
    config = cfg.parse(text, "security.yaml", env={})
    runner = make_runner(build_app(config), config, fast_preflights=path == "connection-level")
    port = await listen_loopback(runner)
    try:
        yield Edge(port, path)
    finally:
        await runner.cleanup()


@pytest.fixture(params=PATHS)
def request_path(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def strict_upstream() -> AsyncIterator[StrictUpstream]:
    up = StrictUpstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    await up.start()
    yield up
    await up.stop()


# ------------------------------------------------------------------ the client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict:
        return json.loads(self.body)


class Conn:
    """One client connection; :meth:`responses` reads with llhttp until ``count`` responses are complete, the
    proxy closes, or nothing comes for ``idle`` seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False
        self.received = b""
        self._parsed: list[Response] = []
        self._parser = httptools.HttpResponseParser(self)
        self._parse_error: str | None = None
        self._head_only = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes, *, head_only: bool = False) -> None:
        self._head_only = head_only
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def responses(self, count: int = 1, *, idle: float = 2.0) -> list[Response]:
        while not self.closed and sum(r.complete for r in self._parsed) < count:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), idle)
            except TimeoutError:
                break
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                break
            self.received += data
            if self._parse_error is None:
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    self._parse_error = repr(exc)
        out, self._parsed = self._parsed, [r for r in self._parsed if not r.complete]
        return out

    async def quiet(self, within: float = IDLE) -> bytes:
        """Bytes that arrive within ``within`` seconds, when none are expected."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), within)
        except (TimeoutError, ConnectionError):
            return b""
        if not data:
            self.closed = True
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._parsed.append(Response(0, [], b"", False))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed[-1].headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._parsed[-1].status = self._parser.get_status_code()
        if self._head_only:
            self._parsed[-1].complete = True
            self._parser = httptools.HttpResponseParser(self)  # a HEAD answer ends at its head

    def on_body(self, body: bytes) -> None:
        self._parsed[-1].body += body

    def on_message_complete(self) -> None:
        self._parsed[-1].complete = True


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Conn]:
    conn = await Conn.open(port)
    try:
        yield conn
    finally:
        await conn.close()


def get(path: str, *extra: str, method: str = "GET", origin: str | None = APP) -> bytes:
    """A well-formed keep-alive request (the kind a browser sends)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: proxy", *([f"Origin: {origin}"] if origin else []), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


Check = Callable[[Response], None]
