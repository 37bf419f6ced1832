"""paths: request-path decoding (dot segments -> BadPath) and the ``*``/``**`` globs (design §3 Paths)."""

from __future__ import annotations

import pytest

from corsproxy.paths import BadPath, compile_glob, compile_paths, decode_path, resolve_dots

GLOBS = [
    pytest.param("/api/**", "/api", True, id="double-star-matches-the-base"),
    pytest.param("/api/**", "/api/", True, id="double-star-matches-trailing-slash"),
    pytest.param("/api/**", "/api/a", True, id="double-star-one-segment"),
    pytest.param("/api/**", "/api/a/b", True, id="double-star-many-segments"),
    pytest.param("/api/**", "/apix", False, id="double-star-not-a-prefix-of-a-segment"),
    pytest.param("/api/**", "/ap", False, id="double-star-shorter"),
    pytest.param("/api/**", "/api%2Fx", False, id="double-star-encoded-slash-is-no-segment"),
    pytest.param("/api/**", "/API/a", False, id="double-star-case-sensitive"),
    pytest.param("/api/*", "/api/a", True, id="star-one-segment"),
    pytest.param("/api/*", "/api", False, id="star-not-the-base"),
    pytest.param("/api/*", "/api/", False, id="star-not-empty"),
    pytest.param("/api/*", "/api/a/b", False, id="star-not-two-segments"),
    pytest.param("/api/*", "/api/a/", False, id="star-not-trailing-slash"),
    pytest.param("/api/*", "/api/a%2Fb", True, id="star-encoded-slash-stays-in-segment"),
    pytest.param("/status", "/status", True, id="literal-itself"),
    pytest.param("/status", "/status/", False, id="literal-not-trailing-slash"),
    pytest.param("/status", "/statusx", False, id="literal-not-longer"),
    pytest.param("/status", "/status/x", False, id="literal-not-below"),
    pytest.param("/a.json", "/aXjson", False, id="literal-dot-is-not-a-regex"),
    pytest.param("/f*.txt", "/foo.txt", True, id="star-inside-a-segment"),
    pytest.param("/f*.txt", "/f/o.txt", False, id="star-inside-a-segment-not-across"),
    pytest.param("/**/x", "/x", True, id="leading-double-star-zero-segments"),
    pytest.param("/**/x", "/a/b/x", True, id="leading-double-star-many-segments"),
    pytest.param("/**", "/", True, id="everything-root"),
    pytest.param("/**", "/a/b", True, id="everything-deep"),
    pytest.param("/", "/", True, id="root-itself"),
    pytest.param("/", "/a", False, id="root-only"),
    pytest.param("/(a)", "/(a)", True, id="regex-characters-are-literal"),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), GLOBS)
def test_glob_matches(pattern: str, path: str, matches: bool) -> None:
    assert compile_paths([pattern]).matches(path) is matches


def test_path_set_matches_when_any_pattern_does() -> None:
    paths = compile_paths(["/public/**", "/status"])
    assert paths.patterns == ("/public/**", "/status")
    assert [paths.matches(p) for p in ("/public/a", "/status", "/statuses", "/private")] == [True, True, False, False]


@pytest.mark.parametrize(("pattern", "message"), [
    pytest.param("api/**", "path pattern 'api/**' must start with '/': write '/api/**'", id="no-leading-slash"),
    pytest.param("/a**", "path pattern '/a**': '**' must be a whole segment, as in '/api/**'",
                 id="double-star-in-word"),
    pytest.param("/a/**b", "path pattern '/a/**b': '**' must be a whole segment, as in '/api/**'",
                 id="double-star-prefix"),
])
def test_bad_glob_is_an_error_naming_the_fix(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        compile_glob(pattern)
    assert str(exc.value) == message


DECODED = [
    pytest.param("/a/b", "/a/b", id="plain"),
    pytest.param("/a/b?x=/../y", "/a/b", id="query-dropped-even-with-dots"),
    pytest.param("/a%20b", "/a b", id="percent-decoded"),
    pytest.param("/a/%C3%A9", "/a/é", id="utf8-decoded"),
    pytest.param("/a%2Fb", "/a%2Fb", id="encoded-slash-kept"),
    pytest.param("/a%2fb", "/a%2Fb", id="encoded-slash-lowercase-kept-as-one-spelling"),
    pytest.param("/a/...", "/a/...", id="three-dots-is-a-name"),
    pytest.param("/a/.b", "/a/.b", id="dotfile-is-a-name"),
    pytest.param("/a/b..", "/a/b..", id="trailing-dots-in-a-name"),
    pytest.param("/a/%252e%252e/", "/a/%2e%2e/", id="double-encoding-decoded-once"),
    pytest.param("/a/%zz", "/a/%zz", id="invalid-escape-left-alone"),
]


@pytest.mark.parametrize(("raw", "decoded"), DECODED)
def test_decode_path(raw: str, decoded: str) -> None:
    assert decode_path(raw) == decoded


BAD_PATHS = [
    pytest.param("/a/./b", id="dot"),
    pytest.param("/a/../b", id="dot-dot"),
    pytest.param("/a/..", id="dot-dot-at-end"),
    pytest.param("/.", id="dot-at-root"),
    pytest.param("/a/%2e/b", id="encoded-dot"),
    pytest.param("/a/%2E%2E/b", id="encoded-dot-dot-uppercase"),
    pytest.param("/a/.%2e/b", id="half-encoded-dot-dot"),
    pytest.param("/public/..%2Fadmin", id="dot-dot-encoded-slash"),
    pytest.param("/public/..%2fadmin", id="dot-dot-encoded-slash-lowercase"),
    pytest.param("/public/%2e%2e%2fadmin", id="all-encoded"),
    pytest.param("/public/..\\admin", id="backslash"),
    pytest.param("/public\\..\\admin", id="backslashes"),
    pytest.param("/public/..%5Cadmin", id="encoded-backslash"),
    pytest.param("/api%2F..%2Fadmin", id="dot-dot-between-encoded-slashes"),
    pytest.param("/public/..;/admin", id="dot-dot-with-path-parameter"),
    pytest.param("/public/.;x/admin", id="dot-with-path-parameter"),
]


@pytest.mark.parametrize("raw", BAD_PATHS)
def test_dot_segments_in_any_spelling_are_a_bad_path(raw: str) -> None:
    with pytest.raises(BadPath) as exc:
        decode_path(raw)
    assert str(exc.value) == f"path {raw!r} has a '.' or '..' segment"


@pytest.mark.parametrize(("raw", "resolved"), [
    ("/public/..%2Fadmin", "/admin"),
    ("/a/./b/../c?x=1", "/a/c"),
    ("/../..", "/"),
], ids=["encoded", "mixed", "above-root"])
def test_resolve_dots_picks_where_a_bad_path_would_land(raw: str, resolved: str) -> None:
    assert resolve_dots(raw) == resolved
