"""Preflights through the real proxy (design §4 "Preflight, rule matched"): answered by the proxy, never forwarded."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from tests.conftest import APP_RULE, MakeProxy, Upstream, raw_request

RULES = "\nrules:" + APP_RULE + """
  - name: sandboxed
    paths: ["/sandboxed/**"]
    allow_origins: ["null"]
  - name: open
    paths: ["/open/**"]
    allow_origins: ["*"]
    allow_methods: "*"
    allow_headers: "*"
    max_age: null
  - name: private
    paths: ["/private/**"]
    allow_origins: [https://app.example.com]
    allow_private_network: true
"""

PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def cors_headers(headers: CIMultiDict[str]) -> dict[str, str]:
    """Every Access-Control-* header and Vary, so a header that must be absent is checked too."""
    out = {k: v for k, v in headers.items() if k.lower().startswith("access-control-") or k.lower() == "vary"}
    assert len(out) == sum(1 for k in headers if k.lower().startswith("access-control-") or k.lower() == "vary"), \
        f"a CORS header or Vary appears twice: {headers}"
    return out


def app_allowed(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": "600",
        "Vary": PREFLIGHT_VARY,
    }


async def preflight(proxy, path: str, origin: str | None, method: str = "GET", **extra: str):
    headers = {"Access-Control-Request-Method": method, **{k.replace("_", "-"): v for k, v in extra.items()}}
    if origin is not None:
        headers["Origin"] = origin
    return await proxy.client.options(path, headers=headers)


ALLOWED_ORIGINS = [
    ("https://app.example.com", "exact"),
    ("HTTPS://App.Example.COM", "scheme-and-host-case"),
    ("https://app.example.com:443", "default-port"),
    ("https://a.b.example.com", "wildcard-two-labels"),
    ("https://x.example.com", "wildcard-one-label"),
    ("http://localhost", "localhost-no-port"),
    ("http://localhost:5173", "localhost-any-port"),
    ("https://pr-42.preview.example.dev", "regex"),
]


@pytest.mark.parametrize("origin", [o for o, _ in ALLOWED_ORIGINS], ids=[i for _, i in ALLOWED_ORIGINS])
async def test_preflight_allowed_answers_204_with_the_rules_headers(make_proxy: MakeProxy, upstream: Upstream,
                                                                    origin: str) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/items", origin, "PUT", Access_Control_Request_Headers="content-type")
    assert resp.status == 204
    assert cors_headers(resp.headers) == app_allowed(origin)
    assert await resp.read() == b""
    assert upstream.count() == 0


DENIED_ORIGINS = [
    ("https://example.com", "wildcard-never-the-apex"),
    ("https://evil-example.com", "wildcard-not-a-suffix-match"),
    ("https://example.com.evil.com", "wildcard-not-a-prefix-match"),
    ("http://app.example.com", "scheme-differs"),
    ("https://app.example.com:8443", "port-differs"),
    ("https://pr-42.preview.example.dev.evil.com", "regex-must-match-whole"),
    ("https://xpr-42.preview.example.dev", "regex-anchored-at-start"),
    ("http://localhost.evil.com", "localhost-not-a-prefix"),
    ("null", "null-not-listed"),
    ("https://app.example.com/", "not-a-serialized-origin"),
]


@pytest.mark.parametrize("origin", [o for o, _ in DENIED_ORIGINS], ids=[i for _, i in DENIED_ORIGINS])
async def test_preflight_denied_for_an_origin_not_allowed(make_proxy: MakeProxy, upstream: Upstream,
                                                          origin: str) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/items", origin)
    await assert_denied(resp, [origin, "app"])
    assert upstream.count() == 0


async def assert_denied(resp, words: list[str]) -> None:
    assert resp.status == 403
    assert resp.headers.getall("Content-Type") == ["text/plain; charset=utf-8"]
    assert cors_headers(resp.headers) == {"Vary": PREFLIGHT_VARY}
    body = await resp.text()
    assert body.endswith("\n") and body.count("\n") == 1, body
    for word in words:
        assert word in body


async def test_preflight_denied_when_method_case_differs(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/items", "https://app.example.com", "patch")
    await assert_denied(resp, ["method patch", "app"])
    assert proxy.exchanges[-1].decision.verdict == "denied:method"
    resp = await preflight(proxy, "/api/items", "https://app.example.com", "PATCH")
    assert resp.status == 204
    assert upstream.count() == 0


async def test_preflight_denied_when_method_not_listed(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    await assert_denied(await preflight(proxy, "/api/items", "https://app.example.com", "PROPFIND"),
                        ["PROPFIND", "app"])


async def test_preflight_allows_listed_header_names_in_any_case(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/items", "https://app.example.com", "POST",
                           Access_Control_Request_Headers="CONTENT-TYPE,authorization")
    assert resp.status == 204
    assert cors_headers(resp.headers) == app_allowed("https://app.example.com")


async def test_preflight_denied_when_a_header_is_not_listed(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/items", "https://app.example.com", "POST",
                           Access_Control_Request_Headers="content-type, x-token")
    await assert_denied(resp, ["x-token", "allow_headers", "app"])
    assert proxy.exchanges[-1].decision.verdict == "denied:header"
    assert upstream.count() == 0


async def test_preflight_star_headers_echo_the_requested_names_including_authorization(
        make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/open/x", "https://anyone.test", "PROPFIND",
                           Access_Control_Request_Headers="authorization, x-custom")
    assert resp.status == 204
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "PROPFIND",
        "Access-Control-Allow-Headers": "authorization, x-custom",
        "Vary": PREFLIGHT_VARY,
    }
    assert upstream.count() == 0


async def test_preflight_star_origin_answers_a_literal_star_to_null(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/open/x", "null")
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_preflight_null_origin_allowed_only_where_listed(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/sandboxed/x", "null")
    assert resp.status == 204
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": "null",
        "Access-Control-Allow-Methods": "GET, HEAD, POST",
        "Access-Control-Max-Age": "600",
        "Vary": PREFLIGHT_VARY,
    }
    await assert_denied(await preflight(proxy, "/sandboxed/x", "https://app.example.com"),
                        ["https://app.example.com", "sandboxed"])


async def test_preflight_private_network_allowed_when_the_rule_allows_it(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/private/x", "https://app.example.com",
                           Access_Control_Request_Private_Network="true")
    assert resp.status == 204
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Access-Control-Allow-Methods": "GET, HEAD, POST",
        "Access-Control-Max-Age": "600",
        "Access-Control-Allow-Private-Network": "true",
        "Vary": PREFLIGHT_VARY,
    }


async def test_preflight_private_network_denied_when_the_rule_does_not_allow_it(make_proxy: MakeProxy,
                                                                               upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/api/x", "https://app.example.com", Access_Control_Request_Private_Network="true")
    await assert_denied(resp, ["private network", "app"])
    assert proxy.exchanges[-1].decision.verdict == "denied:private-network"
    assert upstream.count() == 0


async def test_preflight_denied_when_origin_is_sent_twice(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    headers = CIMultiDict([("Origin", "https://app.example.com"), ("Origin", "https://app.example.com"),
                           ("Access-Control-Request-Method", "GET")])
    resp = await proxy.client.options("/api/x", headers=headers)
    await assert_denied(resp, ["more than once", "app"])
    assert upstream.count() == 0


async def test_preflight_204_has_no_content_length_on_the_wire(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await raw_request(proxy.url, b"OPTIONS /api/x HTTP/1.1\r\nHost: proxy\r\nOrigin: https://app.example.com"
                             b"\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n")
    assert resp.status == 204
    assert "Content-Length" not in resp.headers
    assert "Transfer-Encoding" not in resp.headers
    assert resp.body == b""
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


async def test_preflight_no_rule_matches_is_forwarded_untouched(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await preflight(proxy, "/cors", "https://app.example.com")  # upstream route with its own ACA-*
    assert resp.status == 200
    assert upstream.count("OPTIONS") == 1
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": "https://upstream-says.example",
        "Access-Control-Allow-Methods": "TRACE",
        "Access-Control-Expose-Headers": "X-Upstream-Secret",
        "Vary": "Accept-Encoding",
    }
    assert await resp.text() == "has cors"


async def test_options_without_request_method_is_an_actual_request_and_forwarded(make_proxy: MakeProxy,
                                                                                 upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.options("/api/x", headers={"Origin": "https://app.example.com"})
    assert resp.status == 200
    assert upstream.count("OPTIONS") == 1
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
