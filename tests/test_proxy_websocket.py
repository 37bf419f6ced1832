"""WebSocket upgrades through the real proxy (design §4 "Forwarding": the handshake Origin check)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from yarl import URL

from tests.conftest import MakeProxy, Upstream

RULES = """
rules:
  - name: app
    paths: ["/ws/**", "/wsclose", "/wsmirror", "/wsdie"]
    allow_origins: [https://app.example.com]
"""
APP = {"Origin": "https://app.example.com"}


async def test_websocket_from_an_allowed_origin_echoes_both_ways(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/ws/chat", headers=APP) as sock:
        await sock.send_str("hello")
        assert await sock.receive_str(timeout=5) == "echo:hello"
        await sock.send_str("again")
        assert await sock.receive_str(timeout=5) == "echo:again"
    assert upstream.count() == 1
    assert upstream.seen[0].headers["Origin"] == "https://app.example.com"
    assert upstream.seen[0].headers["Via"] == "1.1 corsproxy"
    for _ in range(50):  # the observer runs as the handler returns, just after the close handshake
        if proxy.exchanges:
            break
        await asyncio.sleep(0.02)
    assert proxy.exchanges[-1].status == 101
    assert proxy.exchanges[-1].bytes_in == len("hello") + len("again")


async def test_websockets_are_not_bounded_by_the_upstream_pool(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  max_connections: 1\n  connect_timeout: 0.5\n")
    socks = [await asyncio.wait_for(proxy.client.ws_connect("/ws/chat", headers=APP), 5) for _ in range(3)]
    for i, sock in enumerate(socks):
        await sock.send_str(str(i))
        assert await sock.receive_str(timeout=5) == f"echo:{i}"
    assert (await proxy.client.get("/x", headers=APP)).status == 200  # and an ordinary request gets through
    for sock in socks:
        await sock.close()


async def test_websocket_from_a_disallowed_origin_gets_403_and_never_reaches_the_upstream(
        make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await proxy.client.ws_connect("/ws/chat", headers={"Origin": "https://evil.test"})
    assert caught.value.status == 403
    assert caught.value.headers is not None
    assert caught.value.headers["Vary"] == "Origin"
    assert not any(k.lower().startswith("access-control-") for k in caught.value.headers)
    assert upstream.count() == 0


async def test_websocket_with_no_rule_passes_whatever_the_origin(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/ws-other", headers={"Origin": "https://evil.test"}) as sock:
        await sock.send_str("x")
        assert await sock.receive_str(timeout=5) == "echo:x"
    assert upstream.count() == 1


async def test_upstream_close_code_and_reason_reach_the_client(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/wsclose", headers=APP) as sock:
        await sock.send_str("bye")
        msg = await sock.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4001, "bye")
    # The page's answer to the close, passed back as it was: aiohttp's client answers any close with 1000.
    assert await upstream.wait_event() == "ws-closed:1000"


CLOSE_CODES = pytest.mark.parametrize(("code", "reason"), [(1000, "done"), (1001, "page left"), (3000, "app"),
                                                            (4001, "custom")], ids=["1000", "1001", "3000", "4001"])


@CLOSE_CODES
async def test_a_close_the_page_starts_reaches_the_upstream_and_its_answer_comes_back_unchanged(
        make_proxy: MakeProxy, upstream: Upstream, code: int, reason: str) -> None:
    proxy = await make_proxy(RULES)
    sock = await proxy.client.ws_connect("/wsmirror", headers=APP)
    await sock.close(code=code, message=reason.encode())
    assert await upstream.wait_event() == f"ws-got:{code}:{reason}"
    assert sock.close_code == code  # the upstream's answer to the close handshake, as it sent it


@CLOSE_CODES
async def test_a_close_the_upstream_starts_reaches_the_page_unchanged(
        make_proxy: MakeProxy, upstream: Upstream, code: int, reason: str) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect(f"/wsmirror?code={code}&reason={reason}", headers=APP) as sock:
        msg = await sock.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, code, reason)


async def test_client_close_code_reaches_the_upstream(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    sock = await proxy.client.ws_connect("/wsclose", headers=APP)
    await sock.close(code=4002, message=b"leaving")
    assert await upstream.wait_event() == "ws-closed:4002"


async def test_upstream_dropping_the_websocket_closes_the_client_with_bad_gateway(
        make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/wsdie", headers=APP) as sock:
        await sock.send_str("boom")
        msg = await sock.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.BAD_GATEWAY  # 1006 is never sent on the wire (RFC 6455 §7.4.1)
    await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_websocket_handshake_headers_are_the_upstreams_own(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/ws/x", headers={**APP, "X-Custom": "1"}) as sock:
        await sock.send_str("x")
        await sock.receive_str(timeout=5)
    seen = {k.lower(): v for k, v in upstream.seen[0].headers.items()}
    assert seen["x-custom"] == "1"
    assert seen["upgrade"].lower() == "websocket"
    assert seen["sec-websocket-key"]


async def test_websocket_the_upstream_refuses_is_502_with_cors_headers(make_proxy: MakeProxy,
                                                                       upstream: Upstream) -> None:
    proxy = await make_proxy(RULES.replace('"/wsdie"]', '"/wsdie", "/plain"]'))
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await proxy.client.ws_connect("/plain", headers=APP)  # the upstream answers 200 JSON, no upgrade
    assert caught.value.status == 502
    assert caught.value.headers is not None
    assert caught.value.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert upstream.count() == 1
    assert proxy.exchanges[-1].upstream_error == "protocol"


async def test_client_dropping_the_websocket_closes_the_upstream_with_going_away(make_proxy: MakeProxy,
                                                                                 upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(b"GET /wsclose HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.transport.abort()  # gone without a close frame
    assert await upstream.wait_event() == f"ws-closed:{aiohttp.WSCloseCode.GOING_AWAY.value}"


async def test_websocket_subprotocol_is_negotiated_with_the_upstream(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    async with proxy.client.ws_connect("/wsproto", headers=APP, protocols=("v1.chat", "v2.chat")) as sock:
        assert sock.protocol == "v2.chat"
        assert await sock.receive_str(timeout=5) == "protocol:v2.chat"


async def test_an_idle_websocket_outlives_read_timeout(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_extra="  read_timeout: 0.3\n")
    async with proxy.client.ws_connect("/ws/chat", headers=APP) as sock:
        await asyncio.sleep(1.0)  # silent for over three read_timeouts
        await sock.send_str("still here")
        assert await sock.receive_str(timeout=5) == "echo:still here"
