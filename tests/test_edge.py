"""The HTTP edge on both ways through the proxy (the connection-level fast path and aiohttp's request path):
pipelining, and what a stop does to requests in flight."""

from __future__ import annotations

import asyncio
import json

import httptools
import pytest
from yarl import URL

from tests.conftest import APP_RULE, MakeProxy, Upstream

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


@pytest.mark.parametrize("kinds", [1, 4, 5], ids=["preflights", "all-fast-answerable", "with-aiohttp-answers"])
async def test_500_pipelined_mixed_requests_on_one_connection_are_all_answered_in_order(
        make_proxy: MakeProxy, upstream: Upstream, kinds: int) -> None:
    proxy = await make_proxy()
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


def header_list(head: bytes) -> list[tuple[str, str]]:
    """A response head's header fields in order, duplicates included, as sent (Date aside: it is the clock)."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if line]
    return [(name, value) for name, value in fields if name.lower() != "date"]


PARITY = [
    b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: PUT\r\n"
    b"Access-Control-Request-Headers: content-type\r\n\r\n",
    b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: PUT\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"HEAD /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\nContent-Length: 2\r\n\r\nhi",
    b"GET /cookies HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /respond?X-Dup=1&X-Dup=2&Vary=Accept HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /cors HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /hop HTTP/1.1\r\nHost: p\r\n\r\n",
    b"GET /notmodified HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /status/204 HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /redirect HTTP/1.1\r\nHost: p\r\n\r\n",
    b"GET /sse?gap=0 HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /big?mib=1 HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",
    b"GET /slow?s=1 HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n",  # 504 (read_timeout)
]


async def _head_of(url: str, request: bytes) -> bytes:
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("proxy_path", ["both"], indirect=True)
async def test_both_paths_send_the_same_header_lists_in_the_same_order(make_proxy: MakeProxy) -> None:
    extra, up = "debug:\n  decision_header: true\n", "  read_timeout: 0.5\n"
    rules = APP_RULE.replace('paths: ["/api/**"]', 'paths: ["/**"]')
    proxies = [await make_proxy("rules:" + rules, extra=extra, upstream_extra=up, fast=fast) for fast in (True, False)]
    for request in PARITY:
        fast, aiohttp_path = [header_list(await _head_of(proxy.url, request)) for proxy in proxies]
        assert fast == aiohttp_path, request
    fast_server, aiohttp_server = (proxy.client.server.runner.server for proxy in proxies)
    assert fast_server.requests_count < len(PARITY) <= aiohttp_server.requests_count  # both ways were taken
