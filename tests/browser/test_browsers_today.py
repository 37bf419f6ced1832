"""What today's Chromium does through the proxy (issue 15): a COEP ``require-corp`` page embeds a no-cors
``<img>`` only with ``cross_origin_resource_policy``, and a read-only rule keeps a page from reading the
answer to a simple cross-site ``POST`` (design §3, §4)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from corsproxy import config as cfg
from corsproxy.app import build_app
from corsproxy.server import make_runner
from tests.browser.conftest import Loop, fetch, open_page, running, start_site

pytestmark = pytest.mark.browser


def png() -> bytes:
    """A 1x1 PNG: something an <img> can really decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


RULES = """
rules:
  - name: corp
    paths: ["/corp/**"]
    allow_origins: ["*"]
    cross_origin_resource_policy: cross-origin
  - name: plain
    paths: ["/plain/**"]
    allow_origins: ["*"]
  - name: read-only
    paths: ["/ro/**"]
    allow_origins: ["{page}"]
    allow_methods: [GET, HEAD]
  - name: read-only-reject
    paths: ["/ro-reject/**"]
    allow_origins: ["{page}"]
    allow_methods: [GET, HEAD]
    disallowed_origin: reject
"""


@dataclass
class Site:
    page: str
    proxy: str
    seen: list[str]  # "METHOD /path" that reached the upstream


async def _start() -> tuple[Site, list[web.AppRunner]]:
    seen: list[str] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.path.endswith(".png"):
            return web.Response(body=png(), content_type="image/png")
        return web.Response(text="secret answer")

    async def page(request: web.Request) -> web.Response:
        # COEP require-corp: a cross-origin no-cors resource loads only when it carries CORP.
        return web.Response(text="<!doctype html><meta charset=utf-8><title>isolated</title><p>isolated",
                            content_type="text/html", headers={"Cross-Origin-Embedder-Policy": "require-corp",
                                                                 "Cross-Origin-Opener-Policy": "same-origin"})

    up_app, page_app = web.Application(), web.Application()
    up_app.router.add_route("*", "/{tail:.*}", upstream)
    page_app.router.add_get("/", page)
    up_runner, up_port = await start_site(up_app)
    page_runner, page_port = await start_site(page_app)
    page_origin = f"http://localhost:{page_port}"
    config = cfg.parse(f"upstream: {{url: 'http://127.0.0.1:{up_port}'}}\nadmin: null\nlogging: {{access_log: false}}"
                       f"\n{RULES.replace('{page}', page_origin)}", "t.yaml", env={})
    app = build_app(config)
    proxy_runner, proxy_port = await start_site(app, make_runner(app, config))
    return (Site(page_origin, f"http://localhost:{proxy_port}", seen), [proxy_runner, page_runner, up_runner])


@pytest.fixture(scope="module")
def site(loop: Loop) -> Iterator[Site]:
    with running(loop, _start()) as started:
        yield started


LOAD_IMG = """
(src) => new Promise((resolve) => {
  const img = new Image();
  img.onload = () => resolve("loaded " + img.naturalWidth + "x" + img.naturalHeight);
  img.onerror = () => resolve("blocked");
  img.src = src;
})
"""


@pytest.mark.parametrize(("rule", "expected"), [
    pytest.param("corp", "loaded 1x1", id="with-cross-origin-resource-policy"),
    pytest.param("plain", "blocked", id="without"),
])
def test_a_require_corp_page_embeds_an_image_through_the_proxy_only_with_cross_origin_resource_policy(
        context, site: Site, rule: str, expected: str):
    page = open_page(context, site.page)
    assert page.evaluate("self.crossOriginIsolated") is True  # COEP (with COOP) is in force on this page
    assert page.evaluate(LOAD_IMG, f"{site.proxy}/{rule}/pixel.png") == expected
    assert f"GET /{rule}/pixel.png" in site.seen  # the upstream answered; the browser decided on CORP


def test_a_get_head_rule_keeps_a_page_from_reading_a_simple_cross_site_post(context, site: Site):
    page = open_page(context, site.page)
    assert fetch(page, f"{site.proxy}/ro/x")["body"] == "secret answer"
    site.seen.clear()
    # A form-like POST is "simple": the browser sends it without a preflight and only then checks the answer.
    got = fetch(page, f"{site.proxy}/ro/x", {"method": "POST", "body": "amount=1000",
                                              "headers": {"Content-Type": "application/x-www-form-urlencoded"}})
    assert got["status"] is None and "Failed to fetch" in got["error"]
    assert site.seen == ["POST /ro/x"]  # disallowed_origin: forward: sent, but not readable
    rejected = fetch(page, f"{site.proxy}/ro-reject/x", {"method": "POST", "body": "amount=1000"})
    assert rejected["status"] is None and "Failed to fetch" in rejected["error"]
    assert site.seen == ["POST /ro/x"]  # reject: answered 403 by the proxy, the upstream never saw it
