"""Upstream faults: a raw asyncio TCP server misbehaves on purpose behind a real
``python -m corsproxy serve`` subprocess, whose open file descriptors are counted from
/proc/PID/fd before and after each fault.

Each fault gets the contract's answer (design §4: refused -> 502, timeout -> 504, malformed
-> 502, dies mid-body -> the client's body is aborted), the proxy serves the next request
without a restart, and no connection or descriptor is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import ALLOWED, free_port, open_fds, serve_subprocess, settle_fds

READ_TIMEOUT = 1.0
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


class FakeUpstream:
    """A TCP server speaking just enough HTTP/1.1 to misbehave in exactly one way at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.behaviour: Behaviour = ok
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.requests = 0
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        """Go down: stop listening and drop every open connection."""
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while await read_request(reader):
                self.requests += 1
                if not await self.behaviour(reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return True


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    await writer.drain()
    return True


async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.1)
    # SO_LINGER 0: close() sends a RST, as a crashed upstream's kernel would.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


async def hang_before_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(30)
    return False


async def hang_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(30)
    return False


BODY = bytes(range(256)) * 1024  # 256 KiB


async def body_in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Head and a bit of the body, then the rest in uneven pieces (the proxy reads it without its parser)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:100])
    for start, end in ((100, 101), (101, 70_000), (70_000, len(BODY))):
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(BODY[start:end])
    await writer.drain()
    return True


async def bytes_past_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """A body longer than its Content-Length: what follows it must be neither relayed nor read as a response."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(BODY[1000:] + OK)
    await writer.drain()
    await asyncio.sleep(0.3)
    return True


def malformed(payload: bytes) -> Behaviour:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(payload)
        await writer.drain()
        return False

    return send


MALFORMED = [
    ("not HTTP", b"HELLO WORLD\r\n\r\n"),
    ("bad status code", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("bad Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"),
    ("two Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
    ("header without colon", b"HTTP/1.1 200 OK\r\nBroken header\r\n\r\n"),
    ("closed before any byte", b""),
    ("head cut short", b"HTTP/1.1 200 OK\r\nContent-Ty"),
]


def closes_at_random(rng: random.Random) -> Behaviour:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)  # no "Connection: close": the proxy believes it may reuse the connection
        await writer.drain()
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.02)  # sometimes while the proxy is already reusing it
            return False
        return True

    return send


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[tuple[str, int]]:
    """One proxy subprocess for the module: recovering without a restart is the point."""
    tmp: Path = tmp_path_factory.mktemp("faults")
    extra = f"  connect_timeout: 1\n  read_timeout: {READ_TIMEOUT}"
    with serve_subprocess(tmp, f"http://127.0.0.1:{upstream_port}", extra) as (port, process):
        yield f"http://127.0.0.1:{port}", process.pid


@pytest.fixture
async def fake(upstream_port: int) -> Iterator[FakeUpstream]:
    up = FakeUpstream(upstream_port)
    await up.start()
    yield up
    await up.stop()


async def get(url: str, path: str = "/api/x") -> tuple[int, bytes | Exception, dict[str, str]]:
    """One request on a fresh client connection; the body is the exception when it was aborted."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + path, headers={"Origin": ALLOWED},
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            try:
                body: bytes | Exception = await resp.read()
            except aiohttp.ClientPayloadError as exc:
                body = exc
            return resp.status, body, dict(resp.headers)


async def assert_recovers(url: str, fake: FakeUpstream) -> None:
    fake.behaviour = ok
    for _ in range(3):
        status, body, headers = await get(url)
        assert (status, body) == (200, b"ok")
        assert headers["Access-Control-Allow-Origin"] == ALLOWED


@contextlib.asynccontextmanager
async def no_leak(pid: int, fake: FakeUpstream):
    """The proxy's fd count after the block (upstream connections dropped) equals the count before."""
    await fake.stop()
    await fake.start()
    before = await settle_fds(pid, 0, within=0.3)  # the proxy closes what the old upstream dropped
    yield
    await fake.stop()  # whatever the proxy still pools is closed from this end now
    after = await settle_fds(pid, before)
    await fake.start()
    print(f"proxy fds: {before} before, {after} after")  # figures for docs/reliability.md (pytest -s)
    assert after == before, f"proxy fds: {before} before, {after} after"


# ------------------------------------------------------------------ tests


async def test_upstream_refusing_gets_502_then_recovers_when_it_listens(proxy: tuple[str, int],
                                                                         upstream_port: int) -> None:
    url, pid = proxy
    before = open_fds(pid)
    statuses = [(await get(url))[0] for _ in range(20)]
    assert statuses == [502] * 20
    status, body, headers = await get(url)
    assert headers["Access-Control-Allow-Origin"] == ALLOWED  # the page can read the error
    fake = FakeUpstream(upstream_port)
    await fake.start()
    try:
        await assert_recovers(url, fake)
    finally:
        await fake.stop()
    assert await settle_fds(pid, before) == before


async def test_upstream_going_down_and_coming_back_needs_no_restart(proxy: tuple[str, int], fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        for _ in range(3):
            await assert_recovers(url, fake)
            await fake.stop()
            assert [(await get(url))[0] for _ in range(5)] == [502] * 5
            await fake.start()
        await assert_recovers(url, fake)


async def test_upstream_reset_mid_response_aborts_the_client_body_and_recovers(proxy: tuple[str, int],
                                                                               fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        for _ in range(5):
            fake.behaviour = reset_mid_body
            status, body, _ = await get(url)
            assert status == 200 and isinstance(body, aiohttp.ClientPayloadError), body
            await assert_recovers(url, fake)


async def test_a_content_length_body_in_pieces_arrives_whole(proxy: tuple[str, int], fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        for _ in range(3):
            fake.behaviour = body_in_pieces
            status, body, headers = await get(url)
            assert status == 200 and body == BODY and headers["Content-Length"] == str(len(BODY))
            await assert_recovers(url, fake)


async def test_bytes_past_a_content_length_body_are_dropped_with_the_connection(proxy: tuple[str, int],
                                                                              fake: FakeUpstream) -> None:
    url, pid = proxy
    host, port = url.removeprefix("http://").split(":")
    async with no_leak(pid, fake):
        for _ in range(3):
            fake.behaviour = bytes_past_the_body
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: p\r\nOrigin: " + ALLOWED.encode() + b"\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"\r\nContent-Length: %d\r\n" % len(BODY) in head
            assert await asyncio.wait_for(reader.readexactly(len(BODY)), 5) == BODY
            with pytest.raises(asyncio.TimeoutError):  # nothing after the body on the client's connection
                await asyncio.wait_for(reader.read(1), 0.5)
            writer.close()
            connections = fake.connections
            await assert_recovers(url, fake)
            assert fake.connections == connections + 1  # the upstream connection that broke framing is not reused


async def test_upstream_hanging_before_headers_gets_504_after_read_timeout(proxy: tuple[str, int],
                                                                           fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        fake.behaviour = hang_before_headers
        started = time.monotonic()
        results = await asyncio.gather(*(get(url) for _ in range(10)))
        assert [status for status, _, _ in results] == [504] * 10
        assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 3
        assert results[0][2]["Access-Control-Allow-Origin"] == ALLOWED
        await assert_recovers(url, fake)


async def test_upstream_hanging_mid_body_aborts_the_client_body_after_read_timeout(proxy: tuple[str, int],
                                                                                   fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        fake.behaviour = hang_mid_body
        started = time.monotonic()
        results = await asyncio.gather(*(get(url) for _ in range(10)))
        assert all(status == 200 and isinstance(body, aiohttp.ClientPayloadError) for status, body, _ in results)
        assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 3
        await assert_recovers(url, fake)


@pytest.mark.parametrize("payload", [p for _, p in MALFORMED], ids=[i for i, _ in MALFORMED])
async def test_malformed_upstream_response_gets_502_and_recovers(proxy: tuple[str, int], fake: FakeUpstream,
                                                                 payload: bytes) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        fake.behaviour = malformed(payload)
        results = [await get(url) for _ in range(5)]
        assert [status for status, _, _ in results] == [502] * 5, results
        await assert_recovers(url, fake)


async def test_upstream_closing_keep_alive_connections_at_random_never_hangs_or_leaks(
        proxy: tuple[str, int], fake: FakeUpstream) -> None:
    url, pid = proxy
    async with no_leak(pid, fake):
        fake.behaviour = closes_at_random(random.Random(7))
        statuses: list[int] = []
        async with aiohttp.ClientSession() as session:
            for i in range(200):
                method = "GET" if i % 2 else "POST"
                async with session.request(method, url + "/api/x", data=b"body" if method == "POST" else None,
                                           headers={"Origin": ALLOWED},
                                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        print(f"random keep-alive closes: {statuses.count(200)} x 200, {statuses.count(502)} x 502 "
              f"(GET {statuses[1::2].count(502)}, POST {statuses[0::2].count(502)}), {fake.requests} reached upstream")
        # GETs are idempotent: aiohttp retries one whose reused connection the upstream closed.
        assert statuses[1::2] == [200] * 100
        # A POST on a connection the upstream closes as it is reused is a 502 ("reset"), never a hang,
        # a 500 or a second delivery (nginx's default too: a non-idempotent request is not retried).
        assert set(statuses[0::2]) <= {200, 502}, statuses
        assert fake.requests == statuses.count(200)  # every 200 is one upstream answer; nothing done twice
        await assert_recovers(url, fake)
