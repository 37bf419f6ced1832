"""Browser fixtures: headless Chromium (Playwright, sync API) against real servers on 127.0.0.1.

The servers (pages, upstream, proxy) run on an asyncio loop in a background thread, so the
tests themselves are plain functions that drive the browser. Pages are served from
``http://localhost:<page port>`` and call the proxy on ``http://localhost:<proxy port>``:
same site, different origin, so cookies work with ``credentials: 'include'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web

from corsproxy import config as cfg
from corsproxy.app import build_app
from corsproxy.exchange import Exchange
from corsproxy.server import make_runner

CHROMIUM = os.environ.get("CORSPROXY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
T = TypeVar("T")


def _unavailable(reason: str) -> None:
    # In CI a missing browser is a failure: the suite must not pass by skipping.
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: browser tests may not be skipped)")
    pytest.skip(reason)


def _launch_browser() -> tuple[Any, Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the Python package 'playwright' is not installed (pip install -e '.[test]')")
    pw = sync_playwright().start()
    # Debian's Chromium, else one on PATH, else (a machine where Playwright brought its own) Playwright's.
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium") or pw.chromium.executable_path
    if not os.path.isfile(path):
        pw.stop()
        _unavailable(f"no Chromium: not at {CHROMIUM} (apt-get install chromium, or set $CORSPROXY_CHROMIUM), "
                     "not on PATH, and Playwright has no browser of its own")
    try:
        return pw, pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # playwright's Error has no stable import path across versions
        pw.stop()
        _unavailable(f"Chromium at {path} did not start: {str(exc).splitlines()[0]}")
        raise


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (launching costs about a second); a fresh temporary profile."""
    pw, chromium = _launch_browser()
    try:
        yield chromium
    finally:
        chromium.close()
        pw.stop()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A new browser context per test: its own cookies and its own preflight cache."""
    ctx = browser.new_context()
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        ctx.close()


class Loop:
    """An asyncio loop in a background thread that runs the servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    try:
        yield lp
    finally:
        lp.close()


@contextlib.contextmanager
def running(loop: Loop, start: Awaitable[tuple[T, list[web.AppRunner]]]) -> Iterator[T]:
    """What ``start`` started on ``loop`` (a module's site), its runners cleaned up at the end."""
    started, runners = loop.run(start)
    try:
        yield started
    finally:
        for runner in runners:
            loop.run(runner.cleanup())


async def start_site(app: web.Application, runner: web.AppRunner | None = None, port: int = 0
                     ) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 (a free port by default); returns the runner and its port."""
    runner = runner or web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, runner.addresses[0][1]


# ---------------------------------------------------------------------- the upstream API

BIG_SIZE = 5 * 2**20


def big_body() -> bytes:
    """The 5 MiB the upstream sends: a pattern that a shifted or dropped chunk would change."""
    return bytes((i * 7 + i // 251) % 256 for i in range(65536)) * (BIG_SIZE // 65536)


@dataclass
class Upstream:
    """A plain API that knows nothing about CORS; records every request that reaches it."""

    seen: list[dict[str, Any]] = field(default_factory=list)
    release_sse: asyncio.Event = field(default_factory=asyncio.Event)
    sse_sent: list[str] = field(default_factory=list)
    port: int = 0

    def methods(self) -> list[str]:
        return [r["method"] for r in self.seen]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_get("/v1/api/cookie/set", self.set_cookie)
        app.router.add_get("/v1/api/redirect", self.redirect)
        app.router.add_get("/v1/api/big", self.big)
        app.router.add_post("/v1/api/upload", self.upload)
        app.router.add_get("/v1/api/sse", self.sse)
        app.router.add_get("/v1/api/ws", self.ws)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        entry = {"method": request.method, "path": request.path,
                 "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        self.seen.append(entry)
        # The upstream's own CORS headers: the proxy must replace them with the rule's.
        return web.json_response(entry, headers={"X-Request-Id": "req-42", "X-Secret": "hidden",
                                                 "Access-Control-Allow-Origin": "https://upstream.example"})

    async def set_cookie(self, request: web.Request) -> web.Response:
        self.seen.append({"method": request.method, "path": request.path, "headers": dict(request.headers)})
        resp = web.Response(text="cookie set")
        resp.set_cookie("session", "s3cret", path="/", samesite="Lax", httponly=True)
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        # An absolute Location at the upstream: the proxy rewrites it to its own origin.
        return web.Response(status=302, headers={"Location": f"http://127.0.0.1:{self.port}/v1/api/landed"})

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = BIG_SIZE
        await resp.prepare(request)
        body = big_body()
        for offset in range(0, BIG_SIZE, 65536):
            await resp.write(body[offset:offset + 65536])
        await resp.write_eof()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        self.sse_sent.append("first")
        # The second event waits until the test has seen the first one in the page.
        await asyncio.wait_for(self.release_sse.wait(), 10)
        await resp.write(b"data: second\n\n")
        self.sse_sent.append("second")
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self.seen.append({"method": "WS", "path": request.path, "headers": dict(request.headers)})
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        return sock


# ---------------------------------------------------------------------- the stack

PAGE_HTML = "<!doctype html><meta charset=utf-8><title>page</title><p>a page on its own origin</p>"

RULES = """
rules:
  - name: open
    paths: ["/open/**"]
    allow_origins: ["*"]
  - name: app
    paths: ["/api/**"]
    allow_origins: ["{page}"]
    allow_methods: [GET, POST, PUT, DELETE]
    allow_headers: [Content-Type, X-Token]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 600
"""


@dataclass
class Stack:
    """Two page origins, the upstream and the proxy in front of it."""

    page: str  # the allowed origin, e.g. http://localhost:40001
    other: str  # a disallowed origin
    proxy: str  # the proxy, e.g. http://localhost:40003
    upstream: Upstream
    exchanges: list[Exchange]
    down_proxy: str  # a proxy whose upstream refuses connections

    def preflights(self, path: str) -> int:
        return sum(1 for ex in self.exchanges if ex.method == "OPTIONS" and ex.path.split("?")[0] == path)


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE_HTML, content_type="text/html")


async def _page_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _page)
    return app


async def _proxy(config_text: str, exchanges: list[Exchange]) -> tuple[web.AppRunner, int]:
    config = cfg.parse(config_text, "browser-test.yaml", env={})
    app = build_app(config, observers=[exchanges.append])
    return await start_site(app, make_runner(app, config))


async def _free_port() -> int:
    # Bound and closed at once: nothing listens there, so connecting is refused (a 502).
    runner, port = await start_site(web.Application())
    await runner.cleanup()
    return port


async def _start_stack() -> tuple[Stack, list[web.AppRunner]]:
    page_runner, page_port = await start_site(await _page_app())
    other_runner, other_port = await start_site(await _page_app())
    upstream = Upstream()
    up_runner, upstream.port = await start_site(upstream.app())
    page = f"http://localhost:{page_port}"
    head = "admin: null\nlogging: {access_log: false}\n"
    rules = RULES.replace("{page}", page)
    exchanges: list[Exchange] = []
    proxy_runner, proxy_port = await _proxy(f"upstream: {{url: 'http://127.0.0.1:{upstream.port}/v1'}}\n{head}{rules}",
                                            exchanges)
    dead = await _free_port()
    down_runner, down_port = await _proxy(f"upstream: {{url: 'http://127.0.0.1:{dead}'}}\n{head}{rules}", [])
    stack = Stack(page=page, other=f"http://localhost:{other_port}", proxy=f"http://localhost:{proxy_port}",
                  upstream=upstream, exchanges=exchanges, down_proxy=f"http://localhost:{down_port}")
    return stack, [proxy_runner, down_runner, up_runner, page_runner, other_runner]


@pytest.fixture(scope="module")
def stack_runners(loop: Loop) -> Iterator[tuple[Stack, list[web.AppRunner]]]:
    started = loop.run(_start_stack())
    try:
        yield started
    finally:
        for runner in started[1]:
            loop.run(runner.cleanup())


@pytest.fixture
def stack(stack_runners: tuple[Stack, list[web.AppRunner]], loop: Loop) -> Stack:
    """The running stack, with what the upstream and proxy saw cleared for this test."""
    s = stack_runners[0]

    def reset() -> None:
        s.upstream.seen.clear()
        s.upstream.sse_sent.clear()
        s.upstream.release_sse = asyncio.Event()
        s.exchanges.clear()

    loop.call(reset)
    loop.run(asyncio.sleep(0))
    return s


# ---------------------------------------------------------------------- page helpers

FETCH_JS = """
async ([url, init]) => {
  try {
    const r = await fetch(url, init || {});
    const body = await r.text();
    return {status: r.status, body, headers: Object.fromEntries(r.headers.entries()), error: null};
  } catch (e) {
    return {status: null, body: null, headers: null, error: String(e)};
  }
}
"""


def open_page(context: Any, origin: str) -> Any:
    page = context.new_page()
    page.goto(origin + "/")
    return page


def fetch(page: Any, url: str, init: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page could read from ``fetch(url, init)``: status, body, headers, or the error."""
    return page.evaluate(FETCH_JS, [url, init or {}])
