"""Reliability fixtures: the proxy served as server.py serves it, raw sockets, fd counts.

``served`` runs build_app() under server.make_runner() (the GuardedRunner, handler_cancellation)
on a real TCPSite, with guard timeouts shortened so slow-client tests finish in seconds.
``recorder`` is an upstream that notes every request that reached it, body included, so a
test can check what was (never) forwarded. ``serve_subprocess`` runs ``python -m corsproxy
serve`` so its file descriptors can be counted apart from the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from corsproxy import config as cfg
from corsproxy.app import build_app
from corsproxy.exchange import Exchange
from corsproxy.guard import GuardedRunner
from corsproxy.server import make_runner
from corsproxy.testing import ServeProcess, free_port, listen_loopback, serve_process

ALLOWED = "https://app.example.com"
RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.com, "https://*.example.com"]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type]
    allow_credentials: true
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
"""
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None  # None: the body never arrived whole


@dataclass
class Recorder:
    """An upstream that records what reached it."""

    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = Seen(request.method, request.raw_path, dict(request.headers), None)
        self.seen.append(entry)
        if request.path.startswith("/ws"):
            return await self.websocket(request)
        entry.body = await request.read()
        if request.path.startswith("/slow"):
            await asyncio.sleep(float(request.query.get("s", "2")))
        return web.json_response({"path": request.raw_path, "sha256": hashlib.sha256(entry.body).hexdigest(),
                                  "size": len(entry.body)},
                                 # Reflects the Origin (short ones: the proxy's client takes 8 KiB a header).
                                 headers={"Access-Control-Allow-Origin": request.headers.get("Origin", "*")[:4096],
                                          "Access-Control-Allow-Credentials": "true"})


    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application(handler_args={"max_field_size": 32 * 1024})  # lets a 10 KB Origin through to be seen
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@dataclass
class Served:
    port: int
    exchanges: list[Exchange]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve_proxy(upstream_url: str, extra: str = "", *, header_timeout: float | None = HEADER_TIMEOUT,
                      body_timeout: float = BODY_TIMEOUT) -> tuple[Served, GuardedRunner]:
    """The proxy on a real port; ``header_timeout=None`` leaves both guard timeouts to the config."""
    text = f"upstream:\n  url: {upstream_url}\n{extra}\nadmin: null\n{RULES}"
    config = cfg.parse(text, "reliability.yaml", env={})
    exchanges: list[Exchange] = []
    runner = make_runner(build_app(config, observers=[exchanges.append]), config)
    if header_timeout is not None:
        runner.header_timeout, runner.body_timeout = header_timeout, body_timeout
    return Served(await listen_loopback(runner), exchanges), runner


@pytest.fixture
async def served(recorder: Recorder) -> AsyncIterator[Served]:
    proxy, runner = await serve_proxy(recorder.url)
    yield proxy
    await runner.cleanup()


# ------------------------------------------------------------------ raw sockets


class Reply(bytes):
    """What came back on a raw connection; ``closed`` when the server closed it (not our timeout)."""

    closed: bool = False


async def raw_exchange(port: int, data: bytes, *, wait: float = 3.0) -> Reply:
    """Send bytes, read until the server closes or ``wait`` passes; returns what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        out, closed = b"", False
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await writer.drain()
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    out += chunk
                closed = True
        reply = Reply(out)
        reply.closed = closed
        return reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def header_names(response: bytes) -> list[str]:
    """The lowercased header names of the first response in ``response``."""
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [line.split(b":", 1)[0].strip().lower().decode() for line in head]


def status_of(response: bytes) -> int | None:
    """The status code of the first response in ``response``, None if there is none."""
    parts = response.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


async def normal_request(url: str) -> tuple[int, dict[str, str], bytes]:
    """An ordinary allowed CORS GET on a fresh connection: the client that must keep being served."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/ok", headers={"Origin": ALLOWED},
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def assert_still_serving(url: str) -> None:
    status, headers, _ = await normal_request(url)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ALLOWED


# ------------------------------------------------------------------ file descriptors


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settle_fds(pid: int | str, target: int, *, slack: int = 0, within: float = 5.0) -> int:
    """Wait (bounded) for the fd count to come back to ``target`` (+ slack); returns the last count."""
    deadline = time.monotonic() + within
    count = open_fds(pid)
    while count > target + slack and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = open_fds(pid)
    return count


@contextlib.contextmanager
def serve_subprocess(tmp_path: Path, upstream_url: str, extra: str = "") -> Iterator[tuple[int, ServeProcess]]:
    """``python -m corsproxy serve`` on a free port; yields (port, process); stops it with SIGTERM."""
    port = free_port()
    with serve_process(f"listen:\n  port: {port}\n  drain_timeout: 1\nupstream:\n  url: {upstream_url}\n{extra}\n"
                       f"admin: null\nlogging:\n  access_log: false\n{RULES}", tmp_path, port) as proc:
        yield port, proc
