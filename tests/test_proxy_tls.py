"""TLS on both sides, with certificates from a throwaway CA (trustme): the listener and an https upstream."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from corsproxy.testing import free_port, serve_process
from tests.conftest import MakeProxy, Upstream, echoed

RULES = """
rules:
  - name: app
    paths: ["/**"]
    allow_origins: [https://app.example.com]
"""
APP = {"Origin": "https://app.example.com"}


def trusting(pem_files: dict[str, str]) -> dict:
    """ClientSession options for a client that trusts the test CA."""
    return {"connector": aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=pem_files["ca"]))}


async def test_proxy_listens_with_tls(make_proxy: MakeProxy, upstream: Upstream, pem_files: dict[str, str]) -> None:
    listen = f"listen:\n  tls:\n    cert: {pem_files['cert']}\n    key: {pem_files['key']}\n"
    proxy = await make_proxy(RULES, extra=listen, client_kwargs=trusting(pem_files))
    assert proxy.url.startswith("https://127.0.0.1:")
    resp = await proxy.client.get("/api/x", headers=APP)
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert echoed(await resp.json())["x-forwarded-proto"] == "https"
    moved = await proxy.client.get(f"/respond?status=302&Location={upstream.url}/v1/next", allow_redirects=False)
    assert moved.headers["Location"] == f"{proxy.url}/next"


async def test_proxy_with_tls_refuses_a_client_that_does_not_trust_it(make_proxy: MakeProxy,
                                                                      pem_files: dict[str, str]) -> None:
    listen = f"listen:\n  tls:\n    cert: {pem_files['cert']}\n    key: {pem_files['key']}\n"
    proxy = await make_proxy(RULES, extra=listen)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await proxy.client.get("/api/x")


async def test_https_upstream_verified_with_ca_file(make_proxy: MakeProxy, tls_upstream: Upstream,
                                                    pem_files: dict[str, str]) -> None:
    proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1",
                             upstream_extra=f"  ca_file: {pem_files['ca']}\n")
    resp = await proxy.client.get("/api/x", headers=APP)
    assert resp.status == 200
    assert (await resp.json())["raw_path"] == "/v1/api/x"
    assert tls_upstream.count() == 1


async def test_https_upstream_without_its_ca_is_502(make_proxy: MakeProxy, tls_upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1")
    resp = await proxy.client.get("/api/x", headers=APP)
    assert resp.status == 502
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "tls" in await resp.text()
    assert proxy.exchanges[-1].upstream_error == "tls"
    assert tls_upstream.count() == 0


async def test_https_upstream_accepted_when_tls_verify_is_off(make_proxy: MakeProxy, tls_upstream: Upstream) -> None:
    proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1", upstream_extra="  tls_verify: false\n")
    resp = await proxy.client.get("/api/x", headers=APP)
    assert resp.status == 200
    assert tls_upstream.count() == 1


async def test_https_upstream_websocket(make_proxy: MakeProxy, tls_upstream: Upstream,
                                        pem_files: dict[str, str]) -> None:
    proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1",
                             upstream_extra=f"  ca_file: {pem_files['ca']}\n")
    async with proxy.client.ws_connect("/ws", headers=APP) as sock:
        await sock.send_str("over tls")
        assert await sock.receive_str(timeout=5) == "echo:over tls"


# Large bodies: over plain TCP they go socket to socket (corsproxy/splice.py), which must never happen
# when either side is TLS (that would put plaintext on an encrypted connection).
PATTERN = bytes(range(256)) * 256  # the upstream's /big chunk


@pytest.mark.parametrize("side", ["listener", "upstream"])
async def test_a_large_body_over_tls_arrives_whole_on_both_paths(make_proxy: MakeProxy, tls_upstream: Upstream,
                                                                 pem_files: dict[str, str], side: str) -> None:
    if side == "listener":
        listen = f"listen:\n  tls:\n    cert: {pem_files['cert']}\n    key: {pem_files['key']}\n"
        proxy = await make_proxy(RULES, extra=listen, client_kwargs=trusting(pem_files))
    else:
        proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1",
                                 upstream_extra=f"  ca_file: {pem_files['ca']}\n")
    for _ in range(2):  # a new connection's first request takes aiohttp's path; the next the connection-level one
        resp = await proxy.client.get("/big?mib=3", headers=APP)
        assert await resp.read() == PATTERN * 48
    assert [e.bytes_out for e in proxy.exchanges] == [3 * 2**20] * 2


async def test_serve_on_its_own_event_loop_relays_large_bodies_over_tls_on_both_sides(
        tls_upstream: Upstream, pem_files: dict[str, str], tmp_path: Path) -> None:
    """The same through a real ``corsproxy serve``: uvloop when installed (its transports, not asyncio's)."""
    port = free_port()
    config = (f"listen:\n  port: {port}\n  tls:\n    cert: {pem_files['cert']}\n    key: {pem_files['key']}\n"
              f"upstream:\n  url: {tls_upstream.url}/v1\n  ca_file: {pem_files['ca']}\nadmin: null\n{RULES}")
    with serve_process(config, tmp_path, port):
        async with aiohttp.ClientSession(**trusting(pem_files)) as session:
            for _ in range(3):
                async with session.get(f"https://127.0.0.1:{port}/big?mib=3", headers=APP) as resp:
                    assert await resp.read() == PATTERN * 48
    assert tls_upstream.count() == 3
