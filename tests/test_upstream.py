"""The lean upstream client against real aiohttp servers and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiohttp import web

from corsproxy.upstream import Pool, State, UpstreamError


async def _app_server(aiohttp_server):
    async def echo(request: web.Request) -> web.StreamResponse:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"method": request.method, "path": request.raw_path, "size": size,
                                  "sha": digest.hexdigest(), "te": request.headers.get("Transfer-Encoding", ""),
                                  "host": request.headers.get("Host")})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    async def nothing(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/204", nothing)
    app.router.add_route("*", "/{tail:.*}", echo)
    return await aiohttp_server(app, host="127.0.0.1")


def _pool(server, **kw) -> Pool:
    opts = {"ssl_context": None, "server_hostname": None, "limit": 4, "connect_timeout": 2.0, "read_timeout": 5.0}
    opts.update(kw)
    return Pool("127.0.0.1", server.port, **opts)


async def _body(resp) -> bytes:
    out = b""
    while chunk := await resp.read():
        out += chunk
    resp.release()
    return out


async def test_get_then_keep_alive_reuses_one_connection(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server)
    for _ in range(3):
        resp = await pool.request("GET", "/a%2Fb?x=1", [("Host", "up")], None, length=None)
        assert resp.status == 200
        assert b'"path": "/a%2Fb?x=1"' in await _body(resp)
    assert pool._count == 1 and len(pool._idle) == 1
    await pool.close()


async def test_chunked_and_sized_bodies_arrive_intact(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server)
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB

    async def chunks():
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    for chunked, length in ((True, None), (False, len(payload))):
        resp = await pool.request("POST", "/up", [("Host", "up")], chunks(), length=length, chunked=chunked)
        body = await _body(resp)
        assert hashlib.sha256(payload).hexdigest().encode() in body
        assert (b'"te": "chunked"' in body) is chunked
    await pool.close()


async def test_head_and_204_have_no_body_and_connection_is_reused(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server)
    resp = await pool.request("HEAD", "/x", [("Host", "up")], None, length=None)
    assert resp.status == 200 and await _body(resp) == b""
    resp = await pool.request("GET", "/204", [("Host", "up")], None, length=None)
    assert resp.status == 204 and await _body(resp) == b""
    resp = await pool.request("GET", "/x", [("Host", "up")], None, length=None)
    assert resp.status == 200 and b"GET" in await _body(resp)
    assert pool._count == 1
    await pool.close()


async def test_refused_and_read_timeout_map_to_502_and_504(aiohttp_server, unused_tcp_port):
    server = await _app_server(aiohttp_server)
    with pytest.raises(UpstreamError) as refused:
        await Pool("127.0.0.1", unused_tcp_port, ssl_context=None, server_hostname=None, limit=1,
                   connect_timeout=1, read_timeout=1).request("GET", "/", [("Host", "x")], None, length=None)
    assert (refused.value.kind, refused.value.status) == ("refused", 502)
    pool = _pool(server, read_timeout=0.3)
    with pytest.raises(UpstreamError) as late:
        await pool.request("GET", "/slow", [("Host", "up")], None, length=None)
    assert (late.value.kind, late.value.status) == ("timeout", 504)
    assert pool._count == 0
    await pool.close()


async def test_the_read_timeout_holds_on_a_reused_connection_whenever_its_exchange_began(aiohttp_server):
    # One timer per connection outlives its exchanges (upstream.Connection._check_timeout): a quick exchange,
    # a pause shorter than the timeout, then a slow one on the same connection must still time out in time,
    # and a quick one after a pause longer than the timeout must not.
    server = await _app_server(aiohttp_server)
    pool = _pool(server, read_timeout=0.4)
    assert await _body(await pool.request("GET", "/a", [("Host", "up")], None, length=None))
    await asyncio.sleep(0.25)
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamError) as late:
        await pool.request("GET", "/slow", [("Host", "up")], None, length=None)
    waited = asyncio.get_running_loop().time() - started
    assert late.value.kind == "timeout" and 0.35 < waited < 0.9, waited
    for pause in (0.5, 0.1):
        await asyncio.sleep(pause)
        assert b'"path": "/b"' in await _body(await pool.request("GET", "/b", [("Host", "up")], None, length=None))
    assert pool._count == 1
    await pool.close()


async def test_malformed_response_and_stale_keep_alive():
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"NOT HTTP AT ALL\r\n\r\n"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answers.pop(0) if answers else b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()  # closes every keep-alive connection after one answer

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None, limit=2, connect_timeout=1,
                read_timeout=2)
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)
    assert await _body(resp) == b"ok"
    await asyncio.sleep(0.05)
    with pytest.raises(UpstreamError) as bad:
        await pool.request("GET", "/", [("Host", "x")], None, length=None)
    assert bad.value.kind == "protocol"
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)  # a fresh connection works
    assert resp.status == 200 and await _body(resp) == b""
    await pool.close()
    server.close()
    await server.wait_closed()


async def test_a_response_head_over_the_cap_is_a_protocol_error():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1], ssl_context=None, server_hostname=None, limit=1,
                connect_timeout=1, read_timeout=2)
    with pytest.raises(UpstreamError) as big:
        await pool.request("GET", "/", [("Host", "x")], None, length=None)
    assert big.value.kind == "protocol" and "over 65536 bytes" in str(big.value)
    assert pool._count == 0
    await pool.close()
    server.close()
    await server.wait_closed()


class _Raw:
    """A raw TCP upstream on 127.0.0.1; ``close`` waits (bounded) for its connection handlers to end."""

    def __init__(self, server: asyncio.Server, tasks: list[asyncio.Task]) -> None:
        self.server, self.tasks = server, tasks

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)


async def _raw_upstream(handle) -> tuple[_Raw, int]:
    tasks: list[asyncio.Task] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    return _Raw(server, tasks), server.sockets[0].getsockname()[1]


async def test_an_upload_waits_for_an_upstream_slow_to_read_it_instead_of_buffering_it():
    """Back-pressure: the body is pulled from its iterator only as fast as the upstream's socket takes it."""
    reading = asyncio.Event()
    got = hashlib.sha256()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        left = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reading.wait()
        while left:
            chunk = await reader.read(min(left, 2**16))
            got.update(chunk)
            left -= len(chunk)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server, port = await _raw_upstream(handle)
    pulled, chunk, total = [0], bytes(range(256)) * 256, 64 * 2**20

    async def body():
        for _ in range(total // len(chunk)):
            pulled[0] += len(chunk)
            yield chunk

    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None, limit=1, connect_timeout=2, read_timeout=10)
    request = asyncio.ensure_future(pool.request("POST", "/", [("Host", "x")], body(), length=total))
    await asyncio.sleep(1.0)  # the upstream reads nothing meanwhile
    assert pulled[0] < 24 * 2**20  # socket buffers' worth (a few MiB on loopback), not the 64 MiB
    reading.set()
    resp = await asyncio.wait_for(request, 20)
    assert await _body(resp) == b"ok"
    assert got.digest() == hashlib.sha256(chunk * (total // len(chunk))).digest()
    await pool.close()
    server.close()
    await server.wait_closed()


async def test_a_100_continue_before_the_answer_is_skipped_and_the_connection_kept():
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                writer.close()
                return
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server, port = await _raw_upstream(handle)
    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None, limit=1, connect_timeout=2, read_timeout=5)
    for _ in range(2):
        resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)
        assert (resp.status, await _body(resp)) == (200, b"ok")
    assert len(connections) == 1
    await pool.close()
    server.close()
    await server.wait_closed()


async def test_a_detached_exchange_frees_its_slot_and_its_connection_is_closed_not_reused(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server, limit=1, connect_timeout=0.5)
    stream = await pool.request("GET", "/slow", [("Host", "up")], None, length=None)
    stream.detach()  # (a stream: it no longer counts against the limit of 1)
    other = await asyncio.wait_for(pool.request("GET", "/a", [("Host", "up")], None, length=None), 1.0)
    assert other.conn is not stream.conn and pool._count == 1
    assert b'"path": "/a"' in await _body(other)
    assert await _body(stream) == b"late"
    assert stream.conn.closed and pool._idle == [other.conn] and pool._count == 1
    await pool.close()


async def test_a_request_waiting_for_a_free_connection_gets_the_one_released(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server, limit=1, connect_timeout=3.0)
    first = await pool.request("GET", "/slow", [("Host", "up")], None, length=None)
    waiting = asyncio.ensure_future(pool.request("GET", "/a", [("Host", "up")], None, length=None))
    await asyncio.sleep(0.1)
    assert not waiting.done() and len(pool._waiters) == 1
    conn = first.conn
    assert await _body(first) == b"late"  # (releases it)
    second = await asyncio.wait_for(waiting, 1.0)
    assert second.conn is conn and pool._count == 1
    assert b'"path": "/a"' in await _body(second)
    await pool.close()


async def test_requests_waiting_for_a_connection_are_served_in_arrival_order(aiohttp_server):
    """A released connection goes to the request waiting longest, even when a newer one runs first; a request
    that stops waiting passes what it was given on (the slot is not lost)."""
    server = await _app_server(aiohttp_server)
    pool = _pool(server, limit=1, connect_timeout=3.0)
    served: list[str] = []

    async def use(name: str) -> None:
        resp = await pool.request("GET", f"/{name}", [("Host", "up")], None, length=None)
        served.append(name)
        await _body(resp)

    first = await pool.request("GET", "/first", [("Host", "up")], None, length=None)
    waiting = [asyncio.ensure_future(use(name)) for name in ("a", "b", "gone", "c")]
    await asyncio.sleep(0.1)
    assert len(pool._waiters) == 4
    waiting[2].cancel()
    newer = asyncio.ensure_future(use("newer"))  # scheduled to run before the wake-up the release below makes
    await _body(first)  # (releases the connection)
    await asyncio.wait_for(asyncio.gather(*waiting, newer, return_exceptions=True), 5)
    assert served == ["a", "b", "c", "newer"]
    assert pool._count == 1 and len(pool._idle) == 1 and not pool._waiters
    await pool.close()


async def test_a_connection_given_to_a_request_cancelled_before_it_woke_goes_to_the_next(aiohttp_server):
    server = await _app_server(aiohttp_server)
    pool = _pool(server, limit=1, connect_timeout=3.0)
    first = await pool.request("GET", "/first", [("Host", "up")], None, length=None)
    a, b = (asyncio.ensure_future(pool.request("GET", f"/{n}", [("Host", "up")], None, length=None)) for n in "ab")
    await asyncio.sleep(0.1)
    while await first.read():
        pass
    first.release()  # given to a ...
    a.cancel()  # ... which is cancelled before it runs
    second = await asyncio.wait_for(b, 2)
    assert a.cancelled() and second.conn is first.conn
    assert b'"path": "/b"' in await _body(second)
    assert pool._count == 1 and pool._idle == [first.conn]
    await pool.close()


async def test_a_pooled_connection_the_upstream_closed_unanswered_is_retried_once_on_a_new_one():
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # kept alive...
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # ...until the next request, which it drops unanswered

    server, port = await _raw_upstream(handle)
    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None, limit=1, connect_timeout=2, read_timeout=5)
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)
    assert await _body(resp) == b"ok"
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)  # bodiless: safe to send again
    assert (resp.status, await _body(resp)) == (200, b"ok")
    assert len(seen) == 2
    with pytest.raises(UpstreamError) as dropped:  # a body was sent: never sent twice
        await pool.request("POST", "/", [("Host", "x")], None, length=2, ready=b"hi")
    assert dropped.value.kind == "reset" and len(seen) == 2
    await pool.close()
    server.close()
    await server.wait_closed()


async def test_a_connection_goes_head_body_done_and_failed_as_its_exchange_does():
    go = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await go.wait()
        writer.write(b"cd")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        writer.transport.abort()  # two bytes short

    server, port = await _raw_upstream(handle)
    pool = Pool("127.0.0.1", port, ssl_context=None, server_hostname=None, limit=1, connect_timeout=2, read_timeout=5)
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)
    conn = resp.conn
    assert conn.state is State.BODY
    go.set()
    assert await _body(resp) == b"abcd" and conn.state is State.DONE and conn.reusable
    resp = await pool.request("GET", "/", [("Host", "x")], None, length=None)
    assert resp.conn is conn  # kept alive, reused
    with pytest.raises(UpstreamError) as cut:
        await _body(resp)
    assert cut.value.kind == "reset" and conn.state is State.FAILED and conn.error is cut.value
    resp.release()
    assert not conn.reusable and pool._count == 0 and not pool._idle
    await pool.close()
    server.close()
    await server.wait_closed()
