"""origins: parsing an Origin header, classifying allow_origins entries, entry errors (design §3 Origins)."""

from __future__ import annotations

import re

import pytest

from corsproxy.origins import ANY_PORT, IndexedError, Origin, OriginSet, Wildcard, compile_origins, parse_origin

VALID = [
    pytest.param("https://app.example.com", Origin("https", "app.example.com", None), id="https"),
    pytest.param("HTTPS://APP.Example.COM", Origin("https", "app.example.com", None), id="uppercase"),
    pytest.param("https://a.com:443", Origin("https", "a.com", None), id="default-port-dropped"),
    pytest.param("http://a.com:80", Origin("http", "a.com", None), id="http-default-port-dropped"),
    pytest.param("http://a.com:443", Origin("http", "a.com", 443), id="other-schemes-default-port-kept"),
    pytest.param("https://a.com:65535", Origin("https", "a.com", 65535), id="highest-port"),
    pytest.param("https://a.com.", Origin("https", "a.com.", None), id="trailing-dot-kept-as-another-host"),
    pytest.param("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080), id="ipv4"),
    pytest.param("http://[::1]:8080", Origin("http", "[::1]", 8080), id="ipv6"),
    pytest.param("http://[0:0:0:0:0:0:0:1]", Origin("http", "[::1]", None), id="ipv6-canonical"),
    pytest.param("http://[FE80::1]", Origin("http", "[fe80::1]", None), id="ipv6-lowercase"),
    pytest.param("https://xn--bcher-kva.example", Origin("https", "xn--bcher-kva.example", None), id="punycode"),
    pytest.param("chrome-extension://abcdefgh", Origin("chrome-extension", "abcdefgh", None), id="extension"),
    pytest.param("capacitor://localhost", Origin("capacitor", "localhost", None), id="capacitor"),
]


@pytest.mark.parametrize(("value", "origin"), VALID)
def test_parse_origin_valid(value: str, origin: Origin) -> None:
    assert parse_origin(value) == origin


def test_origin_serializes_without_a_default_port() -> None:
    assert [str(parse_origin(v)) for v in ("HTTPS://A.COM:443", "http://a.com:8080")] == \
        ["https://a.com", "http://a.com:8080"]


INVALID = [
    pytest.param("null", id="null-is-a-literal-not-parsed"),
    pytest.param("", id="empty"),
    pytest.param("app.example.com", id="no-scheme"),
    pytest.param("https://", id="no-host"),
    pytest.param("https://a.com/", id="trailing-slash"),
    pytest.param("https://a.com/x", id="path"),
    pytest.param("https://a.com?q", id="query"),
    pytest.param("https://a.com#f", id="fragment"),
    pytest.param("https://u:p@a.com", id="userinfo"),
    pytest.param("https://a.com\r\n", id="crlf"),
    pytest.param("https://a.com\n", id="trailing-newline"),
    pytest.param("https://a .com", id="space-inside"),
    pytest.param(" https://a.com", id="leading-space"),
    pytest.param("https://a.com ", id="trailing-space"),
    pytest.param("https://bücher.example", id="non-ascii"),
    pytest.param("https://a.com:65536", id="port-too-big"),
    pytest.param("https://a.com:99999", id="port-far-too-big"),
    pytest.param("https://a.com:0", id="port-zero"),
    pytest.param("https://a.com:0443", id="port-leading-zero"),
    pytest.param("https://a.com:", id="empty-port"),
    pytest.param("https://a.com:-1", id="negative-port"),
    pytest.param("https://a..com", id="empty-label"),
    pytest.param("https://a.com..", id="two-trailing-dots"),
    pytest.param("http://[::1", id="ipv6-unclosed"),
    pytest.param("http://[:::::]", id="ipv6-invalid"),
    pytest.param("http://::1", id="ipv6-unbracketed"),
    pytest.param("https://*.example.com", id="wildcard-is-not-an-origin"),
    pytest.param("https://a.com, https://b.com", id="list"),
    pytest.param("1https://a.com", id="scheme-starts-with-digit"),
    pytest.param("https://" + "a" * 505, id="longer-than-any-origin"),
]


def test_longest_real_origin_still_parses() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, the DNS maximum
    assert parse_origin(f"https://{host}:65535") == Origin("https", host, 65535)


@pytest.mark.parametrize("value", INVALID)
def test_parse_origin_invalid(value: str) -> None:
    assert parse_origin(value) is None


def test_entries_are_classified_once() -> None:
    entries: list[str | dict[str, str]] = [
        "https://App.Example.com:443", "http://b.com:8080", "https://*.example.com", "https://*.example.com:8443",
        "http://localhost:*", "https://*.dev.example:*", "null", {"regex": r"https://pr-\d+\.example\.dev"},
    ]
    assert compile_origins(entries) == OriginSet(
        allow_all=False,
        allow_null=True,
        exact=frozenset({"https://app.example.com", "http://b.com:8080"}),
        wildcards=(Wildcard("https", ".example.com", "", None), Wildcard("https", ".example.com", "", 8443),
                   Wildcard("http", "", "localhost", ANY_PORT), Wildcard("https", ".dev.example", "", ANY_PORT)),
        regexes=(re.compile(r"https://pr-\d+\.example\.dev"),),
    )


def test_star_allows_everything_including_null_and_invalid_values() -> None:
    star = compile_origins(["*"])
    assert star.allow_all
    assert all(star.allows(v) for v in ("https://a.com", "null", "https://a.com/"))


@pytest.mark.parametrize(("entry", "value", "allowed"), [
    pytest.param("https://*.example.com:*", "https://a.example.com:1234", True, id="both-wildcards"),
    pytest.param("https://*.example.com:*", "https://a.example.com", True, id="both-wildcards-no-port"),
    pytest.param("https://*.example.com:*", "https://example.com:1234", False, id="both-wildcards-apex"),
    pytest.param("https://*.example.com", "https://a.example.com:443", True, id="default-port-equals-none"),
    pytest.param("https://a.com.", "https://a.com.", True, id="trailing-dot-listed"),
    pytest.param("https://a.com.", "https://a.com", False, id="trailing-dot-listed-plain-sent"),
    pytest.param("http://[::1]:3000", "http://[0::1]:3000", True, id="ipv6-any-spelling"),
    pytest.param({"regex": "https://a\\.com"}, "HTTPS://A.COM", False, id="regex-on-the-origin-as-sent"),
    pytest.param({"regex": "https://a\\.com|https://b\\.com"}, "https://a.com.evil", False,
                 id="regex-alternation-anchored-as-a-whole"),
    pytest.param({"regex": ".*"}, "https://a.com/", False, id="regex-never-sees-an-invalid-origin"),
    pytest.param({"regex": ".*"}, "null", False, id="regex-never-matches-null"),
])
def test_allows(entry: str | dict[str, str], value: str, allowed: bool) -> None:
    assert compile_origins([entry]).allows(value) is allowed


ENTRY_ERRORS = [
    pytest.param("https://app.example.com/",
                 "'https://app.example.com/' has a path, query or trailing '/'; an origin is scheme://host[:port]: "
                 "write 'https://app.example.com'", id="trailing-slash"),
    pytest.param("https://app.example.com/api",
                 "'https://app.example.com/api' has a path, query or trailing '/'; an origin is "
                 "scheme://host[:port]: write 'https://app.example.com'", id="path"),
    pytest.param("app.example.com", "'app.example.com' has no scheme; write e.g. 'https://app.example.com'",
                 id="no-scheme"),
    pytest.param("https://a.com:99999",
                 "'https://a.com:99999': the port must be a number from 1 to 65535 without leading zeros, or left out",
                 id="port-out-of-range"),
    pytest.param("https://a.com:0",
                 "'https://a.com:0': the port must be a number from 1 to 65535 without leading zeros, or left out",
                 id="port-zero"),
    pytest.param("https://u@a.com",
                 "'https://u@a.com' is not an origin; write scheme://host[:port], e.g. 'https://app.example.com'",
                 id="userinfo"),
    pytest.param("https://a.*.com",
                 "'https://a.*.com': '*' may only stand as whole leading labels ('https://*.example.com') or as the "
                 "port ('http://localhost:*'); for anything else use {regex: '...'}", id="wildcard-in-the-middle"),
    pytest.param("https://*example.com",
                 "'https://*example.com': '*' may only stand as whole leading labels ('https://*.example.com') or as "
                 "the port ('http://localhost:*'); for anything else use {regex: '...'}", id="wildcard-inside-label"),
    pytest.param("*.example.com",
                 "'*.example.com': '*' may only stand as whole leading labels ('https://*.example.com') or as the "
                 "port ('http://localhost:*'); for anything else use {regex: '...'}", id="wildcard-without-scheme"),
    pytest.param("chrome-extension://*.abc",
                 "'chrome-extension://*.abc': wildcards are for http/https origins only; list chrome-extension:// "
                 "origins exactly", id="wildcard-other-scheme"),
    pytest.param("https://*.exa_mple-.com", "'https://*.exa_mple-.com': 'exa_mple-.com' is not a valid host name; "
                 "labels are letters, digits and inner '-' (punycode for others), as in 'https://*.example.com'",
                 id="wildcard-bad-label"),
    pytest.param("https://*.example.com:0", "'https://*.example.com:0': port 0 is out of range 1-65535",
                 id="wildcard-port-zero"),
    pytest.param("http://*.0.0.1", "'http://*.0.0.1': '*.' is for subdomains of a domain name, not an IP address; "
                 "list each address exactly", id="wildcard-over-an-ip-address"),
    pytest.param("NULL", "'NULL': browsers send the null origin as lowercase 'null'; write 'null'",
                 id="null-uppercase"),
    pytest.param(" https://a.com", "' https://a.com' has spaces around it; write 'https://a.com'", id="spaces"),
    pytest.param({"regex": "("}, "regex '(' does not compile: missing ), unterminated subpattern at position 0; "
                 "fix the pattern (Python re syntax)", id="regex-does-not-compile"),
    pytest.param({"rgx": "a"}, "an origin pattern is written {regex: '^https://[a-z]+\\.example\\.com$'}",
                 id="regex-misspelt"),
]


@pytest.mark.parametrize(("entry", "message"), ENTRY_ERRORS)
def test_bad_entry_is_an_error_naming_the_fix_and_its_index(entry: str | dict[str, str], message: str) -> None:
    with pytest.raises(IndexedError) as exc:
        compile_origins(["https://ok.example", entry])
    assert (exc.value.index, str(exc.value)) == (1, message)
