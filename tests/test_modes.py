"""Design §5 rule fields through the real proxy: mode: report-only, upstream_cors, denied_preflight,
and the debug.decision_header (``CORS-Decision``) on every verdict and on proxy-made errors."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import CollectorRegistry

from corsproxy import config as cfg
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.decisions import DecisionLog
from corsproxy.logs import ACCESS_LOGGER, AccessLog
from corsproxy.metrics import Metrics
from tests.conftest import UPSTREAM_CORS

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


def rules(**fields: str) -> str:
    """One rule 'app' on /api/** and the upstream fixture's special routes, with extra fields set."""
    extra = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"""
rules:
  - name: app
    paths: ["/api/**", "/cors", "/hop", "/redirect", "/slow", "/ws", "/respond"]
    allow_origins: [{APP}]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type]
    expose_headers: [X-Request-Id]
    max_age: 600
{extra}"""


def cors_part(resp) -> dict[str, str]:
    """Every Access-Control-*, Timing-Allow-Origin, Vary and CORS-Decision header (joined), lowercased names."""
    out: dict[str, str] = {}
    for name in {n.lower() for n in resp.headers}:
        if name.startswith("access-control-") or name in ("vary", "timing-allow-origin", "cors-decision"):
            out[name] = ", ".join(resp.headers.getall(name))
    return out


UPSTREAM_CORS_PART = {k.lower(): v for k, v in UPSTREAM_CORS.items()} | {"vary": "Accept-Encoding"}
ECHO_PART = {"vary": "Accept-Encoding"}  # what the upstream's echo route sends of the above


# ---------------------------------------------------------------------- config errors


def test_bad_rollout_fields_are_config_errors_with_file_line_and_fix():
    text = f"""upstream: {{url: 'http://127.0.0.1:9'}}
debug:
  decision_header: maybe
{rules(mode="report_only", upstream_cors="merge", denied_preflight="allow")}"""
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.parse(text, "c.yaml", env={})
    assert caught.value.issues == [
        "c.yaml:3:3: debug.decision_header: expected true or false, got 'maybe'",
        "c.yaml:13:5: rules[0].mode: expected one of enforce, report-only, got 'report_only' "
        "(did you mean 'report-only'?)",
        "c.yaml:14:5: rules[0].upstream_cors: expected one of replace, keep, got 'merge'",
        "c.yaml:15:5: rules[0].denied_preflight: expected one of reject, forward, got 'allow'",
    ]


# ---------------------------------------------------------------------- report-only


async def test_report_only_forwards_a_preflight_that_enforce_would_deny(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"))
    resp = await proxy.client.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"})
    assert resp.status == 200  # the upstream's own answer, not the proxy's 403
    assert (await resp.json())["method"] == "OPTIONS"
    assert upstream.count("OPTIONS") == 1
    assert cors_part(resp) == ECHO_PART
    (ex,) = proxy.exchanges
    assert (ex.decision.verdict, ex.decision.enforce) == ("denied:method", False)


async def test_report_only_forwards_a_preflight_that_enforce_would_allow(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"))
    resp = await proxy.client.options("/cors", headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert (resp.status, await resp.text()) == (200, "has cors")
    assert upstream.count("OPTIONS") == 1
    assert cors_part(resp) == UPSTREAM_CORS_PART
    assert proxy.exchanges[0].decision.verdict == "allowed"


async def test_report_only_keeps_the_upstream_cors_headers_and_body_for_a_denied_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only", disallowed_origin="reject"))
    resp = await proxy.client.post("/cors", data=b"x", headers={"Origin": EVIL})
    assert (resp.status, await resp.text()) == (200, "has cors")  # not the 403 reject would give
    assert cors_part(resp) == UPSTREAM_CORS_PART
    assert upstream.count("POST") == 1
    assert proxy.exchanges[0].decision.verdict == "denied:origin"


async def test_report_only_adds_nothing_for_an_allowed_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"))
    resp = await proxy.client.get("/api/x", headers={"Origin": APP})
    assert resp.status == 200
    assert cors_part(resp) == ECHO_PART
    assert (resp.headers["X-Request-Id"], resp.headers["X-Secret"]) == ("req-1", "s")


async def test_report_only_adds_no_vary_to_a_request_without_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"))
    resp = await proxy.client.get("/cors")
    assert cors_part(resp) == UPSTREAM_CORS_PART


async def test_report_only_still_does_what_forwarding_always_does(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"), extra="debug: {decision_header: true}")
    hop = await proxy.client.get("/hop", headers={"Origin": EVIL})
    assert "X-Hop" not in hop.headers and "Keep-Alive" not in hop.headers and hop.headers["X-End"] == "1"
    moved = await proxy.client.get("/redirect", headers={"Origin": EVIL}, allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == f"{proxy.url}/landed"
    assert cors_part(moved) == {"cors-decision": 'rule=app; verdict=denied:origin; mode=report-only; '
                                                 f'detail="origin {EVIL} not in allow_origins"'}


async def test_report_only_would_be_denials_are_logged_counted_and_listed(make_proxy, upstream):
    proxy = await make_proxy(rules(mode="report-only"))
    await proxy.client.options("/api/a", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"})
    await proxy.client.get("/api/b", headers={"Origin": EVIL})
    await proxy.client.get("/api/c", headers={"Origin": EVIL})
    await proxy.client.get("/api/d", headers={"Origin": APP})  # allowed: not listed
    assert upstream.count() == 4
    log = DecisionLog()
    for ex in proxy.exchanges:
        log.observe(ex)
    assert [(e.path, e.verdict, e.mode) for e in log.entries()] == [
        ("/api/c", "denied:origin", "report-only"),
        ("/api/b", "denied:origin", "report-only"),
        ("/api/a", "denied:method", "report-only"),
    ]
    assert log.counts() == [(f"denied:origin: origin {EVIL} not in allow_origins", 2),
                            ("denied:method: method DELETE not in allow_methods", 1)]
    page = log.render_html()
    assert "method DELETE not in allow_methods" in page and "report-only" in page


async def test_report_only_denials_reach_access_log_metrics_and_admin_decisions(aiohttp_client, upstream, caplog):
    config = cfg.parse(f"upstream: {{url: '{upstream.url}/v1'}}\n{rules(mode='report-only')}", "t.yaml", env={})
    registry, log = CollectorRegistry(), DecisionLog()
    metrics = Metrics(registry)
    proxy = await aiohttp_client(build_app(config, observers=[AccessLog().observe, metrics.observe, log.observe],
                                           started=[metrics.started]))

    async def decisions() -> DecisionLog:
        return log

    admin = await aiohttp_client(build_admin(AdminState(lambda: config, registry, decisions,
                                                        before_scrape=metrics.publish)))
    with caplog.at_level("INFO", logger=ACCESS_LOGGER):
        resp = await proxy.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"})
    assert resp.status == 200 and upstream.count("OPTIONS") == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert 'verdict=denied:method (report-only)' in line and 'reason="method DELETE not in allow_methods' in line
    scraped = await (await admin.get("/metrics")).text()
    assert 'corsproxy_preflights_total{rule="app",verdict="denied:method (report-only)"} 1.0' in scraped
    listed = await (await admin.get("/decisions", headers={"Accept": "application/json"})).json()
    assert [(e["verdict"], e["mode"], e["reason"]) for e in listed["entries"]] == [
        ("denied:method", "report-only", "method DELETE not in allow_methods (rule 'app')")]
    page = await (await admin.get("/decisions")).text()
    assert "method DELETE not in allow_methods (rule &#x27;app&#x27;)" in page


# ---------------------------------------------------------------------- upstream_cors


async def test_upstream_cors_keep_leaves_an_upstream_allow_origin_naming_the_request_origin_as_sent(
        make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep"))
    sent = {"Access-Control-Allow-Origin": APP, "Access-Control-Expose-Headers": "X-Upstream"}
    resp = await proxy.client.get("/respond", params=sent, headers={"Origin": APP})
    assert cors_part(resp) == {"access-control-allow-origin": APP, "access-control-expose-headers": "X-Upstream",
                               "vary": "Origin"}


async def test_upstream_cors_keep_replaces_an_upstream_allow_origin_naming_another_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep"))
    resp = await proxy.client.get("/cors", headers={"Origin": APP})  # the upstream says upstream-says.example
    assert cors_part(resp) == {
        "access-control-allow-origin": APP,
        "access-control-expose-headers": "X-Request-Id",
        "vary": "Accept-Encoding, Origin",
    }


REFLECTED = {"Access-Control-Allow-Origin": "https://evil.com", "Access-Control-Allow-Credentials": "true"}


async def test_upstream_cors_keep_on_a_star_rule_never_passes_a_reflected_origin_with_credentials(
        make_proxy, upstream):
    # SECURITY (issue 13.3): an upstream reflecting any Origin with credentials must not grant them through
    # a rule that has no allow_credentials: the rule's own headers are written instead, as with replace.
    proxy = await make_proxy('\nrules:\n  - name: open\n    paths: ["/respond"]\n    allow_origins: ["*"]\n'
                             "    upstream_cors: keep\n")
    resp = await proxy.client.get("/respond", params=REFLECTED, headers={"Origin": "https://evil.com"})
    assert cors_part(resp) == {"access-control-allow-origin": "*", "vary": "Origin"}


async def test_upstream_cors_keep_passes_upstream_credentials_only_when_the_rule_allows_them(make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep", allow_credentials="true"))
    resp = await proxy.client.get("/respond", params={**REFLECTED, "Access-Control-Allow-Origin": APP},
                                  headers={"Origin": APP})
    assert cors_part(resp) == {"access-control-allow-origin": APP, "access-control-allow-credentials": "true",
                               "vary": "Origin"}


async def test_upstream_cors_keep_fills_in_a_response_without_allow_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep"))
    resp = await proxy.client.get("/api/x", headers={"Origin": APP})
    assert cors_part(resp) == {
        "access-control-allow-origin": APP,
        "access-control-expose-headers": "X-Request-Id",
        "vary": "Accept-Encoding, Origin",
    }


async def test_upstream_cors_keep_still_strips_the_upstream_headers_for_a_denied_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep"))
    resp = await proxy.client.get("/cors", headers={"Origin": EVIL})
    assert cors_part(resp) == {"vary": "Accept-Encoding, Origin"}


KEPT = ("kept", "the upstream's Access-Control-* grant no more than the rule")
REPLACED = ("replaced", "the upstream's Access-Control-Allow-Origin 'https://upstream-says.example' is neither * "
            "nor the request's origin")


@pytest.mark.parametrize(("path", "params", "outcome"), [
    pytest.param("/respond", {"Access-Control-Allow-Origin": APP}, KEPT, id="kept"),
    pytest.param("/cors", {}, REPLACED, id="replaced"),
])
async def test_keep_says_whether_it_kept_or_replaced_in_the_log_and_the_decision_header(
        aiohttp_client, upstream, caplog, path, params, outcome):
    config = cfg.parse(f"upstream: {{url: '{upstream.url}/v1'}}\ndebug: {{decision_header: true}}\n"
                       f"{rules(upstream_cors='keep')}", "t.yaml", env={})
    proxy = await aiohttp_client(build_app(config, observers=[AccessLog().observe]))  # aiohttp's request path
    with caplog.at_level("INFO", logger=ACCESS_LOGGER):
        resp = await proxy.get(path, params=params, headers={"Origin": APP})
    assert resp.headers["CORS-Decision"] == (f'rule=app; verdict=allowed; upstream_cors={outcome[0]}; '
                                             f'detail="origin allowed; upstream CORS headers {outcome[0]}: '
                                             f'{outcome[1]}"')
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.getMessage().endswith(f' upstream_cors={outcome[0]} upstream_cors_reason="{outcome[1]}"')
    assert (record.access["upstream_cors"], record.access["upstream_cors_reason"]) == outcome


async def test_keep_says_kept_or_replaced_on_the_connection_level_path_too(make_proxy, upstream):
    proxy = await make_proxy(rules(upstream_cors="keep"), extra="debug: {decision_header: true}")
    resp = await proxy.client.get("/cors", headers={"Origin": APP})
    assert "upstream_cors=replaced" in resp.headers["CORS-Decision"]


async def test_upstream_cors_replace_is_the_default(make_proxy, upstream):
    proxy = await make_proxy(rules())
    resp = await proxy.client.get("/cors", headers={"Origin": APP})
    assert cors_part(resp) == {
        "access-control-allow-origin": APP,
        "access-control-expose-headers": "X-Request-Id",
        "vary": "Accept-Encoding, Origin",
    }


# ---------------------------------------------------------------------- denied_preflight


async def test_denied_preflight_forward_passes_it_to_the_upstream(make_proxy, upstream):
    proxy = await make_proxy(rules(denied_preflight="forward"))
    resp = await proxy.client.options("/cors", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"})
    assert (resp.status, await resp.text()) == (200, "has cors")
    assert upstream.count("OPTIONS") == 1
    sent = upstream.seen[0].headers
    assert (sent["Origin"], sent["Access-Control-Request-Method"]) == (APP, "DELETE")
    assert cors_part(resp) == {k.lower(): v for k, v in UPSTREAM_CORS.items()} | {
        "vary": "Accept-Encoding, Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
    assert proxy.exchanges[0].decision.verdict == "denied:method"


async def test_denied_preflight_forward_strips_upstream_cors_for_a_denied_origin(make_proxy, upstream):
    proxy = await make_proxy(rules(denied_preflight="forward"))
    resp = await proxy.client.options("/cors", headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"})
    assert upstream.count("OPTIONS") == 1
    assert cors_part(resp) == {
        "vary": "Accept-Encoding, Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}


async def test_denied_preflight_reject_is_the_default_and_never_reaches_the_upstream(make_proxy, upstream):
    proxy = await make_proxy(rules())
    resp = await proxy.client.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"})
    assert resp.status == 403
    assert await resp.text() == "method DELETE not in allow_methods (rule 'app')\n"
    assert upstream.count() == 0
    assert cors_part(resp) == {"vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}


# ---------------------------------------------------------------------- CORS-Decision


DEBUG_ON = "debug: {decision_header: true}"
DENIED_EVIL = f'rule=app; verdict=denied:origin; detail="origin {EVIL} not in allow_origins"'
PREFLIGHT = {"Access-Control-Request-Method": "GET"}

VERDICTS = [
    ("allowed-actual", "GET", {"Origin": APP}, 'rule=app; verdict=allowed; detail="origin allowed"'),
    ("allowed-preflight", "OPTIONS", {"Origin": APP, **PREFLIGHT},
     'rule=app; verdict=allowed; detail="preflight allowed"'),
    ("denied-origin", "GET", {"Origin": EVIL},
     f'rule=app; verdict=denied:origin; detail="origin {EVIL} not in allow_origins"'),
    ("denied-method", "OPTIONS", {"Origin": APP, "Access-Control-Request-Method": "DELETE"},
     'rule=app; verdict=denied:method; detail="method DELETE not in allow_methods"'),
    ("denied-header", "OPTIONS", {"Origin": APP, **PREFLIGHT, "Access-Control-Request-Headers": "X-Token"},
     'rule=app; verdict=denied:header; detail="X-Token not in allow_headers"'),
    ("denied-private-network", "OPTIONS",
     {"Origin": APP, **PREFLIGHT, "Access-Control-Request-Private-Network": "true"},
     'rule=app; verdict=denied:private-network; '
     'detail="private network access not allowed (allow_private_network)"'),
    ("none-without-origin", "GET", {}, 'rule=app; verdict=none; detail="no Origin header: not a CORS request"'),
]


@pytest.mark.parametrize(("method", "headers", "expected"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS])
async def test_decision_header_names_rule_verdict_and_detail(make_proxy, upstream, method, headers, expected):
    proxy = await make_proxy(rules(), extra=DEBUG_ON)
    resp = await proxy.client.request(method, "/api/x", headers=headers)
    assert resp.headers.getall("CORS-Decision") == [expected]
    assert proxy.exchanges[0].decision.header_value() == expected


@pytest.mark.parametrize(("method", "headers", "expected"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS])
async def test_decision_header_is_absent_by_default(make_proxy, upstream, method, headers, expected):
    proxy = await make_proxy(rules())
    resp = await proxy.client.request(method, "/api/x", headers=headers)
    assert "CORS-Decision" not in resp.headers
    assert resp.status in (200, 204, 403)


async def test_decision_header_is_absent_when_no_rule_matched(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON)
    resp = await proxy.client.get("/other", headers={"Origin": EVIL})
    assert resp.status == 200
    assert "CORS-Decision" not in resp.headers
    assert proxy.exchanges[0].decision.rule is None


async def test_decision_header_on_a_rejected_actual_request(make_proxy, upstream):
    proxy = await make_proxy(rules(disallowed_origin="reject"), extra=DEBUG_ON)
    resp = await proxy.client.post("/api/x", data=b"x", headers={"Origin": EVIL})
    assert resp.status == 403
    assert resp.headers["CORS-Decision"] == DENIED_EVIL
    assert upstream.count() == 0


async def test_decision_header_on_a_413(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON + "\nlimits: {max_body_size: 10}")
    resp = await proxy.client.post("/api/x", data=b"x" * 100, headers={"Origin": APP})
    assert resp.status == 413
    assert resp.headers["CORS-Decision"] == 'rule=app; verdict=allowed; detail="origin allowed"'
    assert resp.headers["Access-Control-Allow-Origin"] == APP


async def test_decision_header_on_a_400_for_a_dot_segment_path(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON)
    resp = await proxy.client.get("/api/a/..%2Fb", headers={"Origin": EVIL})
    assert resp.status == 400
    assert resp.headers["CORS-Decision"] == DENIED_EVIL
    assert upstream.count() == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_decision_header_on_a_502(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON, upstream_url=f"http://127.0.0.1:{_closed_port()}/v1")
    resp = await proxy.client.get("/api/x", headers={"Origin": APP})
    assert resp.status == 502
    assert resp.headers["CORS-Decision"] == 'rule=app; verdict=allowed; detail="origin allowed"'


async def test_decision_header_on_a_504(aiohttp_client, upstream):
    text = (f"upstream: {{url: '{upstream.url}/v1', read_timeout: 0.2}}\nadmin: null\n{DEBUG_ON}\n{rules()}")
    client = await aiohttp_client(build_app(cfg.parse(text, "t.yaml", env={})))
    resp = await client.get("/slow?s=2", headers={"Origin": EVIL})
    assert resp.status == 504
    assert resp.headers["CORS-Decision"] == DENIED_EVIL
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_decision_header_on_a_refused_websocket(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON)
    resp = await proxy.client.get("/ws", headers={"Origin": EVIL, "Upgrade": "websocket", "Connection": "Upgrade",
                                                      "Sec-WebSocket-Version": "13",
                                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 403
    assert resp.headers["CORS-Decision"] == DENIED_EVIL
    assert upstream.count() == 0


async def test_decision_header_on_an_accepted_websocket_handshake(make_proxy, upstream):
    proxy = await make_proxy(rules(), extra=DEBUG_ON)
    url = proxy.client.make_url("/ws")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(f"GET /ws HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nOrigin: {APP}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    finally:
        writer.close()
    assert head.startswith("HTTP/1.1 101")
    assert 'CORS-Decision: rule=app; verdict=allowed; detail="origin allowed"\r\n' in head
