"""Bodies streamed both ways, and what happens when either side goes away mid-stream (design §4 "Forwarding")."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import MakeProxy, Upstream

RULES = """
rules:
  - name: app
    paths: ["/**"]
    allow_origins: [https://app.example.com]
"""
APP = {"Origin": "https://app.example.com"}
PATTERN = bytes(range(256)) * 256  # the upstream's /big chunk


@pytest.fixture
def error_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records (tracebacks from aiohttp.server included) logged while the test runs."""
    caplog.set_level(logging.WARNING)
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_first_server_sent_event_arrives_before_the_upstream_finishes(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await proxy.client.get("/sse?gap=1.5", headers=APP)
    assert resp.headers["Content-Type"] == "text/event-stream"
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    first_at = loop.time() - started
    second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    second_at = loop.time() - started
    assert (first, second) == (b"data: first\n\n", b"data: second\n\n")
    assert first_at < 1.0, f"first event after {first_at:.2f}s: buffered"
    assert second_at - first_at > 1.0


async def test_event_streams_hold_no_slot_of_the_upstream_pool(make_proxy: MakeProxy, upstream: Upstream) -> None:
    # One pooled connection; three streams open at once, and an ordinary request still goes straight through.
    proxy = await make_proxy(RULES, upstream_extra="  max_connections: 1\n  connect_timeout: 0.5\n")
    streams = [await proxy.client.get("/sse?gap=3", headers=APP) for _ in range(3)]
    for resp in streams:
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: first\n\n"
    plain = await proxy.client.get("/x", headers=APP)
    assert plain.status == 200, await plain.text()
    for resp in streams:
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: second\n\n"
        resp.close()


async def test_download_over_one_mib_arrives_intact(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/big?mib=3", headers=APP)
    digest, size = hashlib.sha256(), 0
    async for chunk in resp.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    assert size == 3 * 2**20
    assert digest.hexdigest() == hashlib.sha256(PATTERN * 48).hexdigest()
    assert resp.headers["Content-Length"] == str(3 * 2**20)


async def pieces(total: int, size: int = 50_000) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield bytes((start + i) % 251 for i in range(min(size, total - start)))


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_upload_over_one_mib_arrives_intact(make_proxy: MakeProxy, upstream: Upstream, chunked: bool) -> None:
    total = 3 * 2**20 + 7
    expected = hashlib.sha256(b"".join([c async for c in pieces(total)])).hexdigest()
    proxy = await make_proxy(RULES)
    headers = {**APP} if chunked else {**APP, "Content-Length": str(total)}
    resp = await proxy.client.post("/upload", data=pieces(total), headers=headers)
    assert await resp.json() == {"sha256": expected, "size": total, "chunked": chunked}
    assert proxy.exchanges[-1].bytes_in == total


async def test_client_going_away_mid_body_cancels_the_upstream_request(make_proxy: MakeProxy, upstream: Upstream,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/hang", headers=APP)
    assert await resp.content.readline() == b"started\n"
    resp.close()  # drops the connection
    assert await upstream.wait_event() == "cancelled"
    assert (await proxy.client.get("/x", headers=APP)).status == 200
    assert errors(caplog) == []


async def test_client_going_away_before_the_response_cancels_the_upstream_request(
        make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(RULES)
    with pytest.raises(asyncio.TimeoutError):
        await proxy.client.get("/hang?quiet", headers=APP, timeout=aiohttp.ClientTimeout(total=0.3))
    assert await upstream.wait_event() == "cancelled"
    assert errors(caplog) == []


async def test_upstream_dying_mid_body_aborts_the_client_connection(make_proxy: MakeProxy, upstream: Upstream,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/die", headers=APP)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    for _ in range(50):  # the observer runs when the handler returns, just after the abort
        if proxy.exchanges:
            break
        await asyncio.sleep(0.02)
    assert proxy.exchanges[-1].upstream_error == "aborted"
    assert (await proxy.client.get("/x", headers=APP)).status == 200
    assert errors(caplog) == []
    assert any("mid-body" in r.getMessage() for r in caplog.records if r.name == "corsproxy")


async def test_upstream_read_timeout_mid_body_aborts_the_client_connection(
        make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(RULES, upstream_extra="  read_timeout: 0.3\n")
    resp = await proxy.client.get("/hang", headers=APP)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 5)
    assert errors(caplog) == []
