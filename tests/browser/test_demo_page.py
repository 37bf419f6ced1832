"""`corsproxy demo` in a real browser: each button's outcome, and the screenshot in docs/demo.png."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corsproxy import demo
from tests.browser.conftest import Loop

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
EXPECTED = {
    "direct-get": "blocked",
    "proxy-get": "allowed",
    "direct-put": "blocked",
    "proxy-put": "allowed",
    "proxy-private": "blocked",
}


@pytest.fixture(scope="module")
def running(loop: Loop):
    started = loop.run(demo.start(0))
    try:
        yield started
    finally:
        loop.run(started.stop())


def click_through(context, running: demo.Demo):
    page = context.new_page()
    page.goto(running.page_url)
    for card in EXPECTED:
        page.click(f"#{card} button")
        page.wait_for_selector(f"#{card} .outcome[data-result]")
    return page


def test_demo_page_shows_each_call_blocked_or_allowed_and_why(browser, running: demo.Demo, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1000, "height": 900}, device_scale_factor=1)
    try:
        page = click_through(context, running)
        results = {card: page.get_attribute(f"#{card} .outcome", "data-result") for card in EXPECTED}
        assert results == EXPECTED
        origin = f"http://localhost:{running.page_port}"
        text = {card: page.inner_text(f"#{card}") for card in EXPECTED}
        # 1: the simple GET reached the API, which sent no Access-Control-Allow-Origin.
        assert f'no "Access-Control-Allow-Origin: {origin}" header' in text["direct-get"]
        assert "browser → API: GET /api/notes ⇒ 200 OK" in text["direct-get"]
        # 2: readable through the proxy, which says so in the header the page shows.
        assert "Buy milk" in text["proxy-get"]
        assert f"Access-Control-Allow-Origin: {origin}" in text["proxy-get"]
        assert "then corsproxy → API: GET /api/notes ⇒ 200 OK" in text["proxy-get"]
        # 3: the API answers the preflight 405 without CORS headers; the PUT is never sent.
        assert "OPTIONS preflight" in text["direct-put"] and "never sent the PUT" in text["direct-put"]
        assert "browser → API: OPTIONS /api/notes/2 ⇒ 405 Method Not Allowed" in text["direct-put"]
        assert "PUT /api/notes/2  ⇒" not in text["direct-put"]
        # 4: corsproxy answers the preflight itself, then forwards the PUT.
        assert "browser → corsproxy: OPTIONS /api/notes/2 ⇒ 204 No Content" in text["proxy-put"]
        assert "browser → corsproxy: PUT /api/notes/2 ⇒ 200 OK" in text["proxy-put"]
        assert "Learn CORS (changed from the page)" in text["proxy-put"]
        # The API's view of a forwarded request: what corsproxy added (Host, X-Forwarded-*) apart from the browser's.
        sent = page.locator("#proxy-get .hop.forwarded details.browser-sent pre").text_content()
        added = page.locator("#proxy-get .hop.forwarded details.proxy-added pre").text_content()
        assert "X-Forwarded-For:" in added and "Host:" in added
        assert "X-Forwarded" not in sent and "Host:" not in sent and "User-Agent:" in sent
        # 5: the private rule does not allow the page; the decision header says why, and no note says otherwise.
        assert "verdict=denied:origin" in text["proxy-private"]
        assert "corsproxy adds none: rule private does not allow this page's origin" in text["proxy-private"]
        assert "adds them on the way back" not in text["proxy-private"]
        assert "revenue" not in page.inner_text("#proxy-private .outcome")
        shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        context.close()


def test_demo_page_fits_a_phone_screen(browser, running: demo.Demo, tmp_path: Path):
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    try:
        page = click_through(context, running)
        results = {card: page.get_attribute(f"#{card} .outcome", "data-result") for card in EXPECTED}
        assert results == EXPECTED
        # Nothing wider than the screen: no sideways scrolling to read a header line.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert page.evaluate("getComputedStyle(document.body).fontSize") == "16px"
        page.screenshot(path=str(tmp_path / "demo-phone.png"))
    finally:
        context.close()
