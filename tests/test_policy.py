"""policy.decide / policy.finish with plain calls, no event loop (design §3 Origins, §4 Behaviour).

Tables in the spirit of rs/cors ``cors_test.go`` TestSpec: every case asserts the WHOLE
header set of the response, so a header that must be absent is checked too.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from corsproxy import config as cfg
from corsproxy.policy import CorsRequest, Decision, Policy, decide, finish, respond_headers

CONFIG = r"""
upstream: {url: "http://127.0.0.1:9"}
rules:
  - name: star
    paths: ["/star/**"]
    allow_origins: ["*"]
    expose_headers: [X-Request-Id]
  - name: exact
    paths: ["/exact/**"]
    allow_origins:
      - https://app.example.com
      - https://a.com:443
      - http://b.com:8080
      - chrome-extension://abcdefghijklmnop
      - HTTPS://UPPER.EXAMPLE.ORG
  - name: wild
    paths: ["/wild/**"]
    allow_origins: ["https://*.example.com"]
  - name: wildport
    paths: ["/wildport/**"]
    allow_origins: ["https://*.example.com:8443"]
  - name: localhost
    paths: ["/local/**"]
    allow_origins: ["http://localhost:*"]
  - name: regex
    paths: ["/regex/**"]
    allow_origins: [{regex: 'https://pr-[0-9]+\.preview\.example\.dev'}]
  - name: nullable
    paths: ["/null/**"]
    allow_origins: ["null"]
  - name: app
    paths: ["/app/**"]
    allow_origins: ["https://app.example.com"]
    allow_methods: [GET, POST, PATCH]
    allow_headers: [Content-Type, X-Token]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 600
  - name: anything
    paths: ["/any/**"]
    allow_origins: ["https://app.example.com"]
    allow_methods: "*"
    allow_headers: "*"
    max_age: null
    allow_private_network: true
  - name: expose-all
    paths: ["/expose/**"]
    allow_origins: ["https://app.example.com"]
    expose_headers: "*"
  - name: expose-all-creds
    paths: ["/expose-creds/**"]
    allow_origins: ["https://app.example.com"]
    expose_headers: "*"
    allow_credentials: true
  - name: timing
    paths: ["/timing/**"]
    allow_origins: ["https://app.example.com"]
    timing_allow_origin: true
  - name: star-timing
    paths: ["/star-timing/**"]
    allow_origins: ["*"]
    timing_allow_origin: true
  - name: reject
    paths: ["/reject/**"]
    allow_origins: ["https://app.example.com"]
    disallowed_origin: reject
  - name: corp
    paths: ["/corp/**"]
    allow_origins: ["https://app.example.com"]
    cross_origin_resource_policy: cross-origin
    disallowed_origin: reject
  - name: read-only
    paths: ["/ro/**"]
    allow_origins: ["https://app.example.com"]
    allow_methods: [GET]
  - name: read-only-star
    paths: ["/ro-star/**"]
    allow_origins: ["*"]
    allow_methods: [GET, HEAD]
    disallowed_origin: reject
"""
POLICY = Policy.from_config(cfg.parse(CONFIG, "policy.yaml", {}))

APP = "https://app.example.com"
PV = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
DEFAULT_METHODS = "GET, HEAD, POST"
TEXT = ("Content-Type", "text/plain; charset=utf-8")
DENIED_PREFLIGHT = [("Vary", PV), TEXT]


def preflight(path: str, origin: str | tuple[str, ...], method: str = "GET", headers: str = "",
              private_network: bool = False) -> Decision:
    origins = origin if isinstance(origin, tuple) else (origin,)
    return decide(POLICY, CorsRequest("OPTIONS", path, origins, method, headers, private_network))


def allowed_preflight(origin: str, methods: str = DEFAULT_METHODS) -> list[tuple[str, str]]:
    return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Methods", methods),
            ("Access-Control-Max-Age", "600"), ("Vary", PV)]


# ------------------------------------------------------------ preflight: origin kinds

ORIGIN_KINDS = [
    # exact: scheme and host case-insensitive, default port = no port
    pytest.param("/exact/x", APP, True, id="exact"),
    pytest.param("/exact/x", "HTTPS://APP.EXAMPLE.COM", True, id="exact-uppercase-scheme-and-host"),
    pytest.param("/exact/x", "https://App.Example.Com", True, id="exact-mixed-case-host"),
    pytest.param("/exact/x", "https://app.example.com:443", True, id="exact-explicit-default-port"),
    pytest.param("/exact/x", "https://a.com", True, id="exact-entry-with-default-port-matches-no-port"),
    pytest.param("/exact/x", "https://a.com:443", True, id="exact-entry-with-default-port-matches-itself"),
    pytest.param("/exact/x", "https://a.com:8443", False, id="exact-other-port"),
    pytest.param("/exact/x", "http://app.example.com", False, id="exact-other-scheme"),
    pytest.param("/exact/x", "http://b.com:8080", True, id="exact-non-default-port"),
    pytest.param("/exact/x", "http://b.com", False, id="exact-non-default-port-missing"),
    pytest.param("/exact/x", "chrome-extension://abcdefghijklmnop", True, id="exact-extension-scheme"),
    pytest.param("/exact/x", "https://upper.example.org", True, id="exact-entry-written-in-uppercase"),
    pytest.param("/exact/x", "https://app.example.com.", False, id="exact-trailing-dot-is-another-origin"),
    pytest.param("/exact/x", "https://app.example.com.evil.com", False, id="exact-as-prefix-of-attacker-host"),
    pytest.param("/exact/x", "https://evilapp.example.com", False, id="exact-with-prefix"),
    pytest.param("/exact/x", "null", False, id="exact-null-not-listed"),
    # label wildcard
    pytest.param("/wild/x", "https://x.example.com", True, id="wildcard-one-label"),
    pytest.param("/wild/x", "https://a.b.example.com", True, id="wildcard-deeper-subdomain"),
    pytest.param("/wild/x", "https://X.EXAMPLE.COM", True, id="wildcard-uppercase"),
    pytest.param("/wild/x", "https://x.example.com:443", True, id="wildcard-explicit-default-port"),
    pytest.param("/wild/x", "https://example.com", False, id="wildcard-never-the-apex"),
    pytest.param("/wild/x", "https://evil-example.com", False, id="wildcard-never-evil-example"),
    pytest.param("/wild/x", "https://example.com.evil.com", False, id="wildcard-never-suffix-of-attacker"),
    pytest.param("/wild/x", "https://x.example.com.evil.com", False, id="wildcard-never-label-then-attacker"),
    pytest.param("/wild/x", "https://x.example.com:8443", False, id="wildcard-other-port"),
    pytest.param("/wild/x", "http://x.example.com", False, id="wildcard-other-scheme"),
    pytest.param("/wild/x", "https://x.example.com.", False, id="wildcard-trailing-dot"),
    pytest.param("/wild/x", "https://*.example.com", False, id="wildcard-sent-literally-as-origin"),
    pytest.param("/wild/x", "https://.example.com", False, id="wildcard-empty-label"),
    pytest.param("/wildport/x", "https://x.example.com:8443", True, id="wildcard-with-port"),
    pytest.param("/wildport/x", "https://x.example.com", False, id="wildcard-with-port-no-port-sent"),
    pytest.param("/wildport/x", "https://example.com:8443", False, id="wildcard-with-port-apex"),
    # any port
    pytest.param("/local/x", "http://localhost", True, id="any-port-without-port"),
    pytest.param("/local/x", "http://localhost:3000", True, id="any-port-with-port"),
    pytest.param("/local/x", "http://localhost:80", True, id="any-port-default-port"),
    pytest.param("/local/x", "https://localhost:3000", False, id="any-port-other-scheme"),
    pytest.param("/local/x", "http://localhost.evil.com:3000", False, id="any-port-other-host"),
    pytest.param("/local/x", "http://127.0.0.1:3000", False, id="any-port-ip-is-not-localhost"),
    # regex: whole match only
    pytest.param("/regex/x", "https://pr-12.preview.example.dev", True, id="regex"),
    pytest.param("/regex/x", "https://pr-12.preview.example.dev.evil.com", False, id="regex-must-match-to-the-end"),
    pytest.param("/regex/x", "https://xpr-1.preview.example.dev", False, id="regex-must-match-from-the-start"),
    pytest.param("/regex/x", "https://pr-.preview.example.dev", False, id="regex-no-digits"),
    # null
    pytest.param("/null/x", "null", True, id="null-listed"),
    pytest.param("/null/x", APP, False, id="null-listed-other-origin"),
]


@pytest.mark.parametrize(("path", "origin", "allowed"), ORIGIN_KINDS)
def test_preflight_answers_each_origin_kind_with_the_whole_header_set(path: str, origin: str, allowed: bool) -> None:
    decision = preflight(path, origin)
    if allowed:
        assert (decision.status, decision.verdict) == (204, "allowed")
        # the Origin is echoed exactly as sent, never a canonical form of it
        assert respond_headers(decision) == allowed_preflight(origin)
    else:
        assert (decision.status, decision.verdict) == (403, "denied:origin")
        assert respond_headers(decision) == DENIED_PREFLIGHT
        assert origin in decision.body.decode() and decision.rule_name in decision.body.decode()


@pytest.mark.parametrize("origin", ["https://anything.test", "null", "http://localhost:1"],
                         ids=["any-origin", "null", "localhost"])
def test_preflight_for_star_rule_answers_a_literal_star(origin: str) -> None:
    decision = preflight("/star/x", origin)
    assert decision.status == 204
    assert respond_headers(decision) == allowed_preflight("*")


INVALID_ORIGINS = [
    pytest.param("https://app.example.com/", id="trailing-slash"),
    pytest.param("https://app.example.com/path", id="path"),
    pytest.param("https://user@app.example.com", id="userinfo"),
    pytest.param("https://app.example.com\r\nSet-Cookie: a=1", id="crlf"),
    pytest.param(" https://app.example.com", id="leading-space"),
    pytest.param("https://app.example.com, https://b.com", id="two-in-one-value"),
    pytest.param("https://äpp.example.com", id="non-ascii"),
    pytest.param("https://app.example.com:99999", id="port-too-big"),
    pytest.param("https://app.example.com:0443", id="port-leading-zero"),
    pytest.param("app.example.com", id="no-scheme"),
    pytest.param("", id="empty"),
    pytest.param((APP, APP), id="repeated-same"),
    pytest.param((APP, "https://b.com"), id="repeated-different"),
]


@pytest.mark.parametrize("origin", INVALID_ORIGINS)
@pytest.mark.parametrize("path", ["/star/x", "/exact/x"], ids=["star-rule", "exact-rule"])
def test_preflight_with_invalid_or_repeated_origin_is_denied_and_never_echoed(path: str, origin: str) -> None:
    decision = preflight(path, origin)
    assert (decision.status, decision.verdict, decision.origin) == (403, "denied:origin", None)
    assert respond_headers(decision) == DENIED_PREFLIGHT


# ------------------------------------------------------------ preflight: methods, headers, private network

ACAC = ("Access-Control-Allow-Credentials", "true")

PREFLIGHT_SPEC = [
    pytest.param("/app/x", "PATCH", "content-type, X-TOKEN", False, "allowed",
                 [("Access-Control-Allow-Origin", APP), ACAC, ("Access-Control-Allow-Methods", "GET, POST, PATCH"),
                  ("Access-Control-Allow-Headers", "Content-Type, X-Token"), ("Access-Control-Max-Age", "600"),
                  ("Vary", PV)], id="credentials-method-and-headers-in-any-case"),
    pytest.param("/app/x", "POST", "", False, "allowed",
                 [("Access-Control-Allow-Origin", APP), ACAC, ("Access-Control-Allow-Methods", "GET, POST, PATCH"),
                  ("Access-Control-Allow-Headers", "Content-Type, X-Token"), ("Access-Control-Max-Age", "600"),
                  ("Vary", PV)], id="no-request-headers-still-lists-configured"),
    pytest.param("/app/x", "patch", "", False, "denied:method", DENIED_PREFLIGHT, id="method-compared-exactly"),
    pytest.param("/app/x", "DELETE", "", False, "denied:method", DENIED_PREFLIGHT, id="method-not-listed"),
    pytest.param("/app/x", "", "", False, "denied:method", DENIED_PREFLIGHT, id="method-empty"),
    pytest.param("/app/x", "GET", "Authorization", False, "denied:header", DENIED_PREFLIGHT, id="header-not-listed"),
    pytest.param("/app/x", "GET", "content-type, x-other", False, "denied:header", DENIED_PREFLIGHT,
                 id="one-header-not-listed"),
    pytest.param("/app/x", "GET", "", True, "denied:private-network", DENIED_PREFLIGHT,
                 id="private-network-asked-not-allowed"),
    pytest.param("/any/x", "PURGE", "Authorization, x-custom", False, "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Access-Control-Allow-Methods", "PURGE"),
                  ("Access-Control-Allow-Headers", "Authorization, x-custom"), ("Vary", PV)],
                 id="star-methods-and-headers-echo-including-authorization-no-max-age"),
    pytest.param("/any/x", "patch", "", False, "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Access-Control-Allow-Methods", "patch"), ("Vary", PV)],
                 id="star-methods-echo-the-method-as-sent"),
    pytest.param("/any/x", "GET", "", True, "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Access-Control-Allow-Methods", "GET"),
                  ("Access-Control-Allow-Private-Network", "true"), ("Vary", PV)],
                 id="private-network-asked-and-allowed"),
    pytest.param("/any/x", "GET", "", False, "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Access-Control-Allow-Methods", "GET"), ("Vary", PV)],
                 id="private-network-allowed-not-asked"),
    pytest.param("/any/x", "GE T", "", False, "denied:method", DENIED_PREFLIGHT, id="star-methods-invalid-token"),
    pytest.param("/any/x", "GET", "x token", False, "denied:header", DENIED_PREFLIGHT,
                 id="star-headers-invalid-token"),
    pytest.param("/star/x", "POST", "", False, "allowed", allowed_preflight("*"), id="star-origin-simple"),
    pytest.param("/star/x", "POST", "X-Anything", False, "denied:header", DENIED_PREFLIGHT,
                 id="star-origin-default-allows-no-headers"),
    pytest.param("/star/x", "PUT", "", False, "denied:method", DENIED_PREFLIGHT, id="default-methods-no-put"),
    pytest.param("/null/x", "GET", "", False, "allowed", allowed_preflight("null"), id="null-echoed-when-listed"),
    pytest.param("/timing/x", "GET", "", False, "allowed", allowed_preflight(APP), id="no-timing-header-on-preflight"),
    pytest.param("/expose/x", "GET", "", False, "allowed", allowed_preflight(APP), id="no-expose-header-on-preflight"),
    pytest.param("/reject/x", "PUT", "", False, "denied:method", DENIED_PREFLIGHT, id="reject-rule-denied-preflight"),
]


@pytest.mark.parametrize(("path", "method", "request_headers", "private_network", "verdict", "expected"),
                         PREFLIGHT_SPEC)
def test_preflight_spec(path: str, method: str, request_headers: str, private_network: bool, verdict: str,
                        expected: list[tuple[str, str]]) -> None:
    origin = "null" if path.startswith("/null") else APP
    decision = preflight(path, origin, method, request_headers, private_network)
    assert decision.verdict == verdict
    assert decision.status == (204 if verdict == "allowed" else 403)
    assert respond_headers(decision) == expected
    assert decision.body == (b"" if verdict == "allowed" else (decision.reason + "\n").encode())


def test_preflight_denied_reason_names_the_header_and_the_rule() -> None:
    decision = preflight("/app/x", APP, "GET", "X-Token, Authorization")
    assert decision.body == b"Authorization not in allow_headers (rule 'app')\n"


def test_preflight_denied_reason_names_the_method_and_the_rule() -> None:
    assert preflight("/app/x", APP, "patch").body == b"method patch not in allow_methods (rule 'app')\n"


def test_preflight_with_no_matching_rule_is_left_to_the_upstream() -> None:
    decision = preflight("/elsewhere", APP)
    assert (decision.kind, decision.verdict, decision.status, decision.rule) == ("no-rule", "none", None, None)


# ------------------------------------------------------------ actual requests: finish() on the response

UPSTREAM = [
    ("Content-Type", "application/json"),
    ("X-Request-Id", "r1"),
    ("Vary", "Accept-Encoding"),
    ("Access-Control-Allow-Origin", "https://upstream-says.example"),
    ("access-control-allow-credentials", "true"),
    ("Access-Control-Expose-Headers", "X-Secret"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
]
BASE = [("Content-Type", "application/json"), ("X-Request-Id", "r1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
VARY_ORIGIN = ("Vary", "Accept-Encoding, Origin")


def actual(path: str, origin: str | tuple[str, ...] | None, upstream: list[tuple[str, str]] = UPSTREAM,
           method: str = "GET") -> tuple[Decision, list[tuple[str, str]]]:
    origins = () if origin is None else origin if isinstance(origin, tuple) else (origin,)
    decision = decide(POLICY, CorsRequest(method, path, origins))
    headers: CIMultiDict[str] = CIMultiDict(upstream)
    finish(decision, headers)
    return decision, sorted(headers.items())


ACTUAL_SPEC = [
    pytest.param("/star/x", "https://anything.test", UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "X-Request-Id"),
                         VARY_ORIGIN], id="star-any-origin"),
    pytest.param("/star/x", "null", UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "X-Request-Id"),
                         VARY_ORIGIN], id="star-null-origin-literal-star"),
    pytest.param("/star/x", "https://a.com/\r\nX-Evil: 1", UPSTREAM, "denied:origin",
                 BASE + [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "X-Request-Id"),
                         VARY_ORIGIN], id="star-invalid-origin-literal-star-never-echo"),
    pytest.param("/star/x", (APP, "https://b.com"), UPSTREAM, "denied:origin",
                 BASE + [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "X-Request-Id"),
                         VARY_ORIGIN], id="star-repeated-origin-literal-star"),
    pytest.param("/exact/x", APP, UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", APP), VARY_ORIGIN], id="exact-allowed"),
    pytest.param("/exact/x", "https://evil.test", UPSTREAM, "denied:origin", BASE + [VARY_ORIGIN],
                 id="disallowed-forward-strips-upstream-cors"),
    pytest.param("/exact/x", APP + "/", UPSTREAM, "denied:origin", BASE + [VARY_ORIGIN],
                 id="invalid-origin-never-echoed"),
    pytest.param("/exact/x", (APP, APP), UPSTREAM, "denied:origin", BASE + [VARY_ORIGIN],
                 id="repeated-origin-never-echoed"),
    pytest.param("/app/x", APP, UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", APP), ACAC,
                         ("Access-Control-Expose-Headers", "X-Request-Id"), VARY_ORIGIN], id="credentials"),
    pytest.param("/expose/x", APP, UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", APP), ("Access-Control-Expose-Headers", "*"), VARY_ORIGIN],
                 id="expose-star-without-credentials-is-star"),
    pytest.param("/expose-creds/x", APP, UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", APP), ACAC,
                         ("Access-Control-Expose-Headers", "Content-Type, X-Request-Id"), VARY_ORIGIN],
                 id="expose-star-with-credentials-lists-the-response-names"),
    pytest.param("/timing/x", APP, UPSTREAM + [("Timing-Allow-Origin", "*")], "allowed",
                 BASE + [("Access-Control-Allow-Origin", APP), ("Timing-Allow-Origin", APP), VARY_ORIGIN],
                 id="timing-allow-origin-replaces-upstream"),
    pytest.param("/star-timing/x", "https://anything.test", UPSTREAM, "allowed",
                 BASE + [("Access-Control-Allow-Origin", "*"), ("Timing-Allow-Origin", "*"), VARY_ORIGIN],
                 id="timing-allow-origin-star"),
    pytest.param("/exact/x", APP, [("Vary", "*")], "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Vary", "*")], id="vary-star-stays-star"),
    pytest.param("/exact/x", APP, [("Vary", "accept-encoding, origin")], "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Vary", "accept-encoding, origin")],
                 id="vary-origin-not-duplicated"),
    pytest.param("/exact/x", APP, [("Vary", "Accept-Encoding"), ("Vary", "Accept-Language")], "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Vary", "Accept-Encoding, Accept-Language, Origin")],
                 id="vary-repeated-merged-into-one"),
    pytest.param("/exact/x", APP, [], "allowed",
                 [("Access-Control-Allow-Origin", APP), ("Vary", "Origin")], id="proxy-made-response"),
    pytest.param("/elsewhere", APP, UPSTREAM, "none", sorted(UPSTREAM), id="no-rule-untouched"),
    pytest.param("/elsewhere", None, UPSTREAM, "none", sorted(UPSTREAM), id="no-rule-no-origin-untouched"),
    pytest.param("/exact/x", None, UPSTREAM, "none",
                 [h for h in UPSTREAM if h[0] != "Vary"] + [VARY_ORIGIN], id="no-origin-only-vary-added"),
    pytest.param("/star/x", None, [("Vary", "*")], "none", [("Vary", "*")], id="no-origin-vary-star-stays"),
]


@pytest.mark.parametrize(("path", "origin", "upstream", "verdict", "expected"), ACTUAL_SPEC)
def test_actual_request_spec(path: str, origin: str | None, upstream: list[tuple[str, str]], verdict: str,
                             expected: list[tuple[str, str]]) -> None:
    decision, headers = actual(path, origin, upstream)
    assert decision.verdict == verdict
    assert decision.status is None  # forwarded
    assert headers == sorted(expected)


def test_actual_request_from_disallowed_origin_is_rejected_with_403_when_rule_says_reject() -> None:
    decision = decide(POLICY, CorsRequest("POST", "/reject/x", ("https://evil.test",)))
    assert (decision.verdict, decision.status) == ("denied:origin", 403)
    assert respond_headers(decision) == [TEXT, ("Vary", "Origin")]
    assert decision.body == b"origin https://evil.test not in allow_origins (rule 'reject')\n"


def test_actual_request_from_allowed_origin_is_forwarded_when_rule_says_reject() -> None:
    decision, headers = actual("/reject/x", APP)
    assert (decision.verdict, decision.status) == ("allowed", None)
    assert headers == sorted(BASE + [("Access-Control-Allow-Origin", APP), VARY_ORIGIN])


@pytest.mark.parametrize("origin", [APP + ".", "HTTPS://APP.EXAMPLE.COM:0443", "https://[::1]"],
                         ids=["trailing-dot", "leading-zero-port", "ipv6"])
def test_actual_request_from_a_look_alike_origin_gets_no_cors_header(origin: str) -> None:
    _, headers = actual("/exact/x", origin)
    assert headers == sorted(BASE + [VARY_ORIGIN])


ACTUAL_METHODS = [
    pytest.param("/ro/x", "GET", "allowed", None, id="listed"),
    pytest.param("/ro/x", "HEAD", "allowed", None, id="head-counts-wherever-get-does"),
    pytest.param("/ro/x", "OPTIONS", "allowed", None, id="options-that-is-not-a-preflight-always-counts"),
    pytest.param("/ro/x", "POST", "denied:method", None, id="simple-cross-site-post-cannot-be-read"),
    pytest.param("/ro/x", "patch", "denied:method", None, id="compared-exactly"),
    pytest.param("/ro-star/x", "POST", "denied:method", 403, id="star-rule-reject-answers-403"),
    pytest.param("/any/x", "PROPFIND", "allowed", None, id="star-methods-allow-any"),
]


@pytest.mark.parametrize(("path", "method", "verdict", "status"), ACTUAL_METHODS)
def test_actual_request_method_must_be_allowed(path: str, method: str, verdict: str, status: int | None) -> None:
    decision, headers = actual(path, APP, method=method)
    assert (decision.kind, decision.verdict, decision.status) == ("actual", verdict, status)
    if verdict == "allowed":
        assert ("Access-Control-Allow-Origin", APP if path != "/ro-star/x" else "*") in headers
    else:  # the answer of a disallowed origin: no Access-Control-*, Vary: Origin
        assert decision.reason == f"method {method} not in allow_methods (rule '{decision.rule_name}')"
        if status is None:
            assert headers == sorted(BASE + [VARY_ORIGIN])
        else:
            assert respond_headers(decision) == [TEXT, ("Vary", "Origin")]


CORP_UPSTREAM = [("Content-Type", "image/png"), ("Cross-Origin-Resource-Policy", "same-origin")]
CORP = ("Cross-Origin-Resource-Policy", "cross-origin")


@pytest.mark.parametrize(("origin", "method", "expected"), [
    pytest.param(None, "GET", [CORP_UPSTREAM[0], CORP, ("Vary", "Origin")], id="no-cors-embed-without-origin"),
    pytest.param(APP, "GET", [CORP_UPSTREAM[0], ("Access-Control-Allow-Origin", APP), CORP, ("Vary", "Origin")],
                 id="allowed"),
])
def test_cross_origin_resource_policy_replaces_the_upstreams_on_every_response_of_the_rule(
        origin: str | None, method: str, expected: list[tuple[str, str]]) -> None:
    _, headers = actual("/corp/x.png", origin, CORP_UPSTREAM, method=method)
    assert headers == sorted(expected)


def test_cross_origin_resource_policy_is_on_the_proxys_own_answers_too() -> None:
    rejected = decide(POLICY, CorsRequest("GET", "/corp/x", ("https://evil.test",)))
    assert respond_headers(rejected) == [CORP, TEXT, ("Vary", "Origin")]
    assert ("Cross-Origin-Resource-Policy", "cross-origin") in respond_headers(preflight("/corp/x", APP))


def test_without_cross_origin_resource_policy_the_upstreams_header_is_left_alone() -> None:
    _, headers = actual("/exact/x.png", None, CORP_UPSTREAM)
    assert headers == sorted(CORP_UPSTREAM + [("Vary", "Origin")])


def test_options_without_request_method_is_an_actual_request() -> None:
    decision, headers = actual("/exact/x", APP, method="OPTIONS")
    assert (decision.kind, decision.verdict) == ("actual", "allowed")
    assert headers == sorted(BASE + [("Access-Control-Allow-Origin", APP), VARY_ORIGIN])


def test_preflight_response_from_upstream_has_preflight_vary_when_no_origin() -> None:
    decision = decide(POLICY, CorsRequest("OPTIONS", "/exact/x", (), "GET"))
    headers: CIMultiDict[str] = CIMultiDict([("Allow", "GET")])
    finish(decision, headers)
    assert (decision.kind, sorted(headers.items())) == ("no-origin", [("Allow", "GET"), ("Vary", "Origin")])


def test_finish_leaves_a_proxy_answered_decision_alone() -> None:
    decision = preflight("/exact/x", APP)
    headers: CIMultiDict[str] = CIMultiDict([("X-A", "1")])
    finish(decision, headers)
    assert list(headers.items()) == [("X-A", "1")]


# ------------------------------------------------------------ requests from headers

def test_request_from_multidict_sees_a_repeated_origin_and_joins_request_headers() -> None:
    raw = CIMultiDict([("origin", APP), ("Origin", APP), ("Access-Control-Request-Method", "GET"),
                       ("Access-Control-Request-Headers", "a"), ("Access-Control-Request-Headers", "b"),
                       ("Access-Control-Request-Private-Network", "TRUE")])
    request = CorsRequest.from_headers("OPTIONS", "/x", raw)
    assert request == CorsRequest("OPTIONS", "/x", (APP, APP), "GET", "a,b", True)
    assert request.is_preflight and request.origin is None


def test_request_from_plain_dict_is_not_a_preflight_without_request_method() -> None:
    request = CorsRequest.from_headers("OPTIONS", "/x", {"Origin": APP})
    assert request == CorsRequest("OPTIONS", "/x", (APP,))
    assert not request.is_preflight and request.origin == APP


def test_decision_header_escapes_quotes_in_the_detail() -> None:
    decision = preflight("/app/x", APP, "GET", 'X-"q"')
    assert decision.header_value() == 'rule=app; verdict=denied:header; detail="X-\\"q\\" not in allow_headers"'
