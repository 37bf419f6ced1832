"""A reload that changes the upstream pool's settings takes effect for the next request on both paths, HTTP and
WebSocket (README "Reload": one table of what reloads), and the warning names only what waits for a restart."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from corsproxy import config as cfg
from corsproxy.metrics import ConfigState
from corsproxy.server import Reloader
from tests.conftest import MakeProxy, Upstream
from tests.test_proxy_tls import RULES

APP = {"Origin": "https://app.example.com"}


async def test_a_reloaded_read_timeout_applies_to_the_next_request(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(upstream_extra="  read_timeout: 5\n")
    assert (await proxy.client.get("/slow?s=0.6")).status == 200
    proxy.reload(proxy.text.replace("read_timeout: 5", "read_timeout: 0.2"))
    assert (await proxy.client.get("/slow?s=0.6")).status == 504
    proxy.reload(proxy.text.replace("read_timeout: 0.2", "read_timeout: 5"))
    assert (await proxy.client.get("/slow?s=0.6")).status == 200


async def test_a_reloaded_tls_verify_applies_to_http_and_websockets(make_proxy: MakeProxy, tls_upstream: Upstream,
                                                                    pem_files: dict[str, str]) -> None:
    proxy = await make_proxy(RULES, upstream_url=tls_upstream.url + "/v1",
                             upstream_extra="  tls_verify: false\n")

    async def outcome() -> tuple[int, int]:
        http = (await proxy.client.get("/api/x", headers=APP)).status
        try:
            async with proxy.client.ws_connect("/ws/x", headers=APP) as sock:
                await sock.send_str("hi")
                ws = 101 if await sock.receive_str(timeout=5) == "echo:hi" else 0
        except aiohttp.WSServerHandshakeError as exc:
            ws = exc.status
        return http, ws

    assert await outcome() == (200, 101)
    proxy.reload(proxy.text.replace("tls_verify: false", "tls_verify: true"))  # the test CA is not trusted
    assert await outcome() == (502, 502)
    proxy.reload(proxy.text.replace("tls_verify: true", f"ca_file: {pem_files['ca']}"))
    assert await outcome() == (200, 101)


BASE = ("listen: {port: 8080}\nupstream: {url: 'http://127.0.0.1:9/v1', read_timeout: 60}\n"
        "rules:\n  - allow_origins: ['*']\n")


@pytest.mark.parametrize(("change", "warned"), [
    (("read_timeout: 60", "read_timeout: 5, max_connections: 7, tls_verify: false"), None),
    (("port: 8080", "port: 8081"), "listen.port"),
    (("listen: {port: 8080}", "listen: {port: 8080, drain_timeout: 3}"), None),
], ids=["pool-settings-reload", "listen-port-waits-for-a-restart", "drain-timeout-reloads"])
def test_the_reload_warning_names_exactly_what_waits_for_a_restart(
        caplog: pytest.LogCaptureFixture, change: tuple[str, str], warned: str | None) -> None:
    current = [cfg.parse(BASE, "c.yaml", env={})]
    reloader = Reloader(lambda: cfg.parse(BASE.replace(*change), "c.yaml", env={}), ConfigState(""),
                        lambda new: current.__setitem__(0, new), lambda: current[0])
    with caplog.at_level(logging.WARNING, logger="corsproxy"):
        assert reloader("SIGHUP")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([] if warned is None else [f"reload: {warned} changed; that takes effect on restart only"])
