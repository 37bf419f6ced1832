"""The HTTP edge on both ways through the proxy (the connection-level fast path and aiohttp's request path):
pipelining, and what a stop does to requests in flight."""

from __future__ import annotations

import asyncio
import json

import httptools
import pytest
from yarl import URL

from tests.conftest import MakeProxy, Upstream

PATHS = pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "aiohttp-path"])
ORIGIN = "https://app.example.com"


class Responses:
    """httptools callbacks: every response read off one connection, in order."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytes]] = []
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), b"".join(self._body)))
        self._body = []


def pipelined(i: int, kinds: int) -> tuple[bytes, int, str | None]:
    """Request ``i`` of a mixed pipeline of ``kinds`` kinds: its bytes, the status it must get, and the path the
    upstream must echo."""
    kind = i % kinds if kinds < 5 else (i * 7) % 5 % kinds
    if kind == 0:  # an allowed preflight (the proxy answers)
        return (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n"
                b"Access-Control-Request-Method: PUT\r\n\r\n", 204, None)
    if kind == 1:  # a bodiless GET, forwarded
        return b"GET /api/get?i=%d HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n" % i, 200, \
            f"/v1/api/get?i={i}"
    if kind == 2:  # a body that came with its head
        return (b"POST /api/post?i=%d HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello" % i, 200,
                f"/v1/api/post?i={i}")
    if kind == 4:  # a path never forwarded: aiohttp's path answers 400 on either (a chunked body would end the
        # connection: nothing after one is served, guard.py)
        return b"GET /api/../x?i=%d HTTP/1.1\r\nHost: p\r\n\r\n" % i, 400, None
    return (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://evil.example\r\n"  # kind 3: a denied preflight
            b"Access-Control-Request-Method: PUT\r\n\r\n", 403, None)


@PATHS
@pytest.mark.parametrize("kinds", [1, 4, 5], ids=["preflights", "all-fast-answerable", "with-aiohttp-answers"])
async def test_500_pipelined_mixed_requests_on_one_connection_are_all_answered_in_order(
        make_proxy: MakeProxy, upstream: Upstream, fast: bool, kinds: int) -> None:
    proxy = await make_proxy(fast=fast)
    requests = [pipelined(i, kinds) for i in range(500)]
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    got = Responses()
    try:
        writer.write(b"".join(data for data, _, _ in requests))
        async with asyncio.timeout(10):
            while len(got.done) < len(requests):
                data = await reader.read(2**16)
                assert data, f"connection closed after {len(got.done)} responses"
                got.parser.feed_data(data)
    finally:
        writer.close()
        await writer.wait_closed()
    assert [status for status, _ in got.done] == [status for _, status, _ in requests]
    echoed = [json.loads(body)["raw_path"] for (_, body), (_, _, path) in zip(got.done, requests, strict=True)
              if path is not None]
    assert echoed == [path for _, _, path in requests if path is not None]
