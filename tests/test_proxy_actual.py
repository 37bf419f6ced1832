"""Actual (non-preflight) requests through the real proxy: design §4 "Actual request, rule matched"."""

from __future__ import annotations

from tests.conftest import UPSTREAM_CORS, MakeProxy, Upstream
from tests.test_proxy_preflight import cors_headers

APP = "https://app.example.com"
RULES = """
rules:
  - name: read-only
    paths: ["/ro/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, HEAD]
    disallowed_origin: reject
  - name: read-only-forward
    paths: ["/ro-forward/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET]
  - name: strict
    paths: ["/strict/**"]
    allow_origins: [https://app.example.com]
    disallowed_origin: reject
  - name: everything
    paths: ["/everything/**"]
    allow_origins: [https://app.example.com]
    expose_headers: "*"
    allow_credentials: true
    timing_allow_origin: true
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
    expose_headers: [X-Request-Id]
  - name: app
    paths: ["/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST, PUT, PATCH, DELETE]
    expose_headers: [X-Request-Id]
    allow_credentials: true
"""
NO_RULE_FOR_CORS_ROUTE = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
"""


async def test_allowed_origin_replaces_the_upstreams_cors_headers(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/cors", headers={"Origin": APP})
    assert resp.status == 200
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Request-Id",
        "Vary": "Accept-Encoding, Origin",
    }
    assert await resp.text() == "has cors"
    assert upstream.count() == 1


async def test_vary_origin_is_not_duplicated_when_the_upstream_sends_it(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/respond?Vary=origin,%20Accept", headers={"Origin": APP})
    assert resp.headers.getall("Vary") == ["origin, Accept"]


async def test_vary_star_from_the_upstream_stays_star(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/respond?Vary=*", headers={"Origin": APP})
    assert resp.headers.getall("Vary") == ["*"]
    assert resp.headers["Access-Control-Allow-Origin"] == APP


async def test_expose_star_with_credentials_lists_the_responses_header_names(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/everything/x", headers={"Origin": APP})
    assert resp.status == 200
    exposed = {n.strip().lower() for n in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert "*" not in exposed
    assert {"x-request-id", "x-secret", "content-type"} <= exposed
    assert "vary" not in exposed and "set-cookie" not in exposed
    assert resp.headers["Timing-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"


async def test_disallowed_origin_forwarded_without_any_cors_header(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/cors", headers={"Origin": "https://evil.test"})
    assert resp.status == 200
    assert cors_headers(resp.headers) == {"Vary": "Accept-Encoding, Origin"}
    assert await resp.text() == "has cors"
    assert upstream.count() == 1
    assert proxy.exchanges[-1].decision.verdict == "denied:origin"


async def test_disallowed_origin_rejected_never_reaches_the_upstream(make_proxy: MakeProxy,
                                                                      upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.post("/strict/orders", data=b"amount=1000", headers={"Origin": "https://evil.test"})
    assert resp.status == 403
    assert cors_headers(resp.headers) == {"Vary": "Origin"}
    body = await resp.text()
    assert body.count("\n") == 1 and "https://evil.test" in body and "strict" in body
    assert upstream.count() == 0
    allowed = await proxy.client.post("/strict/orders", data=b"amount=1", headers={"Origin": APP})
    assert allowed.status == 200
    assert upstream.count() == 1


async def test_a_simple_post_to_a_read_only_rule_is_rejected_before_the_upstream(make_proxy: MakeProxy,
                                                                                 upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.post("/ro/orders", data=b"amount=1000", headers={"Origin": APP})
    assert (resp.status, await resp.text()) == (403, "method POST not in allow_methods (rule 'read-only')\n")
    assert cors_headers(resp.headers) == {"Vary": "Origin"}
    assert upstream.count() == 0
    assert proxy.exchanges[-1].decision.verdict == "denied:method"
    resp = await proxy.client.head("/ro/orders", headers={"Origin": APP})
    assert (resp.status, resp.headers["Access-Control-Allow-Origin"]) == (200, APP)


async def test_a_method_a_rule_does_not_list_is_forwarded_without_cors_headers(make_proxy: MakeProxy,
                                                                               upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.post("/ro-forward/orders", data=b"x", headers={"Origin": APP})
    assert resp.status == 200 and upstream.count("POST") == 1
    assert cors_headers(resp.headers) == {"Vary": "Accept-Encoding, Origin"}
    head = await proxy.client.head("/ro-forward/orders", headers={"Origin": APP})  # HEAD counts where GET does
    assert head.headers["Access-Control-Allow-Origin"] == APP


async def test_invalid_origin_on_a_star_rule_gets_a_literal_star(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/public/x", headers={"Origin": "not an origin"})
    assert cors_headers(resp.headers) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "X-Request-Id",
        "Vary": "Accept-Encoding, Origin",
    }


async def test_request_without_origin_is_untouched_except_vary(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.get("/cors")
    assert cors_headers(resp.headers) == {**UPSTREAM_CORS, "Vary": "Accept-Encoding, Origin"}
    assert await resp.text() == "has cors"


async def test_no_rule_is_a_transparent_proxy(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy(NO_RULE_FOR_CORS_ROUTE)
    resp = await proxy.client.get("/cors", headers={"Origin": APP})
    assert cors_headers(resp.headers) == {**UPSTREAM_CORS, "Vary": "Accept-Encoding"}
    assert proxy.exchanges[-1].decision.verdict == "none"


async def test_allowed_post_reaches_the_upstream_with_its_body(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(RULES)
    resp = await proxy.client.put("/items/1", data=b'{"a": 1}',
                                  headers={"Origin": APP, "Content-Type": "application/json"})
    body = await resp.json()
    assert body["method"] == "PUT"
    assert body["body_len"] == 8
    assert resp.headers["Access-Control-Allow-Origin"] == APP
