"""File descriptors (issue 17): ``serve`` raises its soft RLIMIT_NOFILE to the hard limit and says so; when they
run out, new connections are refused with one log line a minute, no busy loop, and the open ones are still served.

The process tests run ``corsproxy serve`` (corsproxy.testing.serve_process) on uvloop and on asyncio's own loop
(a ``uvloop`` that cannot be imported, first on its PYTHONPATH: a user without ``corsproxy[speed]``), and lower
its limit from outside once it listens (``prlimit --pid``, as an operator's ulimit would have).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from corsproxy.guard import ACCEPT_EMFILE, FD_LOG_INTERVAL, FD_SPARE, Descriptors, GuardedRunner
from corsproxy.testing import free_port, listen_loopback, serve_process

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

GET = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLK = os.sysconf("SC_CLK_TCK")
POOL = 2  # upstream.max_connections: the descriptors kept free are 3 x this + guard.FD_SPARE


def config(port: int, upstream: str) -> str:
    return (f"listen: {{host: 127.0.0.1, port: {port}}}\nupstream: {{url: '{upstream}', max_connections: {POOL}}}\n"
            "admin: null\nlogging: {level: info, access_log: false}\nrules:\n  - paths: ['/**']\n"
            "    allow_origins: ['https://app.example.com']\n")


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    else:
        blocker = tmp_path / "no-uvloop" / "uvloop"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('this test runs asyncio without uvloop')\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocker.parent),
                                                                        os.environ.get("PYTHONPATH")])))
    return str(request.param)


async def upstream_url(aiohttp_server: AiohttpServer) -> str:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


async def ask(sock: socket.socket) -> bytes:
    """Send one GET on ``sock`` and read what comes back in the first 2 s (b"" when it was closed)."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, GET)
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
    except (ConnectionError, TimeoutError):
        return b""


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_serve_raises_the_soft_limit_to_the_hard_one_and_logs_both(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = max(1024, len(os.listdir("/proc/self/fd")) + 256)
    if hard <= low:
        pytest.skip(f"the hard limit ({hard}) leaves no room to start lower")
    port = free_port()
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by the process started now
    try:
        with serve_process(config(port, "http://127.0.0.1:9"), tmp_path, port) as proc:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert resource.prlimit(proc.pid, resource.RLIMIT_NOFILE) == (hard, hard)
            line = next(line for line in proc.lines if "RLIMIT_NOFILE" in line)
            assert f"raised from {low} to the hard limit {hard}" in line
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_descriptors_refuses_new_connections_once_logged_and_serves_the_open_ones(
        aiohttp_server: AiohttpServer, tmp_path: Path, loop_kind: str, sockets: list[socket.socket]) -> None:
    port = free_port()
    with serve_process(config(port, await upstream_url(aiohttp_server)), tmp_path, port) as proc:
        await proc.wait_line(lambda line: "listening on" in line)
        assert ("event loop: uvloop" in proc.output) == (loop_kind == "uvloop")
        keep = await connect(port)
        sockets.append(keep)
        assert (await ask(keep)).startswith(b"HTTP/1.1 200")  # its upstream connection is in the pool now
        in_use = len(os.listdir(f"/proc/{proc.pid}/fd"))
        limit = in_use + 3 * POOL + FD_SPARE + 8  # room for about 8 more client connections over the reserve
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (limit, limit))

        held: list[socket.socket] = []
        refused = 0
        for _ in range(100):  # bounded: the limit is reached long before
            sock = await connect(port)
            sockets.append(sock)
            answer = await ask(sock)
            if answer.startswith(b"HTTP/1.1 200"):
                held.append(sock)
                continue
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:60]
            refused += 1
            if refused == 10:
                break
        assert refused == 10 and held, (refused, len(held))

        cpu = cpu_seconds(proc.pid)
        await asyncio.sleep(1.0)
        assert cpu_seconds(proc.pid) - cpu < 0.5, "busy while out of descriptors"
        reports = [line for line in proc.lines if "out of file descriptors" in line]
        assert len(reports) == 1, reports
        assert "open connections are still served" in reports[0]

        assert (await ask(keep)).startswith(b"HTTP/1.1 200")  # the open connection is still answered
        for sock in held[:4]:
            sock.close()
        for _ in range(50):  # until the server has seen them close (bounded)
            sock = await connect(port)
            sockets.append(sock)
            if (await ask(sock)).startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no new connection was accepted after some closed")


class Limit:
    def __init__(self) -> None:
        self.soft, self.now = 1 << 20, 0.0


async def test_refusals_are_answered_503_and_reported_once_a_minute_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    limit = Limit()
    descriptors = Descriptors(4, limit=lambda: limit.soft, clock=lambda: limit.now)
    runner = GuardedRunner(app, descriptors=descriptors)
    port = await listen_loopback(runner)
    opened: list[socket.socket] = []
    try:
        first = await connect(port)
        opened.append(first)
        assert (await ask(first)).startswith(b"HTTP/1.1 200")
        limit.soft = first.fileno() + 2  # (the server's descriptors are this process's: the next ones are above)
        with caplog.at_level(logging.ERROR, logger="corsproxy"):
            for _ in range(3):
                sock = await connect(port)
                opened.append(sock)
                answer = await ask(sock)
                assert answer.startswith(b"HTTP/1.1 503") and b"out of file descriptors" in answer, answer
            assert len(caplog.records) == 1
            assert "1 new connection(s) refused with 503" in caplog.records[0].getMessage()
            limit.now += FD_LOG_INTERVAL
            sock = await connect(port)
            opened.append(sock)
            assert (await ask(sock)).startswith(b"HTTP/1.1 503")
            assert len(caplog.records) == 2
            assert "3 new connection(s) refused" in caplog.records[1].getMessage()  # the two unreported + this
        assert (await ask(first)).startswith(b"HTTP/1.1 200")
    finally:
        for sock in opened:
            sock.close()
        await runner.cleanup()


async def test_accept_emfile_is_one_line_and_other_loop_errors_pass_on(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        Descriptors(clock=lambda: 0.0).watch_accept(loop)
        with caplog.at_level(logging.ERROR, logger="corsproxy"):
            for _ in range(3):
                loop.call_exception_handler({"message": ACCEPT_EMFILE,
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
            loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
        reports = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
        assert len(reports) == 1 and "accept() failed: Too many open files" in reports[0].getMessage()
        assert [c["message"] for c in seen] == ["something else"]
    finally:
        loop.set_exception_handler(before)
