"""The proxy listener (corsproxy/listener.py): corsproxy binds and accepts itself, on both loops, in batches.

Every in-process proxy test listens through it too (tests/conftest.py ProxyTestServer, testing.listen_loopback),
and every ``serve_process`` test on uvloop; bench/connections.py measures what it is for (first requests of a
burst of connections accepted at once under load).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from corsproxy.guard import Descriptors, GuardedRunner
from corsproxy.listener import ACCEPT_BATCH, ACCEPT_PAUSE, Acceptor, ListenSite, bind

GET = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture
async def site() -> AsyncIterator[ListenSite]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    runner = GuardedRunner(app, descriptors=Descriptors(0, clock=lambda: 0.0))
    await runner.setup()
    listen = ListenSite(runner, "127.0.0.1", 0, backlog=4096, descriptors=runner.descriptors)
    await listen.start()
    yield listen
    await runner.cleanup()


async def ask(sock: socket.socket, timeout: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    await loop.sock_sendall(sock, GET)
    return await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)


async def test_it_serves_names_its_port_and_stops_accepting_when_the_runner_stops(site: ListenSite) -> None:
    assert site.port != 0 and site.name == f"http://127.0.0.1:{site.port}"
    with socket.create_connection(("127.0.0.1", site.port)) as sock:
        assert (await ask(sock)).startswith(b"HTTP/1.1 200")
    await site._runner.cleanup()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", site.port), timeout=2).close()


async def test_a_burst_of_more_than_a_batch_is_all_accepted_and_answered(site: ListenSite) -> None:
    # All connected before the loop runs again: the listening socket holds them, and the acceptor takes
    # them a batch per wakeup.
    socks = [socket.create_connection(("127.0.0.1", site.port)) for _ in range(2 * ACCEPT_BATCH + 10)]
    try:
        answers = await asyncio.gather(*(ask(sock) for sock in socks))
        assert [answer[:15] for answer in answers] == [b"HTTP/1.1 200 OK"] * len(socks)
    finally:
        for sock in socks:
            sock.close()


def test_binding_a_taken_port_fails_with_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1', {port}") as caught:
            bind("127.0.0.1", port, backlog=16, reuse_port=False)
        assert caught.value.errno == 98  # EADDRINUSE


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux")
async def test_accept_out_of_descriptors_is_one_line_then_a_pause_and_the_client_is_served_after(
        site: ListenSite, caplog: pytest.LogCaptureFixture) -> None:
    descriptors = site._descriptors
    assert descriptors is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket()  # the lowest free descriptor: with the limit just above it, accept() has none
    try:
        with caplog.at_level(logging.ERROR, logger="corsproxy"):
            resource.setrlimit(resource.RLIMIT_NOFILE, (client.fileno() + 1, hard))
            try:
                client.connect(("127.0.0.1", site.port))  # (the kernel completes the handshake; accept fails)
                await asyncio.sleep(0.3)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            reports = [r.getMessage() for r in caplog.records if "out of file descriptors" in r.getMessage()]
            assert len(reports) == 1 and "accept() failed: Too many open files" in reports[0], reports
            assert descriptors.failed == 0, "accept() was retried at once: a busy loop"
        # After the pause it accepts again, and the client that waited in the backlog is answered.
        assert (await ask(client, timeout=ACCEPT_PAUSE + 2)).startswith(b"HTTP/1.1 200")
    finally:
        client.close()


async def test_one_wakeup_accepts_what_waits_up_to_a_batch_as_asyncio_does(site: ListenSite) -> None:
    # (What uvloop's own server did not do under load: bench/README.md "Accepting under load".)
    acceptor = site._server
    assert isinstance(acceptor, Acceptor)
    socks = [socket.create_connection(("127.0.0.1", site.port)) for _ in range(ACCEPT_BATCH + 5)]
    try:
        acceptor._accept(acceptor.sockets[0])  # the loop has not run since they connected
        assert len(acceptor._connecting) == ACCEPT_BATCH
        answers = await asyncio.gather(*(ask(sock) for sock in socks))  # the other 5 at the next wakeup
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    finally:
        for sock in socks:
            sock.close()
