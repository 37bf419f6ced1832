"""``corsproxy demo``: CORS in action on three origins of one machine.

- a sample API that knows nothing about CORS (``/api/notes`` data, ``/private/stats``);
- corsproxy in front of it, with an embedded config: rule ``demo-page`` allows the page's
  origin on ``/api/**``, rule ``private`` allows only ``https://admin.example.com``;
- a page whose buttons call the API directly (the browser blocks the read) and through the
  proxy (allowed), and shows the headers of every request that reached either server,
  preflights included, as each server sent them (recorded by an ``on_response_prepare`` hook).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import html
import json
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from .app import build_app
from .config import Config, parse
from .exchange import TAPS_KEY, Tap
from .logs import AccessLog
from .server import make_runner

DEFAULT_PORT = 8080  # the page; the proxy gets the next port and the API the one after
HOST = "127.0.0.1"
WIRE_SIZE = 100  # exchanges the page can still look up

DEMO_CONFIG = """
listen: {{host: 127.0.0.1, port: {proxy_port}, drain_timeout: 1}}
upstream: {{url: "http://127.0.0.1:{api_port}"}}
admin: null
logging: {{level: info, access_log: true}}
debug: {{decision_header: true}}   # CORS-Decision on every answer: the page shows why
rules:
  - name: demo-page
    paths: ["/api/**"]
    allow_origins: ["http://localhost:{page_port}", "http://127.0.0.1:{page_port}"]
    allow_methods: [GET, PUT]
    allow_headers: [Content-Type, X-Demo-Token]
    expose_headers: [CORS-Decision]
    max_age: 0   # no preflight cache, so every click shows its preflight
  - name: private
    paths: ["/private/**"]
    allow_origins: ["https://admin.example.com"]
"""


class PortInUse(Exception):
    """The port the user asked for is taken."""


# ---------------------------------------------------------------------- the wire log


@dataclass
class Wiretap:
    """The last exchanges of the API and the proxy, with the headers each server sent."""

    entries: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=WIRE_SIZE))
    seq: int = 0

    def hook(self, server: str) -> Callable[[web.Request, web.StreamResponse], Any]:
        """An ``on_response_prepare`` hook: what aiohttp's request path sends."""
        async def record(request: web.Request, response: web.StreamResponse) -> None:
            self.record(server, request.method, request.path_qs, list(request.headers.items()), response.status,
                        response.reason, list(response.headers.items()))
        return record

    def tap(self, server: str) -> Tap:
        """A proxy tap (exchange.TAPS_KEY): what the connection-level path sends."""
        return lambda *exchange: self.record(server, *exchange)

    def record(self, server: str, method: str, path: str, request: list[tuple[str, str]], status: int, reason: str,
               response: list[tuple[str, str]]) -> None:
        self.seq += 1
        self.entries.append({"seq": self.seq, "server": server, "method": method, "path": path, "status": status,
                             "reason": reason, "request": request, "response": response})

    def after(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["seq"] > seq]


# ---------------------------------------------------------------------- the sample API


class SampleApi:
    """A small API that sends no CORS headers at all, like the legacy APIs corsproxy fronts."""

    def __init__(self) -> None:
        self.notes = {1: "Buy milk", 2: "Learn CORS", 3: "Ship it"}

    def app(self, tap: Wiretap) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(tap.hook("api"))
        app.router.add_get("/api/notes", self.list_notes)
        app.router.add_put("/api/notes/{id:\\d+}", self.put_note)
        app.router.add_get("/private/stats", self.stats)
        return app

    async def list_notes(self, request: web.Request) -> web.Response:
        return web.json_response([{"id": k, "text": v} for k, v in sorted(self.notes.items())])

    async def put_note(self, request: web.Request) -> web.Response:
        note_id = int(request.match_info["id"])
        data = await request.json()
        self.notes[note_id] = str(data.get("text", ""))[:200]
        return web.json_response({"id": note_id, "text": self.notes[note_id],
                                  "token": request.headers.get("X-Demo-Token")})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"users": 1234, "revenue": "secret"})


# ---------------------------------------------------------------------- the page


def render_page(page_port: int, proxy_port: int, api_port: int) -> str:
    """The demo page, server-rendered; its script only fills in the results of each click."""
    template = resources.files("corsproxy").joinpath("static/demo.html").read_text("utf-8")
    settings = {"proxyPort": proxy_port, "apiPort": api_port, "pagePort": page_port}
    values = {"PAGE_PORT": str(page_port), "PROXY_PORT": str(proxy_port), "API_PORT": str(api_port),
              "SETTINGS": json.dumps(settings)}
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", html.escape(value, quote=False))
    return template


def page_app(html_text: str, tap: Wiretap) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=html_text, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def wire(request: web.Request) -> web.Response:
        after = int(request.query.get("after", "0") or 0)
        return web.json_response({"seq": tap.seq, "entries": tap.after(after)},
                                 headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/wire", wire)
    return app


# ---------------------------------------------------------------------- ports and lifecycle


def bind(port: int, *, fallback: bool) -> socket.socket:
    """A listening socket on 127.0.0.1:port; a free port instead when taken and ``fallback``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after Ctrl-C
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        if not fallback:
            sock.close()
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise PortInUse(f"port {port} on {HOST} {why}; choose another with --port") from exc
        sock.bind((HOST, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class Demo:
    """The three running servers."""

    page_port: int
    proxy_port: int
    api_port: int
    config: Config
    runners: list[web.AppRunner]
    wiretap: Wiretap

    @property
    def page_url(self) -> str:
        return f"http://localhost:{self.page_port}/"

    @property
    def proxy_url(self) -> str:
        return f"http://localhost:{self.proxy_port}/"

    @property
    def api_url(self) -> str:
        return f"http://localhost:{self.api_port}/"

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def _serve(runner: web.AppRunner, sock: socket.socket) -> web.AppRunner:
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def start(port: int | None = None) -> Demo:
    """Start the API, the proxy and the page. ``port`` is the page's (default 8080, or a free one)."""
    base = DEFAULT_PORT if port is None else port
    socks = [bind(base, fallback=port is None)]
    try:
        # --port 0 asks for free ports throughout.
        socks += [bind(base + 1 if base else 0, fallback=True), bind(base + 2 if base else 0, fallback=True)]
    except PortInUse:
        socks[0].close()
        raise
    page_port, proxy_port, api_port = (s.getsockname()[1] for s in socks)
    config = parse(DEMO_CONFIG.format(page_port=page_port, proxy_port=proxy_port, api_port=api_port),
                   "<corsproxy demo>", env={})
    tap = Wiretap()
    proxy = build_app(config, observers=[AccessLog().observe])
    proxy.on_response_prepare.append(tap.hook("proxy"))
    proxy[TAPS_KEY].append(tap.tap("proxy"))
    runners = [
        await _serve(web.AppRunner(SampleApi().app(tap), access_log=None), socks[2]),
        await _serve(make_runner(proxy, config), socks[1]),  # as `corsproxy serve` runs it
        await _serve(web.AppRunner(page_app(render_page(page_port, proxy_port, api_port), tap),
                                   access_log=None), socks[0]),
    ]
    return Demo(page_port, proxy_port, api_port, config, runners, tap)


async def run(port: int | None, on_ready: Callable[[Demo], None]) -> int:
    """Run the demo until SIGINT/SIGTERM; returns the exit code (0)."""
    demo = await start(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_ready(demo)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await demo.stop()
    return 0
