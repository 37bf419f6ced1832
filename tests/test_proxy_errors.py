"""Responses the proxy makes itself (502, 504, 413, 400) carry the CORS headers an upstream response would get."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.conftest import MakeProxy, Upstream, raw_request
from tests.test_proxy_preflight import cors_headers

APP = "https://app.example.com"
RULES = """
rules:
  - name: app
    paths: ["/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST, PUT]
    expose_headers: [X-Request-Id]
    allow_credentials: true
"""
ERROR_CORS = {
    "Access-Control-Allow-Origin": APP,
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "X-Request-Id",
    "Vary": "Origin",
}


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_head_whose_upstream_is_refused_gets_the_502s_length_but_no_body(make_proxy: MakeProxy,
                                                                                 closed_port: int) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{closed_port}/v1")
    head = f"HEAD /x HTTP/1.1\r\nHost: proxy\r\nOrigin: {APP}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client.port)
    # Keep-alive (the connection-level path), then Connection: close (aiohttp's path).
    writer.write(head + head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    answers = data.split(b"\r\n\r\n")
    assert len(answers) == 3 and answers[2] == b""  # two heads, no body bytes after either
    assert [a.split(b"\r\n")[0] for a in answers[:2]] == [b"HTTP/1.1 502 Bad Gateway"] * 2
    assert all(b"\r\nContent-Length: " in a for a in answers[:2])
    assert [(e.status, e.bytes_out, e.upstream_error) for e in proxy.exchanges] == [(502, 0, "refused")] * 2


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connect hangs (its SYN is dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


async def test_upstream_refused_is_502_with_cors_headers(make_proxy: MakeProxy, closed_port: int) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{closed_port}/v1")
    resp = await proxy.client.get("/x", headers={"Origin": APP})
    assert resp.status == 502
    assert cors_headers(resp.headers) == ERROR_CORS
    assert "refused" in await resp.text()
    assert proxy.exchanges[-1].upstream_error == "refused"


async def test_upstream_connect_timeout_is_504_with_cors_headers(make_proxy: MakeProxy, black_hole: int) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{black_hole}/v1",
                             upstream_extra="  connect_timeout: 0.3\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await proxy.client.get("/x", headers={"Origin": APP})
    assert resp.status == 504
    assert loop.time() - started < 3
    assert cors_headers(resp.headers) == ERROR_CORS
    assert proxy.exchanges[-1].upstream_error == "timeout"


async def test_websocket_upstream_connect_timeout_is_504_too(make_proxy: MakeProxy, black_hole: int) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{black_hole}/v1",
                             upstream_extra="  connect_timeout: 0.3\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.client.ws_connect("/ws", headers={"Origin": APP})
    assert refused.value.status == 504
    assert loop.time() - started < 3  # connect_timeout, not aiohttp's 5-minute default
    assert proxy.exchanges[-1].upstream_error == "timeout"


async def test_upstream_read_timeout_is_504_with_cors_headers(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  read_timeout: 0.3\n")
    resp = await proxy.client.get("/slow?s=3", headers={"Origin": APP})
    assert resp.status == 504
    assert cors_headers(resp.headers) == ERROR_CORS
    assert "timeout" in await resp.text()


async def test_declared_body_over_the_limit_is_413_before_the_upstream_is_contacted(make_proxy: MakeProxy,
                                                                                   upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, extra="limits:\n  max_body_size: 1KiB\n")
    resp = await proxy.client.post("/upload", data=b"x" * 1025, headers={"Origin": APP})
    assert resp.status == 413
    assert cors_headers(resp.headers) == ERROR_CORS
    assert upstream.count() == 0
    ok = await proxy.client.post("/upload", data=b"x" * 1024, headers={"Origin": APP})
    assert (await ok.json())["size"] == 1024


async def chunks(count: int, size: int = 2**14) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * size
        await asyncio.sleep(0.005)


async def test_chunked_body_passing_the_limit_is_413_and_aborts_the_upstream_request(
        make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, extra="limits:\n  max_body_size: 64KiB\n")
    resp = await proxy.client.post("/upload", data=chunks(16), headers={"Origin": APP})
    assert resp.status == 413
    assert cors_headers(resp.headers) == ERROR_CORS
    assert "max_body_size" in await resp.text()
    assert upstream.count() == 1
    assert (await upstream.wait_event()).startswith("body-aborted:")
    assert proxy.exchanges[-1].status == 413


async def test_chunked_body_under_the_limit_passes(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, extra="limits:\n  max_body_size: 64KiB\n")
    resp = await proxy.client.post("/upload", data=chunks(4), headers={"Origin": APP})
    body = await resp.json()
    assert body == {"sha256": body["sha256"], "size": 4 * 2**14, "chunked": True}


def _chunked_post(body: bytes) -> bytes:
    """A chunked POST to /upload, head and whole body in one piece (they reach the proxy together)."""
    return (b"POST /upload HTTP/1.1\r\nHost: proxy\r\nOrigin: " + APP.encode() +
            b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)


async def test_chunked_body_over_the_limit_that_came_with_the_head_never_reaches_the_upstream(
        make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, extra="limits:\n  max_body_size: 1KiB\n")
    resp = await raw_request(proxy.url, _chunked_post(b"401\r\n" + b"x" * 1025 + b"\r\n0\r\n\r\n"))
    assert resp.status == 413 and b"max_body_size" in resp.body
    assert cors_headers(resp.headers) == ERROR_CORS
    assert upstream.count() == 0
    ok = await raw_request(proxy.url, _chunked_post(b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"))
    assert json.loads(ok.body) == {"sha256": hashlib.sha256(b"x" * 1024).hexdigest(), "size": 1024, "chunked": True}


async def test_chunked_body_that_came_with_the_head_is_forwarded_framed(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    for body, data in [(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"), (b"0\r\n\r\n", b"")]:
        resp = await raw_request(proxy.url, _chunked_post(body))
        assert resp.status == 200
        assert json.loads(resp.body) == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                         "chunked": True}


@pytest.mark.parametrize("path", ["/public/..%2Fadmin", "/public/%2e%2e/admin", "/a/./b", "/a/%2E/b", "/x/..\\y"],
                         ids=["encoded-slash", "encoded-dots", "dot", "encoded-dot", "backslash"])
async def test_dot_segment_path_is_400_and_never_forwarded(make_proxy: MakeProxy, upstream: Upstream,
                                                           path: str) -> None:
    proxy = await make_proxy(RULES)
    request = f"GET {path} HTTP/1.1\r\nHost: proxy\r\nOrigin: {APP}\r\nConnection: close\r\n\r\n"
    resp = await raw_request(proxy.url, request.encode())
    assert resp.status == 400
    assert cors_headers(resp.headers) == ERROR_CORS
    assert b"never forwarded" in resp.body
    assert upstream.count() == 0


@pytest.mark.parametrize("base", ["/v1", ""], ids=["with-base-path", "without-base-path"])
async def test_absolute_form_target_is_400_and_never_forwarded(make_proxy: MakeProxy, upstream: Upstream,
                                                              base: str) -> None:
    strict = RULES.replace("allow_credentials: true", "allow_credentials: true\n    disallowed_origin: reject")
    proxy = await make_proxy(strict, upstream_url=upstream.url + base)
    request = b"GET http://proxy.test/x HTTP/1.1\r\nHost: p\r\nOrigin: https://evil.test\r\nConnection: close\r\n\r\n"
    resp = await raw_request(proxy.url, request)
    assert resp.status == 400
    assert b"origin-form" in resp.body
    assert upstream.count() == 0


async def test_chunked_body_passing_the_limit_after_the_response_started_closes_the_connection(
        make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    proxy = await make_proxy(RULES, extra="limits:\n  max_body_size: 64KiB\n")
    resp = await proxy.client.post("/early", data=chunks(16), headers={"Origin": APP})
    assert resp.status == 200  # the upstream answered before the body was complete
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(resp.read(), 5)
    assert (await upstream.wait_event()).startswith("body-aborted:")
    assert proxy.exchanges[-1].upstream_error is None  # the client's doing, not the upstream's
    assert any("max_body_size" in r.getMessage() for r in caplog.records if r.name == "corsproxy")





async def test_waiting_for_a_free_upstream_connection_is_bounded_by_connect_timeout(make_proxy: MakeProxy,
                                                                                   upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  max_connections: 1\n  connect_timeout: 0.3\n")
    stream = await proxy.client.get("/hang", headers={"Origin": APP})  # holds the only connection
    assert await stream.content.readline() == b"started\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await proxy.client.get("/x", headers={"Origin": APP})
    assert resp.status == 504
    assert loop.time() - started < 3
    assert cors_headers(resp.headers) == ERROR_CORS
    stream.close()


SERVED = [
    pytest.param(b"OPTIONS /x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n"
                 b"Access-Control-Request-Method: PUT\r\n\r\n", 204, id="preflight-at-the-connection"),
    pytest.param(b"OPTIONS /x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n"
                 b"Access-Control-Request-Method: PUT\r\nConnection: close\r\n\r\n", 204, id="preflight-by-aiohttp"),
    pytest.param(b"GET /a/../b HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n", 400, id="bad-path"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: p\r\n\r\n", 502, id="refused-at-the-connection"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n", 502, id="refused-by-aiohttp"),
]


@pytest.mark.parametrize(("request_bytes", "status"), SERVED)
async def test_responses_the_proxy_makes_say_server_corsproxy_with_no_versions(
        make_proxy: MakeProxy, closed_port: int, request_bytes: bytes, status: int) -> None:
    proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{closed_port}")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client.port)
    try:
        writer.write(request_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    lines = head.decode().split("\r\n")
    assert lines[0].split(" ")[1] == str(status)
    assert [line for line in lines if line.lower().startswith("server:")] == ["Server: corsproxy"]


async def test_a_relayed_response_keeps_the_upstreams_server_header(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/respond", params={"Server": "legacy-api/2"})
    assert resp.headers.getall("Server") == ["legacy-api/2"]
