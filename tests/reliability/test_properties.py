"""Property-based tests of origin matching and the CORS policy (pure modules, plain calls).

Each property is checked against an oracle written here from the contract (design §3, §4),
not from the code: origins are generated from their parts (scheme, labels, port) so the
oracle knows what they are, and lookalike tricks are generated on purpose.
"""

from __future__ import annotations

import functools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from corsproxy import config as cfg
from corsproxy.origins import compile_origins
from corsproxy.policy import ACAC, ACAO, CorsRequest, Decision, Policy, decide, finish, respond_headers

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ origins, from parts

SCHEMES = ["https", "http", "HTTPS", "wss", "ftp", "chrome-extension"]
LABELS = ["app", "api", "example", "EXAMPLE", "com", "evil", "evil-example", "examplecom", "pr-12", "preview",
          "dev", "org", "localhost", "xn--bcher-kva", "a", "_x", "x-"]
PORTS = [None, 80, 443, 8080, 8443, 65535]
# Appended to a well-formed origin, each makes it something a browser would never send as an Origin.
JUNK = ["/", " ", "\r\nX-Evil: 1", "@evil.com", "/.evil.com", "?", "#", ":", ":99999", "\x00", "ä", ".", ",https://a.com"]


@st.composite
def origins(draw: st.DrawFn) -> tuple[str, tuple[str, tuple[str, ...], int | None] | None]:
    """An Origin header value and its parts (None when it is junk, which no entry may allow)."""
    scheme = draw(st.sampled_from(SCHEMES))
    labels = tuple(draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=4)))
    port = draw(st.sampled_from(PORTS))
    text = f"{scheme}://{'.'.join(labels)}" + (f":{port}" if port is not None else "")
    junk = draw(st.none() | st.sampled_from(JUNK))
    if junk is not None:
        return text + junk, None
    return text, (scheme, labels, port)


def normal(parts: tuple[str, tuple[str, ...], int | None]) -> tuple[str, tuple[str, ...], int | None]:
    """Scheme and host lowercased, a default port dropped (design §3: compare case-insensitively)."""
    scheme, labels, port = parts
    scheme = scheme.lower()
    if (scheme, port) in {("http", 80), ("https", 443), ("wss", 443)}:
        port = None
    return scheme, tuple(label.lower() for label in labels), port


def host_ok(labels: tuple[str, ...]) -> bool:
    # A DNS label may not end with '-'; a host with one is not an origin anyone can be.
    return all(not label.endswith("-") for label in labels)


def oracle_wildcard(parts: tuple[str, tuple[str, ...], int | None] | None, suffix: tuple[str, ...],
                    port: int | None) -> bool:
    """`https://*.<suffix>[:port]`: https, one or more whole labels before the suffix, the port exactly."""
    if parts is None:
        return False
    scheme, labels, got_port = normal(parts)
    return (scheme == "https" and got_port == port and len(labels) > len(suffix)
            and labels[-len(suffix):] == suffix)


@FAST
@given(origins())
def test_label_wildcard_matches_only_subdomains_never_apex_suffix_or_lookalike(drawn) -> None:
    value, parts = drawn
    allowed = compile_origins(["https://*.example.com"]).allows(value)
    assert allowed == oracle_wildcard(parts, ("example", "com"), None), value


@FAST
@given(origins())
def test_label_wildcard_with_port_matches_that_port_only(drawn) -> None:
    value, parts = drawn
    allowed = compile_origins(["https://*.example.com:8443"]).allows(value)
    assert allowed == oracle_wildcard(parts, ("example", "com"), 8443), value


@FAST
@given(origins())
def test_exact_entry_matches_only_the_same_origin_up_to_case_and_default_port(drawn) -> None:
    value, parts = drawn
    allowed = compile_origins(["https://app.example.com"]).allows(value)
    expected = parts is not None and normal(parts) == ("https", ("app", "example", "com"), None)
    assert allowed == expected, value


@FAST
@given(origins())
def test_any_port_entry_matches_that_scheme_and_host_on_any_port(drawn) -> None:
    value, parts = drawn
    allowed = compile_origins(["http://localhost:*"]).allows(value)
    expected = parts is not None and normal(parts)[:2] == ("http", ("localhost",))
    assert allowed == expected, value


@FAST
@given(st.text(max_size=40), st.text(max_size=40), st.integers(0, 10**6))
def test_regex_entry_only_ever_matches_the_whole_origin(prefix: str, suffix: str, n: int) -> None:
    # The author forgot the anchors; the match must still be whole (design §3: re.fullmatch).
    pattern = r"https://pr-[0-9]+\.preview\.example\.dev"
    core = f"https://pr-{n}.preview.example.dev"
    value = prefix + core + suffix
    allowed = compile_origins([{"regex": pattern}]).allows(value)
    assert allowed == (re.fullmatch(pattern, value) is not None), value
    assert allowed == (prefix == "" and suffix == ""), value


@FAST
@given(st.text(max_size=60))
def test_arbitrary_text_is_allowed_only_if_it_is_a_subdomain_origin(value: str) -> None:
    allowed = compile_origins(["https://*.example.com"]).allows(value)
    if allowed:
        assert re.fullmatch(r"https://([a-z0-9_-]+\.)+example\.com(:443)?", value, re.I | re.A), value


# ------------------------------------------------------------------ the policy

ENTRIES = {
    "exact": "https://app.example.com",
    "wild": "https://*.example.com",
    "localhost": "http://localhost:*",
    "regex": {"regex": "^https://pr-[0-9]+\\.preview\\.example\\.dev$"},
    "null": "null",
    "star": "*",
}
METHOD_POOL = ["GET", "POST", "PUT", "PATCH", "DELETE", "patch", "get", "X-CUSTOM", "BAD METHOD", "", "G(T"]
HEADER_POOL = ["Content-Type", "content-type", "Authorization", "X-Token", "X-Other", "Bad Header", "X:Y", "Ä"]
ORIGIN_EXTRAS = ["null", "https://pr-7.preview.example.dev", "https://pr-7.preview.example.dev.evil.com",
                 "http://localhost", "http://localhost:3000", ""]


@st.composite
def rules(draw: st.DrawFn) -> dict:
    creds = draw(st.booleans())
    kinds = draw(st.sets(st.sampled_from(sorted(ENTRIES)), min_size=1))
    if creds:
        kinds.discard("star")  # a config error (design §3); tested by the config tests
        kinds = kinds or {"exact"}
    return {
        "kinds": tuple(sorted(kinds)),
        "creds": creds,
        "methods": draw(st.sampled_from(["*", ("GET", "POST"), ("GET", "PUT", "PATCH", "DELETE")])),
        "headers": draw(st.sampled_from(["*", (), ("Content-Type", "Authorization")])),
        "pna": draw(st.booleans()),
        "disallowed": draw(st.sampled_from(["forward", "reject"])),
        "denied_preflight": draw(st.sampled_from(["reject", "forward"])),
        "upstream_cors": draw(st.sampled_from(["replace", "keep"])),
    }


@functools.lru_cache(maxsize=512)
def policy_for(kinds: tuple[str, ...], creds: bool, methods, headers, pna: bool, disallowed: str,
               denied_preflight: str, upstream_cors: str) -> Policy:
    import json

    rule = {
        "name": "r", "paths": ["/api/**"], "allow_origins": [ENTRIES[k] for k in kinds],
        "allow_methods": methods if methods == "*" else list(methods), "allow_credentials": creds,
        "allow_private_network": pna, "disallowed_origin": disallowed, "denied_preflight": denied_preflight,
        "upstream_cors": upstream_cors,
    }
    if headers:
        rule["allow_headers"] = headers if headers == "*" else list(headers)
    text = json.dumps({"upstream": {"url": "http://127.0.0.1:9/v1"}, "admin": None, "rules": [rule]})
    return Policy.from_config(cfg.parse(text, "prop.yaml", env={}))


def oracle_origin_allowed(kinds: tuple[str, ...], value: str, parts) -> bool:
    if "star" in kinds:
        return True
    if value == "null":
        return "null" in kinds
    if parts is None:
        return value in {"https://pr-7.preview.example.dev", "http://localhost", "http://localhost:3000"} and (
            "regex" in kinds if "preview" in value else "localhost" in kinds)
    if not host_ok(parts[1]):
        return False
    n = normal(parts)
    return (("exact" in kinds and n == ("https", ("app", "example", "com"), None))
            or ("wild" in kinds and oracle_wildcard(parts, ("example", "com"), None))
            or ("localhost" in kinds and n[:2] == ("http", ("localhost",))))


@st.composite
def requests(draw: st.DrawFn) -> tuple[CorsRequest, list[tuple[str, object]]]:
    """A request to a path the rule covers, with 0-2 Origin values, and the drawn origins' parts."""
    drawn = draw(st.lists(origins() | st.sampled_from(ORIGIN_EXTRAS).map(lambda v: (v, None)), max_size=2))
    preflight = draw(st.booleans())
    method = "OPTIONS" if preflight else draw(st.sampled_from(["GET", "POST", "OPTIONS", "DELETE"]))
    acrm = draw(st.sampled_from(METHOD_POOL)) if preflight else None
    names = draw(st.lists(st.sampled_from(HEADER_POOL), max_size=3))
    request = CorsRequest(method=method, path="/api/x", origins=tuple(v for v, _ in drawn), request_method=acrm,
                          request_headers=draw(st.sampled_from([", ", ","])).join(names),
                          private_network=draw(st.booleans()) if preflight else False)
    return request, drawn


TCHAR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# An upstream that reflects any Origin with credentials: the worst neighbour to have.
REFLECTING = "__reflect__"


def response_headers(decision: Decision, request: CorsRequest) -> CIMultiDict[str]:
    """The headers the client would get: the proxy's own answer, or a reflecting upstream's, finished."""
    if decision.status is not None and decision.enforce:
        return CIMultiDict(respond_headers(decision))
    upstream = CIMultiDict({"Content-Type": "text/plain", "Vary": "Accept-Encoding"})
    if request.origins:
        upstream[ACAO] = request.origins[0]
        upstream[ACAC] = "true"
    finish(decision, upstream)
    return upstream


@FAST
@given(rules(), requests())
def test_an_origin_no_entry_allows_is_never_echoed(rule: dict, drawn) -> None:
    request, parts = drawn
    decision = decide(policy_for(**rule), request)
    headers = response_headers(decision, request)
    sent = headers.getall(ACAO, [])
    assert len(sent) <= 1, sent
    if sent and sent[0] != "*":
        assert len(request.origins) == 1 and sent[0] == request.origins[0]
        # "keep" passes an upstream answer naming the request's own origin, and only an allowed one
        assert oracle_origin_allowed(rule["kinds"], *parts[0]), (rule, request, headers)


@FAST
@given(rules(), requests())
def test_star_never_goes_out_with_credentials(rule: dict, drawn) -> None:
    request, _ = drawn
    decision = decide(policy_for(**rule), request)
    headers = response_headers(decision, request)
    assert not (headers.get(ACAO) == "*" and headers.get(ACAC) == "true"), headers
    if ACAC in headers and decision.kind == "actual":  # keep never grants credentials the rule does not
        assert rule["creds"], (rule, request, headers)


@FAST
@given(rules(), requests())
def test_vary_origin_is_present_whenever_the_answer_depends_on_origin(rule: dict, drawn) -> None:
    request, _ = drawn
    decision = decide(policy_for(**rule), request)
    headers = response_headers(decision, request)
    vary = [v.strip().lower() for value in headers.getall("Vary", []) for v in value.split(",")]
    assert "origin" in vary or vary == ["*"], (decision, headers)
    if decision.kind == "preflight":
        assert {"access-control-request-method", "access-control-request-headers"} <= set(vary)


@FAST
@given(rules(), requests())
def test_preflight_is_allowed_exactly_when_all_its_checks_pass(rule: dict, drawn) -> None:
    request, parts = drawn
    if not request.is_preflight:
        return
    decision = decide(policy_for(**rule), request)
    method = request.request_method or ""
    names = [n.strip() for n in request.request_headers.split(",") if n.strip()]
    allowed_headers = {h.lower() for h in rule["headers"]} if rule["headers"] != "*" else None
    checks = [
        len(request.origins) == 1 and oracle_origin_allowed(rule["kinds"], *parts[0]),
        TCHAR.fullmatch(method) is not None and (rule["methods"] == "*" or method in rule["methods"]),
        all(TCHAR.fullmatch(n) and (allowed_headers is None or n.lower() in allowed_headers) for n in names),
        rule["pna"] or not request.private_network,
    ]
    value = request.origins[0] if len(request.origins) == 1 else None
    if value is not None and parts[0][1] is None and (value not in ORIGIN_EXTRAS or value == ""):
        checks[0] = False  # junk (or an empty Origin) is never a valid origin, even for "*"
    assert (decision.verdict == "allowed") == all(checks), (rule, request, decision)
    headers = response_headers(decision, request)
    if decision.verdict == "allowed":
        assert decision.status == 204 and headers[ACAO] in ("*", request.origins[0])
    elif rule["denied_preflight"] == "reject":
        assert decision.status == 403
        assert not [n for n in headers if n.lower().startswith("access-control-")], headers


def test_keep_mode_strips_an_upstream_reflection_of_a_repeated_origin_under_a_star_rule() -> None:
    # Found by the properties above: a "*" rule answers a doubled Origin with a literal *, and
    # upstream_cors: keep used to pass the upstream's reflection of it (with credentials) unchanged.
    policy = policy_for(("star",), False, ("GET",), (), False, "forward", "reject", "keep")
    request = CorsRequest(method="GET", path="/api/x", origins=("https://evil.com", "https://evil.com"))
    headers = response_headers(decide(policy, request), request)
    assert {k: v for k, v in headers.items() if k.lower().startswith("access-control-")} == {ACAO: "*"}
