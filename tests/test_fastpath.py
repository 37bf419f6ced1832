"""The connection-level answers (guard fast_answer + fastpath.py): answered preflights, bodiless GET/HEAD.

It must give exactly what the request/response path gives, keep pipelined answers in order, and
leave everything it does not answer to the normal path.
"""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from tests.conftest import MakeProxy, Proxy, Upstream

ORIGIN = "https://app.example.com"
PREFLIGHT = (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n"
             b"Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type\r\n\r\n")
DENIED = (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://evil.example.net\r\n"
          b"Access-Control-Request-Method: PUT\r\n\r\n")
GET = b"GET /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n"
POST = b"POST /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\nContent-Length: 2\r\n\r\nhi"


def _aiohttp_requests(proxy: Proxy) -> int:
    """Requests aiohttp's own loop has taken on (the fast path takes none)."""
    server = proxy.client.server.runner.server
    assert server is not None
    return server.requests_count


async def _exchange(url: str, data: bytes, answers: int) -> list[bytes]:
    """Write ``data`` at once on one keep-alive connection; read ``answers`` responses (heads)."""
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    heads = []
    try:
        writer.write(data)
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if not data.startswith(b"HEAD"):  # a HEAD answer has a Content-Length but no body
                await asyncio.wait_for(reader.readexactly(length), 5)
            heads.append(head)
    finally:
        writer.close()
        await writer.wait_closed()
    return heads


async def test_preflights_and_bodiless_gets_make_no_aiohttp_request_but_are_observed(make_proxy: MakeProxy,
                                                                                     upstream: Upstream) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.options("/api/x", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"})
    assert resp.status == 204
    resp = await proxy.client.get("/api/x", headers={"Origin": ORIGIN})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert _aiohttp_requests(proxy) == 0  # both answered on the connection
    resp = await proxy.client.post("/api/x", data=b"body", headers={"Origin": ORIGIN})
    assert resp.status == 200 and _aiohttp_requests(proxy) == 1  # a body takes aiohttp's path
    assert [(e.method, e.status, e.decision.verdict) for e in proxy.exchanges] == [
        ("OPTIONS", 204, "allowed"), ("GET", 200, "allowed"), ("POST", 200, "allowed")]
    assert upstream.count("OPTIONS") == 0 and upstream.count("GET") == 1


async def test_pipelined_requests_are_answered_in_order(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy()
    # fast, fast (relayed), normal (a body), fast, fast, normal, fast (relayed): one write, answers in order
    heads = await _exchange(proxy.url, PREFLIGHT + GET + POST + DENIED + PREFLIGHT + POST + GET.replace(
        b"/api/x", b"/api/slow?s=0.2"), 7)
    assert [h.split(b"\r\n")[0] for h in heads] == [
        b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden",
        b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b"Access-Control-Allow-Origin: https://app.example.com" in heads[0]
    assert b"Access-Control-Allow-Origin" not in heads[3]
    assert [r.method for r in upstream.seen] == ["GET", "POST", "POST", "GET"]


@pytest.mark.parametrize("request_bytes", [DENIED, PREFLIGHT, GET, GET.replace(b"GET", b"HEAD")],
                         ids=["denied-preflight", "preflight", "get", "head"])
async def test_fast_and_normal_paths_give_the_same_headers(make_proxy: MakeProxy, request_bytes: bytes) -> None:
    proxy = await make_proxy(extra="debug:\n  decision_header: true\n")
    fast = (await _exchange(proxy.url, request_bytes, 1))[0]
    # HTTP/1.0 closes after the answer, so the fast path leaves it to aiohttp's request path.
    assert _aiohttp_requests(proxy) == 0
    slow = (await _exchange(proxy.url, request_bytes.replace(b"HTTP/1.1", b"HTTP/1.0"), 1))[0]
    assert _aiohttp_requests(proxy) == 1

    def lines(head: bytes) -> set[bytes]:
        skip = (b"date:", b"http/", b"connection:", b"keep-alive:", b"x-forwarded", b"via:")
        return {line for line in head.split(b"\r\n") if line and not line.lower().startswith(skip)}

    assert lines(fast) == lines(slow)
    assert b"CORS-Decision: rule=app; verdict=" in fast


async def test_an_http10_keep_alive_get_takes_aiohttp_path(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    request = GET.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
    head = (await _exchange(proxy.url, request, 1))[0]
    assert head.startswith(b"HTTP/1.0 200 OK") and b"Connection: keep-alive" in head
    assert _aiohttp_requests(proxy) == 1
