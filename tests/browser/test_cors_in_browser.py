"""What a real browser lets a page read through the proxy: the 13 scenarios of issue 4."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.browser.conftest import BIG_SIZE, Loop, Stack, big_body, fetch, open_page

pytestmark = pytest.mark.browser

PUT_INIT = {"method": "PUT", "headers": {"Content-Type": "application/json", "X-Token": "t-1"},
            "body": json.dumps({"name": "ada", "n": 1})}


def test_simple_get_from_allowed_origin_is_readable(context, stack: Stack):
    page = open_page(context, stack.page)
    got = fetch(page, f"{stack.proxy}/api/items?q=1")
    assert got["error"] is None
    assert got["status"] == 200
    assert json.loads(got["body"])["path"] == "/v1/api/items"
    assert stack.upstream.methods() == ["GET"]


def test_simple_get_from_disallowed_origin_rejects(context, stack: Stack):
    page = open_page(context, stack.other)
    got = fetch(page, f"{stack.proxy}/api/items")
    assert got["status"] is None
    assert "Failed to fetch" in got["error"]
    # disallowed_origin: forward — the request went through, the browser hid the answer.
    assert stack.upstream.methods() == ["GET"]


def test_put_with_custom_header_and_json_is_preflighted_then_forwarded(context, stack: Stack):
    page = open_page(context, stack.page)
    got = fetch(page, f"{stack.proxy}/api/items/7", PUT_INIT)
    assert got["error"] is None and got["status"] == 200
    assert stack.preflights("/api/items/7") == 1
    # The proxy answered the preflight itself: only the PUT reached the upstream.
    assert stack.upstream.methods() == ["PUT"]
    seen = stack.upstream.seen[0]
    assert seen["headers"]["x-token"] == "t-1"
    assert seen["headers"]["content-type"] == "application/json"
    assert json.loads(seen["body"]) == {"name": "ada", "n": 1}


def test_delete_from_disallowed_origin_is_rejected_and_never_reaches_upstream(context, stack: Stack):
    page = open_page(context, stack.other)
    got = fetch(page, f"{stack.proxy}/api/items/7", {"method": "DELETE"})
    assert got["status"] is None and "Failed to fetch" in got["error"]
    assert stack.preflights("/api/items/7") == 1
    assert [ex.status for ex in stack.exchanges] == [403]
    assert stack.upstream.seen == []


def test_exposed_header_is_readable_and_other_headers_are_not(context, stack: Stack):
    page = open_page(context, stack.page)
    got = fetch(page, f"{stack.proxy}/api/items")
    assert got["status"] == 200
    assert got["headers"]["x-request-id"] == "req-42"
    assert "x-secret" not in got["headers"]
    # The upstream's own Access-Control-Allow-Origin was replaced, and it is not exposed anyway.
    assert "access-control-allow-origin" not in got["headers"]
    assert set(got["headers"]) == {"content-type", "content-length", "x-request-id"}


def test_cookie_set_through_proxy_is_sent_back_with_credentials(context, stack: Stack):
    page = open_page(context, stack.page)
    first = fetch(page, f"{stack.proxy}/api/cookie/set", {"credentials": "include"})
    assert first["status"] == 200 and first["body"] == "cookie set"
    second = fetch(page, f"{stack.proxy}/api/whoami", {"credentials": "include"})
    assert second["status"] == 200
    assert json.loads(second["body"])["headers"]["cookie"] == "session=s3cret"
    without = fetch(page, f"{stack.proxy}/api/whoami", {"credentials": "omit"})
    assert "cookie" not in json.loads(without["body"])["headers"]


def test_star_rule_is_readable_from_any_origin_without_credentials(context, stack: Stack):
    for origin in (stack.page, stack.other):
        page = open_page(context, origin)
        got = fetch(page, f"{stack.proxy}/open/status")
        assert got["status"] == 200, origin
        assert json.loads(got["body"])["path"] == "/v1/open/status"
    # A literal "*" never covers a credentialed request: the browser refuses it.
    refused = fetch(page, f"{stack.proxy}/open/status", {"credentials": "include"})
    assert refused["status"] is None and "Failed to fetch" in refused["error"]


def test_upstream_down_page_reads_502(context, stack: Stack):
    page = open_page(context, stack.page)
    got = fetch(page, f"{stack.down_proxy}/api/items")
    assert got["error"] is None
    assert got["status"] == 502
    assert got["body"].startswith("upstream refused")


def test_upstream_redirect_is_followed_through_proxy_and_readable(context, stack: Stack):
    page = open_page(context, stack.page)
    got = page.evaluate("""async (url) => {
        const r = await fetch(url);
        return {status: r.status, url: r.url, redirected: r.redirected, body: await r.json()};
    }""", f"{stack.proxy}/api/redirect")
    assert got["status"] == 200 and got["redirected"] is True
    assert got["url"] == f"{stack.proxy}/api/landed"
    assert got["body"]["path"] == "/v1/api/landed"


def test_five_mib_download_arrives_intact(context, stack: Stack):
    page = open_page(context, stack.page)
    got = page.evaluate("""async (url) => {
        const buf = await (await fetch(url)).arrayBuffer();
        const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
        return {size: buf.byteLength, sha256: [...hash].map(b => b.toString(16).padStart(2, '0')).join('')};
    }""", f"{stack.proxy}/api/big")
    assert got == {"size": BIG_SIZE, "sha256": hashlib.sha256(big_body()).hexdigest()}


def test_five_mib_upload_arrives_intact(context, stack: Stack):
    page = open_page(context, stack.page)
    got = page.evaluate("""async (url) => {
        const body = new Uint8Array(5 * 1024 * 1024);
        for (let i = 0; i < body.length; i++) body[i] = (i * 13 + (i >> 16)) & 255;
        const hash = await crypto.subtle.digest('SHA-256', body);
        const hex = [...new Uint8Array(hash)].map(b => b.toString(16).padStart(2, '0')).join('');
        const r = await fetch(url, {method: 'POST', body, headers: {'Content-Type': 'application/octet-stream'}});
        return {sent: hex, got: await r.json()};
    }""", f"{stack.proxy}/api/upload")
    assert got["got"] == {"sha256": got["sent"], "size": BIG_SIZE}


def test_event_source_receives_each_event_as_it_is_sent(context, stack: Stack, loop: Loop):
    page = open_page(context, stack.page)
    page.evaluate("""(url) => {
        window.events = [];
        const es = new EventSource(url);
        es.onmessage = (e) => { window.events.push(e.data); if (window.events.length === 2) es.close(); };
    }""", f"{stack.proxy}/api/sse")
    page.wait_for_function("window.events.length === 1")
    # The page has the first event while the upstream still holds the second one back.
    assert stack.upstream.sse_sent == ["first"]
    loop.call(stack.upstream.release_sse.set)
    page.wait_for_function("window.events.length === 2")
    assert page.evaluate("window.events") == ["first", "second"]


WS_JS = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => resolve('timeout'), 5000);
    ws.onopen = () => ws.send('hi');
    ws.onmessage = (e) => { clearTimeout(timer); ws.close(); resolve(e.data); };
    ws.onerror = () => { clearTimeout(timer); resolve('error'); };
})"""


def test_websocket_from_allowed_origin_echoes(context, stack: Stack):
    page = open_page(context, stack.page)
    assert page.evaluate(WS_JS, stack.proxy.replace("http:", "ws:") + "/api/ws") == "echo:hi"
    assert stack.upstream.methods() == ["WS"]


def test_websocket_from_disallowed_origin_fails_the_handshake(context, stack: Stack):
    page = open_page(context, stack.other)
    assert page.evaluate(WS_JS, stack.proxy.replace("http:", "ws:") + "/api/ws") == "error"
    assert [ex.status for ex in stack.exchanges] == [403]
    assert stack.upstream.seen == []


def test_max_age_spares_the_second_preflight(context, stack: Stack):
    page = open_page(context, stack.page)
    for _ in range(2):
        got = fetch(page, f"{stack.proxy}/api/cached", PUT_INIT)
        assert got["status"] == 200
    assert stack.preflights("/api/cached") == 1
    assert stack.upstream.methods() == ["PUT", "PUT"]
