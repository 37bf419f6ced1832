"""Shared fixtures: a real upstream aiohttp server and the real proxy, both on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from yarl import URL

from corsproxy import config as cfg
from corsproxy.app import build_app, reload
from corsproxy.exchange import Exchange
from corsproxy.server import make_runner, server_ssl
from corsproxy.testing import listen_loopback

UPSTREAM_CORS = {
    "Access-Control-Allow-Origin": "https://upstream-says.example",
    "Access-Control-Allow-Methods": "TRACE",
    "Access-Control-Expose-Headers": "X-Upstream-Secret",
}


class Upstream:
    """Records what reached it (``seen``; ``events`` from routes that note how they ended); answers by path."""

    def __init__(self) -> None:
        self.seen: list[web.Request] = []
        self.events: list[str] = []
        self.event = asyncio.Event()  # set whenever an event is noted
        self.app = web.Application()
        self.app[UPSTREAM_KEY] = self
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def count(self, method: str | None = None) -> int:
        return sum(1 for r in self.seen if method is None or r.method == method)

    def note(self, event: str) -> None:
        self.events.append(event)
        self.event.set()

    async def wait_event(self, timeout: float = 5.0) -> str:
        """The first event noted (waits for one, bounded)."""
        await asyncio.wait_for(self.event.wait(), timeout)
        return self.events[0]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        path = request.match_info["tail"]
        for prefix, handler in ROUTES.items():
            if path.startswith(prefix):
                return await handler(request)
        return await echo(request)


UPSTREAM_KEY = web.AppKey("upstream", Upstream)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
        },
        headers={"X-Request-Id": "req-1", "X-Secret": "s", "Vary": "Accept-Encoding"},
    )


async def with_cors(request: web.Request) -> web.Response:
    return web.Response(text="has cors", headers={**UPSTREAM_CORS, "Vary": "Accept-Encoding"})


async def sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b"data: first\n\n")
    await asyncio.sleep(float(request.query.get("gap", "1.0")))
    await resp.write(b"data: second\n\n")
    await resp.write_eof()
    return resp


async def big(request: web.Request) -> web.StreamResponse:
    """GET /big?mib=N: N MiB of a repeating pattern, streamed in 64 KiB chunks (chunked with ?chunked)."""
    mib = int(request.query.get("mib", "2"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if "chunked" not in request.query:
        resp.content_length = mib * 2**20
    await resp.prepare(request)
    chunk = bytes(range(256)) * 256
    for _ in range(mib * 16):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    """POST /upload: hashes the body as it streams in; notes "body-complete" or how reading it ended."""
    digest, size = hashlib.sha256(), 0
    try:
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    except BaseException as exc:  # noted for the test, then re-raised
        request.app[UPSTREAM_KEY].note(f"body-aborted:{type(exc).__name__}")
        raise
    request.app[UPSTREAM_KEY].note("body-complete")
    return web.json_response({"sha256": digest.hexdigest(), "size": size,
                              "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})


async def redirect(request: web.Request) -> web.Response:
    target = request.query.get("to") or str(request.url.with_path("/v1/landed").with_query({}))
    return web.Response(status=302, headers={"Location": target})


async def cookies(request: web.Request) -> web.Response:
    resp = web.Response(text="cookies")
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; Path=/")
    return resp


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["tail"].rsplit("/", 1)[1]))


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.Response(text="slow")


async def hop(request: web.Request) -> web.Response:
    return web.Response(text="hop", headers={"Connection": "X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
                                             "Upgrade": "h2c", "X-End": "1"})


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type.name == "TEXT":
            await sock.send_str("echo:" + msg.data)
    return sock


async def hang(request: web.Request) -> web.StreamResponse:
    """GET /hang: sends headers and one chunk (not with ?quiet), then waits; notes "cancelled" when dropped."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    try:
        if "quiet" not in request.query:
            await resp.prepare(request)
            await resp.write(b"started\n")
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        request.app[UPSTREAM_KEY].note("cancelled")
        raise
    return resp


async def die(request: web.Request) -> web.StreamResponse:
    """GET /die: promises 1 MiB, sends 64 KiB, then drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = 2**20
    await resp.prepare(request)
    await resp.write(b"x" * 2**16)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


GZIPPED = gzip.compress(b"hello gzip " * 1000, mtime=0)


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def respond(request: web.Request) -> web.Response:
    """GET /respond?status=N&Name=Value...: answers with each other query pair as a response header."""
    resp = web.Response(status=int(request.query.get("status", "200")), text="respond")
    for name, value in request.query.items():
        if name != "status":
            resp.headers.add(name, value)
    return resp


async def not_modified(request: web.Request) -> web.Response:
    """GET /notmodified: a 304 that carries the representation's headers (ETag, Content-Length)."""
    return web.Response(status=304, headers={"ETag": '"v1"', "Content-Length": "1234", "Cache-Control": "max-age=1"})


async def ws_close(request: web.Request) -> web.WebSocketResponse:
    """WebSocket that answers the first message by closing with code 4001 and its text as reason."""
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type.name == "TEXT":
            await sock.close(code=4001, message=msg.data.encode())
    request.app[UPSTREAM_KEY].note(f"ws-closed:{sock.close_code}")
    return sock


async def ws_mirror(request: web.Request) -> web.WebSocketResponse:
    """WebSocket that answers a close with the code and reason it got; ?code=N&reason=R: closes first with them."""
    sock = web.WebSocketResponse(autoclose=False)
    await sock.prepare(request)
    if "code" in request.query:
        await sock.close(code=int(request.query["code"]), message=request.query.get("reason", "").encode())
        return sock
    msg = await sock.receive()
    if msg.type == WSMsgType.CLOSE:
        request.app[UPSTREAM_KEY].note(f"ws-got:{msg.data}:{msg.extra}")
        await sock.close(code=msg.data, message=(msg.extra or "").encode())
    return sock


async def ws_proto(request: web.Request) -> web.WebSocketResponse:
    """WebSocket that speaks the "v2.chat" subprotocol only, and says which one was chosen."""
    sock = web.WebSocketResponse(protocols=("v2.chat",))
    await sock.prepare(request)
    await sock.send_str(f"protocol:{sock.ws_protocol}")
    await sock.close()
    return sock


async def ws_die(request: web.Request) -> web.WebSocketResponse:
    """WebSocket whose connection drops (no close frame) on the first message."""
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for _ in sock:
        assert request.transport is not None
        request.transport.abort()
    return sock


async def early(request: web.Request) -> web.StreamResponse:
    """POST /early: answers before reading the body, then reads it (noting how that ended)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(b"answered early\n")
    try:
        size = sum([len(chunk) async for chunk in request.content.iter_any()])
    except BaseException as exc:  # noted for the test, then re-raised
        request.app[UPSTREAM_KEY].note(f"body-aborted:{type(exc).__name__}")
        raise
    request.app[UPSTREAM_KEY].note("body-complete")
    await resp.write(f"{size}\n".encode())
    await resp.write_eof()
    return resp


ROUTES: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    "v1/cors": with_cors,
    "v1/sse": sse,
    "v1/big": big,
    "v1/upload": upload,
    "v1/redirect": redirect,
    "v1/cookies": cookies,
    "v1/status/": status,
    "v1/slow": slow,
    "v1/hop": hop,
    "v1/wsclose": ws_close,
    "v1/wsdie": ws_die,
    "v1/wsproto": ws_proto,
    "v1/wsmirror": ws_mirror,
    "v1/ws": ws,
    "v1/hang": hang,
    "v1/early": early,
    "v1/die": die,
    "v1/gzip": gzipped,
    "v1/respond": respond,
    "v1/notmodified": not_modified,
}


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    up = Upstream()
    up.server = await aiohttp_server(up.app, host="127.0.0.1", auto_decompress=False)  # bodies as sent
    return up


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """cert/key for 127.0.0.1 and the CA file, written where a config can name them."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(paths["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
async def tls_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]], pem_files: dict[str, str]) -> Upstream:
    """The upstream over HTTPS, with a certificate from ``ca``."""
    up = Upstream()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem_files["cert"], pem_files["key"])
    up.server = await aiohttp_server(up.app, host="127.0.0.1", ssl=ctx)
    return up


# The "app" rule most tests use: every origin kind, credentials.
APP_RULE = """
  - name: app
    paths: ["/api/**"]
    allow_origins:
      - https://app.example.com
      - https://*.example.com
      - http://localhost:*
      - regex: '^https://pr-[0-9]+\\.preview\\.example\\.dev$'
    allow_methods: [GET, POST, PUT, PATCH, DELETE]
    allow_headers: [Content-Type, Authorization]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 600"""

BASE_RULES = "\nrules:" + APP_RULE + """
  - name: public
    paths: ["/public/**", "/status"]
    allow_origins: ["*"]
"""


class Proxy:
    """The proxy under test, its client and what it observed."""

    def __init__(self, client: TestClient, exchanges: list[Exchange], text: str = "") -> None:
        self.client = client
        self.exchanges = exchanges
        self.text = text  # the config it runs

    def reload(self, text: str) -> None:
        """Reload ``text`` as ``corsproxy serve`` does on SIGHUP (app.reload)."""
        assert self.client.server.app is not None
        reload(self.client.server.app, cfg.parse(text, "test.yaml", env={}))
        self.text = text

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


MakeProxy = Callable[..., Awaitable[Proxy]]


class ProxyTestServer(TestServer):
    """A TestServer on the runner ``corsproxy serve`` uses (server.make_runner), not a plain AppRunner."""

    def __init__(self, app: web.Application, config: cfg.Config, *, fast: bool = True, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.config = config
        self.fast = fast

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return make_runner(self.app, self.config, fast_preflights=self.fast)

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        """TestServer's, but listening as ``serve`` listens (testing.listen_loopback: listener.ListenSite)."""
        if self.runner:
            return
        assert self.host == "127.0.0.1", self.host
        self._loop, self._ssl = loop, kwargs.pop("ssl", None)
        self.runner = await self._make_runner()
        self.port = await listen_loopback(self.runner, self.port, ssl_context=self._ssl)
        self.scheme = self.scheme or ("https" if self._ssl else "http")
        self._root = URL(f"{self.scheme}://{self.host}:{self.port}")


PROXY_PATHS = ["fast-path", "aiohttp-path"]


@pytest.fixture(params=PROXY_PATHS)
def proxy_path(request: pytest.FixtureRequest) -> str:
    """The way through the proxy every make_proxy test runs on, each test once per way (as uvicorn runs its
    protocol tests on both implementations): the connection-level fast path (on in production, fastpath.py)
    and aiohttp's request path (the same server with it off). A module about one of them parametrises this
    with ``indirect=True``."""
    return str(request.param)


@pytest.fixture
def make_proxy(aiohttp_client: Callable[..., Awaitable[TestClient]],
               aiohttp_server: Callable[..., Awaitable[TestServer]], upstream: Upstream,
               proxy_path: str) -> MakeProxy:
    """make_proxy(rules_yaml=BASE_RULES, upstream_url=None, extra="") -> Proxy on 127.0.0.1, on ``proxy_path``."""

    async def make(rules_yaml: str = BASE_RULES, *, upstream_url: str | None = None, extra: str = "",
                   upstream_extra: str = "", server_kwargs: dict | None = None,
                   client_kwargs: dict | None = None, fast: bool | None = None) -> Proxy:
        if fast is None:
            fast = proxy_path == "fast-path"
        text = (f"upstream:\n  url: {upstream_url or upstream.url + '/v1'}\n{upstream_extra}"
                f"admin: null\n{extra}\n{rules_yaml}")
        config = cfg.parse(text, "test.yaml", env={})
        exchanges: list[Exchange] = []
        app = build_app(config, observers=[exchanges.append])
        server_kwargs = dict(server_kwargs or {})
        if config.listen.tls is not None:  # listen.tls served as server.py serves it
            server_kwargs.setdefault("ssl", server_ssl(config))
        # Served on server.py's own runner (the guard, the connection-level preflight answers).
        server = ProxyTestServer(app, config, fast=fast, host="127.0.0.1")
        await server.start_server(**server_kwargs)
        client = await aiohttp_client(server, auto_decompress=False, **(client_kwargs or {}))
        return Proxy(client, exchanges, text)

    return make


def echoed(payload: dict) -> dict[str, str]:
    """The headers the upstream saw, as a case-insensitive-ish dict (last value wins)."""
    return {k.lower(): v for k, v in payload["headers"]}


def dump(obj: object) -> str:
    return json.dumps(obj, indent=1)


class RawResponse:
    """A response read off a socket as bytes: nothing in between to add, drop or normalize a header."""

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.add(name.strip(), value.strip())
        self.body = body


async def raw_request(url: str, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``request`` as written to the server at ``url`` (http://127.0.0.1:PORT) and read to EOF.

    Send ``Connection: close`` in ``request``, so the server ends the exchange.
    """
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return RawResponse(head, body)
