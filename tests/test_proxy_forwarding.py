"""What the proxy changes on the way through, and what it must not (design §4 "Forwarding")."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import quote

import pytest

from tests.conftest import GZIPPED, MakeProxy, Upstream, echoed, raw_request

RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
"""
TRUSTED = "listen:\n  trusted_proxies: [127.0.0.1/32]\n"
HOP_NAMES = {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
             "transfer-encoding", "x-hop-req"}


def raw_get(path: str, *headers: str, method: str = "GET", host: str = "proxy.test:8080") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def echo_via_raw(proxy, path: str, *headers: str, host: str = "proxy.test:8080") -> dict:
    resp = await raw_request(proxy.url, raw_get(path, *headers, host=host))
    assert resp.status == 200, resp.body
    return json.loads(resp.body)


async def test_hop_by_hop_request_headers_are_stripped(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    seen = echoed(await echo_via_raw(
        proxy, "/api/x", "Connection: X-Hop-Req", "X-Hop-Req: 1", "Keep-Alive: timeout=5", "TE: trailers",
        "Trailer: X-T", "Upgrade: h2c", "Proxy-Authorization: Basic eDp5", "Proxy-Connection: keep-alive",
        "X-End: kept"))
    assert HOP_NAMES.isdisjoint(seen), seen
    assert seen["x-end"] == "kept"


async def test_hop_by_hop_response_headers_are_stripped(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, raw_get("/hop"))
    assert resp.status == 200
    names = {name.lower() for name in resp.headers}
    assert "x-hop" not in names and "keep-alive" not in names and "upgrade" not in names
    assert resp.headers.getall("Connection", []) in ([], ["close"])  # the proxy's own, for this hop
    assert resp.headers["X-End"] == "1"
    assert resp.body == b"hop"


async def test_via_is_appended_to_the_clients(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    seen = echoed(await (await proxy.client.get("/api/x", headers={"Via": "1.1 corsproxy"})).json())
    assert seen["via"] == "1.1 corsproxy, 1.1 corsproxy"  # a second corsproxy in a chain is a second hop


async def test_forwarded_headers_are_overwritten_for_an_untrusted_client(make_proxy: MakeProxy,
                                                                         upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    seen = echoed(await echo_via_raw(proxy, "/api/x", "X-Forwarded-For: 203.0.113.9",
                                     "X-Forwarded-Proto: https", "X-Forwarded-Host: bank.example"))
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "proxy.test:8080"
    assert seen["via"] == "1.1 corsproxy"
    assert seen["host"] == upstream.url.removeprefix("http://")


async def test_forwarded_headers_are_kept_for_a_trusted_proxy(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES, extra=TRUSTED)
    seen = echoed(await echo_via_raw(proxy, "/api/x", "X-Forwarded-For: 203.0.113.9",
                                     "X-Forwarded-Proto: https", "X-Forwarded-Host: app.example"))
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "app.example"


async def test_forwarded_headers_off_still_sends_via(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  forwarded_headers: false\n")
    seen = echoed(await echo_via_raw(proxy, "/api/x"))
    assert seen["via"] == "1.1 corsproxy"
    assert not {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} & set(seen)


async def test_host_header_preserve_passes_the_clients_host(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  host_header: preserve\n")
    seen = echoed(await echo_via_raw(proxy, "/api/x", host="api.public.example"))
    assert seen["host"] == "api.public.example"


ODD_PATHS = [
    "/api/a%2Fb/c",
    "/api/%7e%7E/%e2%82%ac/%C3%A9;p=1",
    "/api//double//slash/",
    "/api/x?q=%20&q=a+b&&z=%2F&flag",
    "/api/x?%zz=1&u=%E2%82",
    "/plain?a",
    "/api/x?",  # an empty query is kept too
]


@pytest.mark.parametrize("path", ODD_PATHS)
async def test_raw_path_and_query_reach_the_upstream_byte_for_byte(make_proxy: MakeProxy, path: str) -> None:
    proxy = await make_proxy(RULES)
    assert (await echo_via_raw(proxy, path))["raw_path"] == "/v1" + path


async def test_gzip_body_passes_byte_for_byte(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, raw_get("/gzip", "Accept-Encoding: gzip"))
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Length"] == str(len(GZIPPED))
    assert resp.body == GZIPPED


async def test_the_proxy_adds_no_request_header_but_host_via_and_forwarded(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    seen = echoed(await echo_via_raw(proxy, "/api/x"))  # no Accept, Accept-Encoding, User-Agent
    assert set(seen) == {"host", "via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


@asynccontextmanager
async def canned_upstream(response: bytes) -> AsyncIterator[str]:
    """An upstream that answers every connection with ``response`` as written, then closes: its URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def through_canned(make_proxy: MakeProxy) -> Callable[..., object]:
    async def run(upstream_response: bytes, request: bytes):
        async with canned_upstream(upstream_response) as url:
            proxy = await make_proxy(RULES, upstream_url=url)
            return await raw_request(proxy.url, request)

    return run


async def test_expect_100_continue_is_answered_by_the_proxy_not_passed_on(make_proxy: MakeProxy) -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        body = await asyncio.wait_for(reader.readexactly(5), 5)  # never sends 100 Continue
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        proxy = await make_proxy(RULES, upstream_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        resp = await proxy.client.post("/api/x", data=b"hello", expect100=True)
        assert resp.status == 200
        assert await resp.read() == b"hello"
    finally:
        server.close()
        await server.wait_closed()
    assert b"expect:" not in heads[0].lower()


async def test_a_body_without_content_type_gets_none_from_the_proxy(through_canned) -> None:
    resp = await through_canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<b>x!", raw_get("/x"))
    assert resp.body == b"<b>x!"
    assert "Content-Type" not in resp.headers
    assert resp.headers["Content-Length"] == "5"


async def test_a_body_read_until_close_is_relayed_chunked(through_canned) -> None:
    resp = await through_canned(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", raw_get("/x"))
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.body == b"b\r\nuntil close\r\n0\r\n\r\n"


async def test_204_with_content_length_from_the_upstream_has_none_from_the_proxy(through_canned) -> None:
    resp = await through_canned(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n", raw_get("/x"))
    assert resp.status == 204
    assert "Content-Length" not in resp.headers and "Content-Type" not in resp.headers
    assert resp.headers["X-A"] == "1"
    assert resp.body == b""


async def test_head_answered_chunked_by_the_upstream_has_no_body(through_canned) -> None:
    resp = await through_canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n",
                                raw_get("/x", method="HEAD"))
    assert resp.status == 200
    assert "Transfer-Encoding" not in resp.headers
    assert resp.body == b""


async def test_every_set_cookie_is_kept(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, raw_get("/cookies"))
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def location_of(proxy, upstream_location: str, name: str = "Location", *headers: str) -> str:
    resp = await raw_request(proxy.url, raw_get(f"/respond?status=302&{name}={quote(upstream_location, safe='')}",
                                                *headers))
    assert resp.status == 302
    return resp.headers[name]


async def test_location_at_the_upstream_is_rewritten_to_the_proxy(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    assert await location_of(proxy, upstream.url + "/v1/items/7?x=1#f") == "http://proxy.test:8080/items/7?x=1#f"
    assert await location_of(proxy, upstream.url + "/v1") == "http://proxy.test:8080/"
    assert await location_of(proxy, upstream.url + "/v1/c", "Content-Location") == "http://proxy.test:8080/c"


async def test_location_uses_a_trusted_forwarded_proto(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, extra=TRUSTED)
    got = await location_of(proxy, upstream.url + "/v1/a", "Location", "X-Forwarded-Proto: https")
    assert got == "https://proxy.test:8080/a"


async def test_location_elsewhere_or_outside_the_base_path_is_left_alone(make_proxy: MakeProxy,
                                                                        upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    for target in ["https://elsewhere.example/v1/x", upstream.url + "/v10/x", upstream.url + "/other",
                   "/v1/relative", upstream.url.replace("http:", "https:") + "/v1/x"]:
        assert await location_of(proxy, target) == target


async def test_location_left_alone_when_rewrite_is_off(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  rewrite_location: false\n")
    assert await location_of(proxy, upstream.url + "/v1/x") == upstream.url + "/v1/x"


async def test_redirects_are_passed_not_followed(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/redirect", allow_redirects=False)
    assert resp.status == 302
    assert upstream.count() == 1


async def test_head_has_headers_and_no_body(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    head = await raw_request(proxy.url, raw_get("/gzip", method="HEAD"))
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(GZIPPED))
    assert "Transfer-Encoding" not in head.headers


async def test_204_from_the_upstream_has_no_body_and_no_length(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, raw_get("/status/204"))
    assert resp.status == 204
    assert resp.body == b""
    assert "Content-Length" not in resp.headers and "Transfer-Encoding" not in resp.headers


async def test_304_from_the_upstream_has_no_body(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, raw_get("/notmodified", "If-None-Match: \"v1\""))
    assert resp.status == 304
    assert resp.body == b""
    assert resp.headers["ETag"] == '"v1"'
    assert "Transfer-Encoding" not in resp.headers


STORAGE_RULES = """
rules:
  - name: app
    paths: ["/**"]
    allow_origins: [https://app.example.com]
    allow_credentials: true
"""


@pytest.mark.parametrize("value", ["none", "inactive", "active"])
async def test_sec_fetch_storage_access_reaches_the_upstream_untouched(make_proxy: MakeProxy, value: str) -> None:
    # Storage Access headers (Chrome 133+): the browser says whether the page holds unpartitioned cookie access.
    proxy = await make_proxy(STORAGE_RULES)
    resp = await proxy.client.get("/api/x", headers={"Origin": "https://app.example.com",
                                                     "Sec-Fetch-Storage-Access": value})
    assert echoed(await resp.json())["sec-fetch-storage-access"] == value


async def test_activate_storage_access_reaches_the_client_untouched(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(STORAGE_RULES)
    sent = {"Activate-Storage-Access": 'retry; allowed-origin="https://app.example.com"'}
    for extra in ({}, {"Connection": "close"}):  # the connection-level path and aiohttp's
        resp = await proxy.client.get("/respond", params=sent, headers={"Origin": "https://app.example.com", **extra})
        assert resp.headers.getall("Activate-Storage-Access") == [sent["Activate-Storage-Access"]]
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_encoded_request_body_passes_byte_for_byte(make_proxy: MakeProxy, upstream: Upstream,
                                                           framing: str) -> None:
    proxy = await make_proxy()
    body = gzip.compress(b"hello world " * 100)
    data = body if framing == "length" else _chunks(body)
    resp = await proxy.client.post("/x", data=data, headers={"Content-Encoding": "gzip"})
    seen = await resp.json()
    assert (seen["body_len"], seen["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert ["Content-Encoding", "gzip"] in seen["headers"]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data[:10]
    yield data[10:]
