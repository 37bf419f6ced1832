"""``corsproxy check`` risky-rule warnings (design §5): message and FILE:LINE for each, --strict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corsproxy.cli import main
from corsproxy.lint import regex_overreach
from corsproxy.origins import public_suffix_wildcard

ROOT = Path(__file__).resolve().parent.parent
HEAD = "upstream: {url: 'http://127.0.0.1:9000'}\n"


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, *flags: str) -> tuple[int, list[str]]:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + body)
    code = main(["check", "-c", str(path), *flags])
    return code, [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]


def test_null_origin_is_warned_about_with_its_line(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - name: app
    allow_origins:
      - https://app.example.com
      - "null"
""")
    assert code == 0
    assert warnings == [f"{tmp_path}/c.yaml:6: warning: rules[0].allow_origins[1]: 'null' is the origin of sandboxed "
                        "frames and file: pages, which any site can create; allow it only if you must"]


def test_plain_http_origin_with_credentials_is_warned_about_but_localhost_is_not(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - allow_credentials: true
    allow_origins:
      - http://localhost:*
      - http://127.0.0.1:3000
      - http://app.example.com
      - https://app.example.com
""")
    assert code == 0
    assert warnings == [f"{tmp_path}/c.yaml:7: warning: rules[0].allow_origins[2]: 'http://app.example.com' is plain "
                        "http:// with allow_credentials: anyone on the network path can impersonate it and read "
                        "users' authenticated responses; use https:// (only localhost is exempt)"]


def test_wildcard_over_a_public_suffix_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - allow_origins:
      - https://*.com
      - https://*.example.com
      - https://*.co.uk
      - https://*.example.co.uk
      - http://*.localhost:*
      - https://*.github.io
      - https://*.herokuapp.com
      - https://*.myorg.github.io
      - https://*.corp
""")
    assert code == 0
    why = ("admits every site under a public suffix: anyone can register one and read your API from it; name your "
           "own domain, e.g. 'https://*.example.com'")
    assert warnings == [f"{tmp_path}/c.yaml:4: warning: rules[0].allow_origins[0]: 'https://*.com' {why}",
                        f"{tmp_path}/c.yaml:6: warning: rules[0].allow_origins[2]: 'https://*.co.uk' {why}",
                        f"{tmp_path}/c.yaml:9: warning: rules[0].allow_origins[5]: 'https://*.github.io' {why}",
                        f"{tmp_path}/c.yaml:10: warning: rules[0].allow_origins[6]: 'https://*.herokuapp.com' {why}"]


@pytest.mark.parametrize(("host", "public"), [
    ("com", True), ("co.uk", True), ("github.io", True), ("herokuapp.com", True), ("s3.amazonaws.com", True),
    ("example.com", False), ("myorg.github.io", False), ("localhost", False), ("corp", False), ("COM.", True),
])
def test_public_suffix_wildcard_uses_the_public_suffix_list_icann_and_private(host: str, public: bool) -> None:
    assert public_suffix_wildcard(host) is public


def test_a_regex_spanning_labels_under_a_public_suffix_is_warned_about():
    assert regex_overreach(r"^https://.*\.github\.io$") == (
        "regex '^https://.*\\.github\\.io$' also admits 'https://evil.github.io': github.io is a public suffix, "
        "where anyone can get a subdomain; match your own names under it")


def test_plain_http_origin_without_credentials_is_not_warned_about(tmp_path, capsys):
    assert check(tmp_path, capsys, "rules:\n  - allow_origins: [http://app.example.com]\n") == (0, [])


def test_regex_with_an_unescaped_dot_names_an_origin_it_wrongly_admits(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - name: app
    allow_origins:
      - regex: '^https://app.example.com$'
""")
    assert warnings == [f"{tmp_path}/c.yaml:5: warning: rules[0].allow_origins[0]: regex '^https://app.example.com$' "
                        "also admits 'https://appXexample.com': an unescaped '.' in the host matches any character; "
                        "write \\. for a literal dot"]
    assert re.fullmatch("^https://app.example.com$", "https://appXexample.com")


@pytest.mark.parametrize(("pattern", "admitted"), [
    (r"^https://api.corp.internal$", "https://apiXcorp.internal"),
    (r"^https://(www\.)?shop.example$", "https://www.shopXexample"),
    (r"https://pr-[0-9]+\.preview.example\.dev", "https://pr-0.previewXexample.dev"),
    (r"^https://app.*$", "https://app.evil.com"),
    (r"^https://.*example\.com$", "https://evilexample.com"),
    (r"^https://[a-z]+\.example\.com.*$", "https://a.example.com.evil.com"),
], ids=["dot", "dot-after-group", "dot-unanchored", "dot-star-at-end", "dot-star-glued", "dot-star-after-tld"])
def test_regex_overreach_is_found_by_mutation_and_really_admitted(pattern, admitted):
    why = regex_overreach(pattern)
    assert why is not None and f"also admits '{admitted}'" in why
    assert re.fullmatch(pattern, admitted)


@pytest.mark.parametrize("pattern", [
    r"^https://app\.example\.com$",
    r"^https://pr-[0-9]+\.preview\.example\.dev$",
    r"^https://.*\.example\.com$",  # extra labels under example.com: what *.example.com means too
    r"^https://[a-z0-9-]+\.example\.(com|org)$",
    r"^http://localhost:.*$",  # the '.*' is in the port, which can only be digits in an origin
])
def test_regex_that_stays_inside_its_domain_is_not_warned_about(pattern):
    assert regex_overreach(pattern) is None


def test_max_age_over_chromium_cap_is_warned_about_where_it_is_written(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """defaults:
  max_age: 86400
rules:
  - name: a
    paths: ["/a/**"]
    allow_origins: [https://app.example.com]
  - name: b
    paths: ["/b/**"]
    allow_origins: [https://app.example.com]
    max_age: 7200
""")
    why = ("86400 seconds is over 7200; browsers cap a cached preflight (Chromium at 7200 s, Firefox at 86400 s, "
           "Safari at 600 s, each per URL), so the extra time does nothing in most of them; write 7200 or less")
    assert warnings == [f"{tmp_path}/c.yaml:3: warning: defaults.max_age: {why}"]


def test_allow_private_network_is_warned_about_as_deprecated(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - allow_origins: [https://app.example.com]
    allow_private_network: true
""", "--strict")
    assert code == 2
    assert warnings == [
        f"{tmp_path}/c.yaml:4: warning: rules[0].allow_private_network: allow_private_network is deprecated: Chrome "
        "never enforced Private Network Access preflights and replaced them (Chrome 142) with Local Network Access, a "
        "permission prompt no response header can skip; the key only answers the old preflight header. See the "
        "README, 'Local Network Access'"]


def test_allow_headers_star_with_credentials_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - allow_origins: [https://app.example.com]
    allow_credentials: true
    allow_headers: "*"
""")
    assert warnings == [f"{tmp_path}/c.yaml:5: warning: rules[0].allow_headers: \"*\" with allow_credentials echoes "
                        "whatever header a page asks for, so every allowed site may send any header along with your "
                        "users' cookies; list the headers the API needs"]


def test_allow_methods_star_with_credentials_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - allow_origins: [https://app.example.com]
    allow_methods: "*"
    allow_credentials: true
""")
    assert warnings == [f"{tmp_path}/c.yaml:4: warning: rules[0].allow_methods: \"*\" with allow_credentials echoes "
                        "whatever method a page asks for, so every allowed site may send any method along with your "
                        "users' cookies; list the methods the API needs"]


def test_rule_shadowed_by_an_earlier_catch_all_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - name: everything
    paths: ["/**"]
    allow_origins: [https://app.example.com]
  - name: special
    paths: ["/api/x"]
    allow_origins: [https://other.example.com]
""")
    assert warnings == [f"{tmp_path}/c.yaml:7: warning: rules[1].paths: this rule never matches: rules[0] "
                        "('everything', paths ['/**']) comes first and covers every path it lists (the first matching "
                        "rule wins); move it above, or narrow the earlier paths"]


def test_rule_shadowed_by_earlier_rules_together_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - name: api
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
  - name: files
    paths: ["/files/*"]
    allow_origins: [https://app.example.com]
  - name: late
    paths: ["/api/v1/*", "/files/a*"]
    allow_origins: ["*"]
""")
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path}/c.yaml:10: warning: rules[2].paths: this rule never matches: "
                                  "rules[0] ('api', paths ['/api/**']) and rules[1] ('files', paths ['/files/*']) "
                                  "come first and cover every path")


@pytest.mark.parametrize(("first", "second"), [
    ("/api/*", "/api/**"),  # /api/a/b reaches the second rule
    ("/api/x", "/api/**"),
    ("/api/v*", "/api/*"),  # /api/a reaches it
    ("/api/**", "/apis"),
], ids=["star-vs-globstar", "exact-vs-globstar", "prefix-star", "sibling"])
def test_rule_reachable_past_an_earlier_rule_is_not_warned_about(tmp_path, capsys, first, second):
    code, warnings = check(tmp_path, capsys, f"""rules:
  - paths: ["{first}"]
    allow_origins: [https://app.example.com]
  - paths: ["{second}"]
    allow_origins: [https://app.example.com]
""")
    assert (code, warnings) == (0, [])


def test_star_origin_on_private_looking_paths_is_warned_about(tmp_path, capsys):
    code, warnings = check(tmp_path, capsys, """rules:
  - name: ops
    paths: ["/status", "/admin/**", "/api/internal/*"]
    allow_origins: ["*"]
""")
    assert warnings == [f"{tmp_path}/c.yaml:5: warning: rules[0].allow_origins[0]: allow_origins \"*\" lets every "
                        "website read /admin/**, /api/internal/*, which looks private; list the origins that need it"]


def test_strict_turns_warnings_into_exit_2(tmp_path, capsys):
    body = "rules:\n  - allow_origins: [\"null\"]\n"
    assert check(tmp_path, capsys, body)[0] == 0
    code, warnings = check(tmp_path, capsys, body, "--strict")
    assert code == 2 and len(warnings) == 1


def test_warnings_come_in_file_order(tmp_path, capsys):
    _, warnings = check(tmp_path, capsys, """rules:
  - max_age: 9000
    allow_origins: ["null"]
""")
    fields = [w.split(": warning: ")[1].split(":")[0] for w in warnings]
    assert fields == ["rules[0].max_age", "rules[0].allow_origins[0]"]


def test_example_config_passes_check_strict(capsys, monkeypatch):
    monkeypatch.delenv("UPSTREAM_URL", raising=False)
    code = main(["check", "--strict", "-c", str(ROOT / "config.example.yaml")])
    err = capsys.readouterr().err
    assert (code, err) == (0, "")
