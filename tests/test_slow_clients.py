"""Slow clients starve no one: 150 trickling request bodies and 150 barely-read responses for 40 s on a real
`corsproxy serve` (upstream.max_connections 100), while a normal client is served within 2 s at least 95 % of
the time; and limits.min_data_rate disconnects them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from corsproxy import exchange as exchange_module
from corsproxy import guard
from corsproxy.testing import free_port, serve_process
from tests.conftest import MakeProxy, Proxy, Upstream

SECONDS = 40.0
SLOW_BODIES = SLOW_READS = 150
SLOW_READ_MIB = 1  # issue 14's figure; on loopback the kernel takes a few MiB for a client that reads nothing


def config(port: int, upstream: Upstream, extra: str = "") -> str:
    return (f"listen: {{host: 127.0.0.1, port: {port}, drain_timeout: 1}}\n"
            f"upstream: {{url: '{upstream.url}/v1'}}\nadmin: null\nlogging: {{access_log: false}}\n{extra}\n"
            "rules:\n  - {paths: ['/**'], allow_origins: ['https://app.example.com']}\n")


async def _connect(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:  # a small window, as slow-read attacks advertise
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def slow_body(port: int, until: float, cut: list[int]) -> None:
    """POSTs a 1000-byte body one byte every 2 s; connects again whenever the proxy closes on it."""
    while time.monotonic() < until:
        with contextlib.suppress(OSError):
            reader, writer = await _connect(port)
            try:
                writer.write(b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\n")
                while time.monotonic() < until and not reader.at_eof():
                    writer.write(b"x")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(2**16), 2):
                            cut[0] += 1  # answered (408): the proxy will close
                            break
            finally:
                writer.close()
        await asyncio.sleep(0.5)


async def slow_read(port: int, until: float, cut: list[int], mib: int) -> None:
    """GETs ``mib`` MiB and reads 32 bytes every 5 s (a raw socket: nothing reads ahead); connects again whenever
    the proxy closes on it."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, as slow-read attacks advertise
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, f"GET /big?mib={mib} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
            while time.monotonic() < until:
                if not await asyncio.wait_for(loop.sock_recv(sock, 32), 10):
                    cut[0] += 1
                    break
                await asyncio.sleep(5)
        except (OSError, TimeoutError):
            cut[0] += 1
        finally:
            sock.close()
        await asyncio.sleep(0.5)


async def test_slow_bodies_and_slow_reads_do_not_hold_the_upstream_pool_from_a_normal_client(
        tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    with serve_process(config(port, upstream), tmp_path, port):
        until = time.monotonic() + SECONDS
        cuts = [[0], [0]]
        attackers = [asyncio.ensure_future(slow_body(port, until, cuts[0])) for _ in range(SLOW_BODIES)]
        attackers += [asyncio.ensure_future(slow_read(port, until, cuts[1], SLOW_READ_MIB)) for _ in range(SLOW_READS)]
        times: list[float] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.sleep(3)  # the attack is in place
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/api/x") as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                times.append(time.monotonic() - started if ok else float("inf"))
                await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.gather(*attackers), 30)
        log = (tmp_path / "proxy.log").read_text()
    fast = sum(1 for t in times if t <= 2.0)
    summary = f"{fast}/{len(times)} within 2 s; cut {cuts[0][0]} slow bodies, {cuts[1][0]} slow reads"
    print(summary)
    assert len(times) > 50
    assert fast >= 0.95 * len(times), summary + "\n" + log[-3000:]
    assert cuts[0][0] > 0, summary
    assert "under limits.min_data_rate" in log  # the slow bodies got 408 (slow reads: the in-process tests below)


# ---------------------------------------------------------------- in process, on both paths (make_proxy)

FRAMING = pytest.mark.parametrize("query", ["", "&chunked=1"], ids=["content-length-spliced", "chunked-relayed"])


async def _slow_reader(proxy: Proxy, target: str) -> socket.socket:
    """A connection whose client takes little: a small receive window, and the proxy's socket buffer for it
    kept small (so the kernel does not take megabytes on its behalf, as it does on loopback). A raw
    non-blocking socket: nothing reads ahead of the test."""
    server = proxy.client.server.runner.server
    before = set(server.connections)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", URL(proxy.url).port))
    async with asyncio.timeout(5):
        while not (new := set(server.connections) - before):
            await asyncio.sleep(0.01)
    handler = new.pop()
    assert handler.transport is not None
    handler.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
    return sock


@FRAMING
async def test_a_client_reading_nothing_of_a_1_mib_answer_does_not_hold_the_only_upstream_connection(
        make_proxy: MakeProxy, upstream: Upstream, query: str) -> None:
    proxy = await make_proxy(upstream_extra="  max_connections: 1\n  connect_timeout: 3\n")
    sock = await _slow_reader(proxy, "/big?mib=1" + query)
    try:
        assert (await asyncio.get_running_loop().sock_recv(sock, 12)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.5)
        started = time.monotonic()
        resp = await proxy.client.get("/api/x")
        assert resp.status == 200, await resp.text()
        assert time.monotonic() - started < 2
    finally:
        sock.close()


@FRAMING
async def test_a_client_taking_its_answer_under_min_data_rate_is_disconnected_and_logged(
        make_proxy: MakeProxy, upstream: Upstream, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        query: str) -> None:
    monkeypatch.setattr(guard, "MIN_RATE_GRACE", 1.0)
    monkeypatch.setattr(exchange_module, "MIN_RATE_GRACE", 1.0)
    proxy = await make_proxy(extra="limits: {min_data_rate: 1000}\n")
    server = proxy.client.server.runner.server
    sock = await _slow_reader(proxy, "/big?mib=8" + query)
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):  # the client reads 32 bytes every half second; the proxy drops it
            while server.connections:
                with contextlib.suppress(BlockingIOError):
                    sock.recv(32)
                await asyncio.sleep(0.5)
    finally:
        sock.close()
    # (The client itself sees the reset only once it has read what its kernel had already received.)
    assert time.monotonic() - started < 8
    assert any("min_data_rate" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert upstream.count() == 1


async def test_a_request_body_sent_under_min_data_rate_gets_408_and_is_logged(
        make_proxy: MakeProxy, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(guard, "MIN_RATE_GRACE", 1.0)
    proxy = await make_proxy(extra="limits: {min_data_rate: 100}\n")
    port = URL(proxy.url).port
    assert port is not None
    reader, writer = await _connect(port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\n")
        async with asyncio.timeout(10):
            while not reader.at_eof():
                writer.write(b"x" * 10)  # 40 bytes a second
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(2**16), 0.25)
                    break
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert upstream.count() == 0  # its body never got as far as BODY_BEFORE_CONNECTING: no connection taken
    assert any("min_data_rate" in r.getMessage() for r in caplog.records)
