"""The browser model of ``corsproxy explain``: Fetch safelists, curl command lines (design §2)."""

from __future__ import annotations

import pytest

from corsproxy.explain import BrowserRequest, from_curl, preflight_reasons, safelisted, target_of, unsafe_names


@pytest.mark.parametrize(("name", "value", "expected"), [
    pytest.param("Accept", "*/*", True, id="accept"),
    pytest.param("accept", 'text/html; q="x"', False, id="accept-with-a-quote"),
    pytest.param("Content-Type", "text/plain", True, id="text-plain"),
    pytest.param("Content-Type", "Multipart/Form-Data; boundary=x", True, id="multipart-any-case"),
    pytest.param("Content-Type", "application/json", False, id="json"),
    pytest.param("Content-Type", None, False, id="content-type-without-a-value"),
    pytest.param("Content-Type", "text/plain; " + "x" * 130, False, id="value-over-128-bytes"),
    pytest.param("Content-Language", "en-US", True, id="content-language"),
    pytest.param("Range", "bytes=5-", True, id="open-range"),
    pytest.param("Range", "bytes=-5", False, id="suffix-range"),
    pytest.param("X-Token", "t", False, id="other-name"),
    pytest.param("Authorization", "Bearer x", False, id="authorization"),
])
def test_safelisted_follows_the_fetch_standard(name: str, value: str | None, expected: bool) -> None:
    assert safelisted(name, value) is expected


def test_unsafe_names_are_lowercased_sorted_and_unique() -> None:
    headers = [("X-B", "1"), ("x-a", "2"), ("X-A", "3"), ("Accept", "*/*")]
    assert unsafe_names(headers) == ["x-a", "x-b"]


def test_safelisted_values_over_1024_bytes_together_make_every_one_unsafe() -> None:
    headers = [("Accept", "a" * 120)] * 9
    assert unsafe_names(headers) == ["accept"]


def test_preflight_reasons_name_the_method_and_each_header() -> None:
    request = BrowserRequest("https://a.example", "PATCH", "/x", (("X-Token", None), ("Accept", "*/*")))
    assert preflight_reasons(request) == ["PATCH is not GET, HEAD or POST", "x-token is not a CORS-safelisted header"]
    assert preflight_reasons(BrowserRequest("https://a.example", "POST", "/x")) == []


def test_from_curl_keeps_only_the_headers_the_page_set() -> None:
    request = from_curl(["curl", "https://api.example/x?y=1", "-H", "Origin: https://a.example", "-H", "X-Token: t",
                         "-H", "Cookie: s=1", "-H", "sec-fetch-site: cross-site", "-b", "s=1", "--compressed"])
    assert request == BrowserRequest("https://a.example", "GET", "/x?y=1", (("X-Token", "t"),))


def test_from_curl_form_data_is_a_multipart_post() -> None:
    request = from_curl(["curl", "https://api.example/up", "-F", "file=@a.txt", "-H", "Origin: https://a.example"])
    assert (request.method, request.headers, request.has_body) == (
        "POST", (("Content-Type", "multipart/form-data"),), True)
    assert preflight_reasons(request) == []


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["curl"], "the curl command has no URL", id="no-url"),
    pytest.param(["curl", "https://a/x", "https://b/y"], "two URLs in the curl command ('https://a/x' and "
                 "'https://b/y'); give one", id="two-urls"),
    pytest.param(["curl", "https://a/x", "-H"], "curl option -H needs a value", id="option-without-value"),
    pytest.param(["curl", "https://a/x", "-H", "X-Token"], "curl header 'X-Token' is not 'Name: value'",
                 id="header-without-colon"),
])
def test_from_curl_says_what_it_cannot_read(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        from_curl(argv)
    assert str(caught.value) == message


def test_target_of_a_url_is_its_path_and_query() -> None:
    assert target_of("https://api.example.com") == "/"
    assert target_of("https://api.example.com/a/b?c=d#frag") == "/a/b?c=d"
