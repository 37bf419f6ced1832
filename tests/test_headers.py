"""headers: token lists, hop-by-hop names, Vary merging, Location rewriting (design §4 Forwarding)."""

from __future__ import annotations

import pytest
from yarl import URL

from corsproxy.headers import HOP_BY_HOP, hop_by_hop, merge_vary, rewrite_location, split_tokens

FIXED_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
                    "te", "trailer", "transfer-encoding", "upgrade"}


def test_split_tokens_drops_empty_items_and_spaces() -> None:
    assert split_tokens(" a, b,,c ,") == ["a", "b", "c"]


def test_hop_by_hop_is_the_fixed_set_without_connection_names() -> None:
    assert hop_by_hop([]) == HOP_BY_HOP == FIXED_HOP_BY_HOP


def test_hop_by_hop_adds_every_name_connection_lists_lowercased() -> None:
    assert hop_by_hop(["Keep-Alive, X-Foo", "close"]) == FIXED_HOP_BY_HOP | {"x-foo", "close"}


@pytest.mark.parametrize(("existing", "add", "merged"), [
    pytest.param([], ["Origin"], "Origin", id="none-yet"),
    pytest.param([""], ["Origin"], "Origin", id="empty-value"),
    pytest.param(["Accept-Encoding"], ["Origin"], "Accept-Encoding, Origin", id="appended"),
    pytest.param(["origin"], ["Origin"], "origin", id="no-duplicate-any-case"),
    pytest.param(["Accept-Encoding", "Accept-Language"], ["Origin"], "Accept-Encoding, Accept-Language, Origin",
                 id="several-values-merged-into-one"),
    pytest.param(["a,,b ,"], ["Origin", "a"], "a, b, Origin", id="messy-list"),
    pytest.param(["Origin"], ["Origin", "Access-Control-Request-Method"], "Origin, Access-Control-Request-Method",
                 id="preflight-names"),
    pytest.param(["*"], ["Origin"], "*", id="star-stays-star"),
    pytest.param(["Accept, *"], ["Origin"], "*", id="star-inside-a-list-wins"),
])
def test_merge_vary(existing: list[str], add: list[str], merged: str) -> None:
    assert merge_vary(existing, add) == merged


UPSTREAM = URL("http://up:9000/v1")
PROXY = "http://proxy:8080"


@pytest.mark.parametrize(("location", "rewritten"), [
    pytest.param("http://up:9000/v1/x", "http://proxy:8080/x", id="base-path-taken-off"),
    pytest.param("http://up:9000/v1", "http://proxy:8080/", id="base-itself"),
    pytest.param("http://up:9000/v1/", "http://proxy:8080/", id="base-with-slash"),
    pytest.param("http://UP:9000/v1/x?a=1#f", "http://proxy:8080/x?a=1#f", id="host-case-query-fragment"),
    pytest.param("http://up:9000/v1/x%2Fy", "http://proxy:8080/x%2Fy", id="encoding-kept"),
    pytest.param("//up:9000/v1/x", "http://proxy:8080/x", id="scheme-relative"),
    pytest.param("http://up:9000/v10", None, id="not-a-segment-of-the-base"),
    pytest.param("http://up:9000/x", None, id="outside-the-base"),
    pytest.param("http://up:9000", None, id="origin-without-base"),
    pytest.param("http://up:9000/V1/x", None, id="base-is-case-sensitive"),
    pytest.param("http://up:9000/v1/../x", None, id="dot-segments-leave-the-base"),
    pytest.param("https://up:9000/v1/x", None, id="other-scheme"),
    pytest.param("http://up:9001/v1/x", None, id="other-port"),
    pytest.param("http://other/v1/x", None, id="other-host"),
    pytest.param("/v1/x", None, id="relative"),
    pytest.param("http://[::1", None, id="unparseable"),
])
def test_rewrite_location_with_base_path(location: str, rewritten: str | None) -> None:
    assert rewrite_location(location, UPSTREAM, PROXY) == rewritten


@pytest.mark.parametrize(("location", "rewritten"), [
    pytest.param("http://up/x", "https://p/x", id="path"),
    pytest.param("http://up:80/x", "https://p/x", id="explicit-default-port"),
    pytest.param("http://up", "https://p/", id="bare-origin"),
    pytest.param("http://up?q=1", "https://p/?q=1", id="query-only"),
])
def test_rewrite_location_without_base_path(location: str, rewritten: str) -> None:
    assert rewrite_location(location, URL("http://up"), "https://p") == rewritten
