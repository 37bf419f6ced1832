"""A page's request fails with "CORS error"; the admin /decisions page, opened in the same real
Chromium, says why (design §5). Its screenshot is docs/decisions.png (UPDATE_SCREENSHOTS=1 writes it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from corsproxy import config as cfg
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.decisions import DecisionLog
from tests.browser.conftest import Loop, fetch, open_page, running, start_site

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "decisions.png"
RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: ["{page}"]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type]
"""


@dataclass
class Site:
    page: str
    other: str
    proxy: str
    admin: str
    upstream_seen: list[str]


async def _start() -> tuple[Site, list[web.AppRunner]]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title><p>the app", content_type="text/html")

    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response({"ok": True})

    runners = []
    for handler, route in ((page, "/"), (page, "/"), (api, "/{tail:.*}")):
        app = web.Application()
        app.router.add_route("*", route, handler)
        runners.append(await start_site(app))
    (page_runner, page_port), (other_runner, other_port), (up_runner, up_port) = runners
    page_origin = f"http://localhost:{page_port}"
    config = cfg.parse(f"upstream: {{url: 'http://127.0.0.1:{up_port}'}}\nadmin: null\n"
                       f"logging: {{access_log: false}}\n{RULES.replace('{page}', page_origin)}", "t.yaml", env={})
    log = DecisionLog()
    proxy_runner, proxy_port = await start_site(build_app(config, observers=[log.observe]))

    async def decisions() -> DecisionLog:
        return log

    admin_runner, admin_port = await start_site(build_admin(AdminState(lambda: config, CollectorRegistry(), decisions)))
    site = Site(page_origin, f"http://localhost:{other_port}", f"http://localhost:{proxy_port}",
                f"http://127.0.0.1:{admin_port}", seen)
    return site, [proxy_runner, admin_runner, up_runner, page_runner, other_runner]


@pytest.fixture(scope="module")
def site(loop: Loop) -> Iterator[Site]:
    with running(loop, _start()) as started:
        yield started


def test_decisions_page_names_the_reason_for_a_browser_cors_error(context, site: Site, tmp_path: Path):
    app = open_page(context, site.page)
    denied = fetch(app, f"{site.proxy}/api/items/7",
                   {"method": "PUT", "headers": {"Content-Type": "application/json", "X-Token": "t-1"}, "body": "{}"})
    assert denied["status"] is None and "Failed to fetch" in denied["error"]  # all the page learns
    assert fetch(app, f"{site.proxy}/api/items/7", {"method": "DELETE"})["status"] is None
    other = open_page(context, site.other)
    assert fetch(other, f"{site.proxy}/api/items")["status"] is None
    assert site.upstream_seen == ["GET"]  # preflights answered 403 by the proxy; the GET was forwarded

    admin = context.new_page()
    admin.set_viewport_size({"width": 1100, "height": 640})
    admin.goto(f"{site.admin}/decisions")
    assert admin.title() == "corsproxy: recent CORS decisions"
    reasons = admin.locator("td.reason").all_inner_texts()
    assert reasons == [f"origin {site.other} not in allow_origins (rule 'app')",
                       "method DELETE not in allow_methods (rule 'app')",
                       "x-token not in allow_headers (rule 'app')"]
    first_row = admin.locator("table.log tbody tr").last
    assert first_row.locator("td.origin").inner_text() == site.page
    assert first_row.locator("td.verdict").inner_text() == "denied:header"
    assert first_row.locator("td.method").inner_text() == "OPTIONS"
    counts = admin.locator("table.counts td:first-child").all_inner_texts()
    assert "denied:header: x-token not in allow_headers" in counts
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "decisions.png"
    admin.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000


def test_decisions_page_is_readable_on_a_phone(context, site: Site):
    app = open_page(context, site.page)
    fetch(app, f"{site.proxy}/api/x", {"method": "DELETE"})
    phone = context.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(f"{site.admin}/decisions")
    # No sideways scrolling: each decision becomes a card as wide as the screen.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    cell = phone.locator("td.reason").first
    assert cell.is_visible()
    assert cell.bounding_box()["width"] > 250
