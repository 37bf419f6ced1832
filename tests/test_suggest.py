"""corsproxy suggest (design §2): requests through the real proxy, its JSON access log read back, the
exact diff for each kind of denial, applied with real `git apply`, and `explain` then says allowed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from corsproxy import config as cfg
from corsproxy import logs
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.cli import main
from corsproxy.decisions import DecisionLog
from corsproxy.origins import registrable_domain
from corsproxy.suggest import Seen, plan
from tests.conftest import ProxyTestServer

APP = "https://app.example.com"
PRE = "Access-Control-Request-Method"
HDRS = "Access-Control-Request-Headers"
CONFIG = """\
# the shop API behind corsproxy
upstream:
  url: {upstream}
admin: null
logging: {{format: json}}

rules:
  - name: partners
    paths: ["/partners/**"]
    allow_origins: [https://partner.example.net]   # one line, flow style

  - name: trial                  # being tried out
    paths: ["/trial/**"]
    allow_origins:
      - https://app.example.com
    mode: report-only

  # the single-page app
  - name: app
    paths: ["/**"]
    allow_origins:
      - https://app.example.com   # production
    allow_methods: [GET, POST]
    allow_credentials: true
"""


class Seen_:
    """The folder with the config (a git repo, for `git apply`) and the proxy's JSON access log."""

    def __init__(self, folder: Path, upstream_url: str) -> None:
        self.folder = folder
        self.config = folder / "config.yaml"
        self.config.write_text(CONFIG.format(upstream=upstream_url + "/v1/respond"))
        self.log = folder / "access.log"
        subprocess.run(["git", "init", "-q", str(folder)], check=True)

    def suggest(self, capsys, *extra: str) -> tuple[str, str]:
        capsys.readouterr()
        assert main(["suggest", "-c", str(self.config), "--log", str(self.log), *extra]) == 0
        out = capsys.readouterr()
        return out.out, out.err

    def git_apply(self, diff: str) -> None:
        subprocess.run(["git", "apply", "--check", "-"], input=diff, text=True, cwd=self.folder, check=True)
        subprocess.run(["git", "apply", "-"], input=diff, text=True, cwd=self.folder, check=True)


@pytest.fixture
def seen(tmp_path: Path, upstream) -> Seen_:
    return Seen_(tmp_path, upstream.url)


async def through_proxy(aiohttp_client, seen: Seen_, requests: list[tuple[str, str, dict]]) -> None:
    """Send each request through the real proxy (server.py's runner) and keep its JSON access log."""
    stream = io.StringIO()
    level = logging.getLogger().level
    handler = logs.setup("info", "json", stream)
    try:
        config = cfg.load(seen.config, env={})
        server = ProxyTestServer(build_app(config, observers=[logs.AccessLog(True).observe]), config,
                                 host="127.0.0.1")
        client = await aiohttp_client(server)
        for method, path, headers in requests:
            (await client.request(method, path, headers=headers)).release()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    seen.log.write_text("".join(line + "\n" for line in stream.getvalue().splitlines() if "corsproxy.access" in line))


def explain_args(method: str, path: str, headers: dict) -> list[str]:
    args = ["--origin", headers["Origin"], "--path", path.split("?")[0]]
    if method == "OPTIONS":
        names = [h.strip() for h in headers.get(HDRS, "").split(",") if h.strip()]
        return [*args, "--method", headers[PRE], "--preflight", *(a for n in names for a in ("--header", n))]
    return [*args, "--method", method]


def hunk(start: str, label: str, body: str) -> str:
    return f"@@ {start} @@ {label}\n{body}"


HEAD = "--- a/config.yaml\n+++ b/config.yaml\n"
APP_TOP = '     paths: ["/**"]\n     allow_origins:\n       - https://app.example.com   # production\n'
APP_END = "     allow_methods: [GET, POST]\n     allow_credentials: true\n"
APP_LAST = "       - https://app.example.com   # production\n" + APP_END
CASES = [
    pytest.param(
        [("GET", "/orders", {"Origin": "https://b.example.com"})],
        HEAD + hunk("-20,5 +20,6", "rules[2] (app): add 1 origin",
                    APP_TOP + "+      - https://b.example.com\n" + APP_END),
        id="origin"),
    pytest.param(
        [("OPTIONS", "/orders", {"Origin": APP, PRE: "DELETE"}),
         ("OPTIONS", "/orders/7", {"Origin": APP, PRE: "DELETE"})],
        HEAD + hunk("-20,5 +20,5", "rules[2] (app): add 1 method",
                    APP_TOP + "-    allow_methods: [GET, POST]\n+    allow_methods: [GET, POST, DELETE]\n"
                    "     allow_credentials: true\n"),
        id="method"),
    pytest.param(
        [("PUT", "/orders", {"Origin": APP})],  # an actual request whose method the rule does not list
        HEAD + hunk("-20,5 +20,5", "rules[2] (app): add 1 method",
                    APP_TOP + "-    allow_methods: [GET, POST]\n+    allow_methods: [GET, POST, PUT]\n"
                    "     allow_credentials: true\n"),
        id="actual-request-method"),
    pytest.param(
        [("OPTIONS", "/orders", {"Origin": APP, PRE: "POST", HDRS: "content-type,x-token"})],
        HEAD + hunk("-22,3 +22,4", "rules[2] (app): add 2 headers",
                    APP_LAST + "+    allow_headers: [Content-Type, X-Token]\n"),
        id="header"),
    pytest.param(
        [("GET", "/orders?X-Total=3&X-Page=1&Date=x&Server=y", {"Origin": APP})],
        HEAD + hunk("-22,3 +22,4", "rules[2] (app): add 2 expose_headers",
                    APP_LAST + "+    expose_headers: [X-Total, X-Page]\n"),
        id="expose"),
    pytest.param(
        [("GET", "/partners/x", {"Origin": "https://other-partner.example.org"}),
         ("GET", "/orders", {"Origin": "https://b.example.com"}),
         ("OPTIONS", "/orders", {"Origin": APP, PRE: "PUT"})],
        HEAD + hunk("-7,7 +7,7", "rules[0] (partners): add 1 origin",
                    " rules:\n   - name: partners\n     paths: [\"/partners/**\"]\n"
                    "-    allow_origins: [https://partner.example.net]   # one line, flow style\n"
                    "+    allow_origins: [https://partner.example.net, https://other-partner.example.org]  "
                    "# one line, flow style\n"
                    " \n   - name: trial                  # being tried out\n     paths: [\"/trial/**\"]\n")
        + hunk("-20,5 +20,6", "rules[2] (app): add 1 origin, 1 method",
               APP_TOP + "-    allow_methods: [GET, POST]\n+      - https://b.example.com\n"
               "+    allow_methods: [GET, POST, PUT]\n     allow_credentials: true\n"),
        id="several-rules"),
    pytest.param(
        [("GET", "/trial/x", {"Origin": "https://beta.example.com"})],
        HEAD + hunk("-13,6 +13,7", "rules[1] (trial): add 1 origin",
                    "     paths: [\"/trial/**\"]\n     allow_origins:\n       - https://app.example.com\n"
                    "+      - https://beta.example.com\n     mode: report-only\n \n   # the single-page app\n"),
        id="report-only"),
    pytest.param(
        [("GET", "/orders", {"Origin": f"https://{name}.github.io"}) for name in ("ann", "bob", "cyd")],
        HEAD + hunk("-20,5 +20,8", "rules[2] (app): add 3 origins",
                    APP_TOP + "+      - https://ann.github.io\n+      - https://bob.github.io\n"
                    "+      - https://cyd.github.io\n" + APP_END),
        id="public-suffix"),
    pytest.param(
        [("OPTIONS", "/orders", {"Origin": APP, PRE: "POST", HDRS: ",".join(f"x-h{i}" for i in range(12))}),
         ("OPTIONS", "/orders", {"Origin": APP, PRE: "PATCH"})],
        HEAD + hunk("-20,5 +20,6", "rules[2] (app): add 1 method, 12 headers",
                    APP_TOP + "-    allow_methods: [GET, POST]\n+    allow_methods: [GET, POST, PATCH]\n"
                    "     allow_credentials: true\n+    allow_headers: ["
                    + ", ".join(f"X-H{i}" for i in range(12)) + "]\n"),
        id="credentials-never-star"),
]


@pytest.mark.parametrize("requests, expected", CASES)
async def test_the_diff_for_each_kind_of_denial_applies_and_then_explain_allows_the_same_requests(
        aiohttp_client, seen, capsys, requests, expected):
    await through_proxy(aiohttp_client, seen, requests)
    diff, _ = seen.suggest(capsys)
    assert diff == expected
    assert not re.search(r"^\+.*['\"]\*['\"]", diff, re.M)  # SECURITY: never "*"
    seen.git_apply(diff)
    for method, path, headers in requests:
        capsys.readouterr()
        code = main(["explain", "-c", str(seen.config), *explain_args(method, path, headers)])
        out = capsys.readouterr().out
        assert (code, re.search(r"^verdict:\s+(\S+)", out, re.M)[1]) == (0, "allowed"), out
    again, _ = seen.suggest(capsys)  # nothing is left to suggest for the same log
    if "expose" not in expected:
        assert again == ""


async def test_expose_headers_once_applied_are_sent_to_the_page(aiohttp_client, seen, capsys):
    await through_proxy(aiohttp_client, seen, [("GET", "/orders?X-Total=3", {"Origin": APP})])
    diff, _ = seen.suggest(capsys)
    seen.git_apply(diff)
    capsys.readouterr()
    assert main(["explain", "-c", str(seen.config), "--origin", APP, "--path", "/orders"]) == 0
    assert "  Access-Control-Expose-Headers: X-Total\n" in capsys.readouterr().out


async def test_three_subdomains_of_one_domain_offer_a_wildcard_only_beside_the_diff(aiohttp_client, seen, capsys):
    await through_proxy(aiohttp_client, seen, [("GET", "/orders", {"Origin": f"https://{n}.shop.example.org"})
                                               for n in ("eu", "us", "asia")])
    diff, notes = seen.suggest(capsys)
    assert not [line for line in diff.splitlines() if line.startswith("+") and "*" in line]
    assert "+      - https://eu.shop.example.org\n+      - https://us.shop.example.org\n" in diff
    assert ("alternative: rules[2] (app).allow_origins: instead of the 3 origins under shop.example.org, "
            "'https://*.shop.example.org' would allow every subdomain of shop.example.org, now and later (not in "
            "the diff: write it by hand if every one of them is yours) [3x]") in notes


async def test_two_subdomains_offer_no_wildcard_and_a_public_suffix_never_does(aiohttp_client, seen, capsys):
    origins = ["https://eu.shop.example.org", "https://us.shop.example.org",
               *(f"https://{n}.github.io" for n in ("ann", "bob", "cyd"))]
    await through_proxy(aiohttp_client, seen, [("GET", "/orders", {"Origin": o}) for o in origins])
    diff, notes = seen.suggest(capsys)
    assert not [line for line in diff.splitlines() if line.startswith("+") and "*" in line]
    assert "*." not in notes
    assert ("alternative: rules[2] (app).allow_origins: no wildcard is offered for the 3 origins under github.io: "
            "it is a public suffix, where anyone can register a site") in notes


async def test_denials_no_rule_change_fixes_are_listed_with_their_reason_and_change_nothing(
        aiohttp_client, seen, capsys):
    await through_proxy(aiohttp_client, seen, [
        ("GET", "/orders", {"Origin": "https://app.example.com/"}),
        ("OPTIONS", "/orders", {"Origin": "not an origin", PRE: "GET"}),
        ("GET", "/orders", {"Origin": "null"}),
    ])
    diff, notes = seen.suggest(capsys)
    assert diff == ""
    assert notes.splitlines()[1:] == [
        "  unfixable: GET /orders (rules[2] (app)): Origin 'https://app.example.com/' is not a valid origin; no rule "
        "change fixes this (the browser, or whatever sent the request, must send one valid Origin) [1x]",
        "  unfixable: OPTIONS /orders (rules[2] (app)): Origin 'not an origin' is not a valid origin; no rule change "
        "fixes this (the browser, or whatever sent the request, must send one valid Origin) [1x]",
        "  not-suggested: rules[2] (app): the 'null' origin (sandboxed frames, file: pages) was denied; any site can "
        "send it, so it is not suggested: add 'null' by hand only if you must [1x]",
    ]


def test_a_request_no_rule_matched_and_a_repeated_origin_are_notes_not_changes() -> None:
    config = cfg.parse("upstream: {url: 'http://127.0.0.1:9'}\nrules:\n  - {name: api, paths: ['/api/**'], "
                       "allow_origins: ['https://a.example.com']}\n", "c.yaml", env={})
    result = plan(config, [Seen("-", "none", "https://b.example.com", "GET", "/other"),
                           Seen("-", "none", "", "GET", "/other"),
                           Seen("api", "denied:origin", "", "GET", "/api/x",
                                "Origin header sent more than once (rule 'api')")])
    assert result.changes == []
    assert [(n.kind, n.text) for n in result.notes] == [
        ("unfixable", "GET /other from https://b.example.com: no rule matches this path, so the request is forwarded "
                      "untouched; no rule change fixes it (add a rule whose paths cover it)"),
        ("unfixable", "GET /api/x (rules[0] (api)): Origin header sent more than once; no rule change fixes this "
                      "(the browser, or whatever sent the request, must send one valid Origin)"),
    ]


async def test_min_count_ignores_rare_denials(aiohttp_client, seen, capsys):
    await through_proxy(aiohttp_client, seen, [("GET", "/orders", {"Origin": "https://often.example.com"})] * 3
                        + [("GET", "/orders", {"Origin": "https://once.example.com"})])
    diff, notes = seen.suggest(capsys, "--min-count", "2")
    assert "+      - https://often.example.com\n" in diff and "once" not in diff
    assert "  rare: ignored: seen fewer than --min-count 2 times [1x]" in notes


@pytest.mark.parametrize("host, domain", [("a.b.example.co.uk", "example.co.uk"), ("x.github.io", "x.github.io"),
                                          ("github.io", None), ("co.uk", None), ("127.0.0.1", None),
                                          ("localhost", None)], ids=str)
def test_registrable_domains_come_from_the_public_suffix_list(host: str, domain: str | None) -> None:
    assert registrable_domain(host) == domain


# ---------------------------------------------------------------------- --write and /decisions


def changed(diff: str) -> list[str]:
    return sorted(line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def test_write_keeps_every_comment_of_the_example_config(tmp_path: Path, capsys) -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    path = tmp_path / "config.yaml"
    path.write_text(example.read_text())
    log = tmp_path / "access.log"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"logger": "corsproxy.access", "method": "GET", "path": "/api/x", "rule": "app", "verdict": "denied:origin",
         "origin": "https://shop.example.net", "reason": "origin https://shop.example.net not in allow_origins"},
        {"logger": "corsproxy.access", "method": "OPTIONS", "path": "/api/x", "rule": "app",
         "verdict": "denied:header", "origin": APP, "reason": "x-token not in allow_headers (rule 'app')"},
        {"logger": "corsproxy.access", "method": "GET", "path": "/api/x", "rule": "app", "verdict": "allowed",
         "origin": APP, "unexposed": ["X-Total"]},
    ]) + "\n")
    assert main(["suggest", "-c", str(path), "--log", str(log), "--write"]) == 0
    diff = capsys.readouterr().out
    before, after = example.read_text(), path.read_text()
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert [c for c in comments if c not in after] == []
    assert changed(diff) == sorted([
        "+      - https://shop.example.net",
        "-    allow_headers: [Content-Type, Authorization]              # or \"*\" (echoes the requested names)",
        "+    allow_headers: [Content-Type, Authorization, X-Token]     # or \"*\" (echoes the requested names)",
        "-    expose_headers: [X-Request-Id]     # response headers the page may read; or \"*\"",
        "+    expose_headers: [X-Request-Id, X-Total]  # response headers the page may read; or \"*\"",
    ])
    assert len(after.splitlines()) == len(before.splitlines()) + 1
    rule = cfg.load(path, env={}).rules[1]
    assert rule.origins.allows("https://shop.example.net")
    assert (rule.allow_headers, rule.expose_headers) == (("Content-Type", "Authorization", "X-Token"),
                                                         ("X-Request-Id", "X-Total"))


async def test_decisions_show_each_entry_s_change_and_suggest_admin_reads_them(aiohttp_client, seen, capsys):
    config = cfg.load(seen.config, env={})
    log = DecisionLog()
    proxy = await aiohttp_client(ProxyTestServer(build_app(config, observers=[log.observe]), config,
                                                 host="127.0.0.1"))
    for headers in ({"Origin": "https://b.example.com"}, {"Origin": APP, PRE: "PUT"}, {"Origin": "bad origin"}):
        (await proxy.request("OPTIONS" if PRE in headers else "GET", "/orders", headers=headers)).release()
    (await proxy.get("/orders?X-Total=1", headers={"Origin": APP})).release()

    async def source() -> DecisionLog:
        return log

    admin = await aiohttp_client(build_admin(AdminState(lambda: config, CollectorRegistry(), source)))
    data = await (await admin.get("/decisions", headers={"Accept": "application/json"})).json()
    line = cfg.load(seen.config, env={}).marks["rules[2].allow_origins"][0]
    assert [e["suggestion"] for e in data["entries"]] == [
        "GET /orders (rules[2] (app)): Origin 'bad origin' is not a valid origin; no rule change fixes this (the "
        "browser, or whatever sent the request, must send one valid Origin)",
        f"add PUT to rules[2].allow_methods, {seen.config}:{line + 2}",
        f"add https://b.example.com to rules[2].allow_origins, {seen.config}:{line}",
    ]
    assert data["unexposed"] == [{"rule": "app", "header": "X-Total", "count": 1}]
    page = await (await admin.get("/decisions")).text()
    assert f"add https://b.example.com to rules[2].allow_origins, {seen.config}:{line}" in page
    assert "app: response header X-Total not readable by the page (not in expose_headers)" in page

    capsys.readouterr()
    url = str(admin.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["suggest", "-c", str(seen.config), "--admin", url]) == 0
    diff = capsys.readouterr().out
    assert changed(diff) == sorted([
        "+      - https://b.example.com",
        "+    allow_methods: [GET, POST, PUT]",
        "+    expose_headers: [X-Total]",
        "-    allow_methods: [GET, POST]",
    ])


@pytest.mark.parametrize("source", [["--log", "missing.log"], ["--admin", "http://127.0.0.1:1"]], ids=["log", "admin"])
def test_an_unreadable_source_is_exit_2_with_the_reason(seen, capsys, source) -> None:
    assert main(["suggest", "-c", str(seen.config), *source]) == 2
    assert capsys.readouterr().err.startswith("corsproxy suggest: cannot read what the proxy saw: ")


def test_log_lines_that_are_not_access_records_are_skipped(seen, capsys, monkeypatch) -> None:
    lines = ["not json", '{"logger": "corsproxy", "message": "config reloaded"}', "{broken",
             json.dumps({"logger": "corsproxy.access", "method": "GET", "path": "/x", "rule": "app",
                         "verdict": "denied:origin (report-only)", "origin": "https://c.example.com",
                         "reason": "origin https://c.example.com not in allow_origins (rule 'app')"})]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["suggest", "-c", str(seen.config), "--log", "-"]) == 0
    out = capsys.readouterr()
    assert changed(out.out) == ["+      - https://c.example.com"]
    assert "suggest: 1 decision(s) read; 1 change(s)" in out.err


# ---------------------------------------------------------------------- text edits on unusual layouts

UP = "upstream: {url: 'http://127.0.0.1:9'}\n"
EDITS = [
    pytest.param("rules:\n  - {name: a, allow_origins: [https://a.example.com]}\n", "allow_methods", ("PUT",),
                 "rules:\n  - {name: a, allow_origins: [https://a.example.com], allow_methods: [GET, HEAD, POST, "
                 "PUT]}\n", id="flow-rule-gets-a-key"),
    pytest.param("defaults:\n  allow_headers: [Content-Type]\nrules:\n  - name: a\n    allow_origins: ['*']\n",
                 "allow_headers", ("X-Token",),
                 "defaults:\n  allow_headers: [Content-Type]\nrules:\n  - name: a\n    allow_origins: ['*']\n"
                 "    allow_headers: [Content-Type, X-Token]\n", id="inherited-field-written-into-the-rule"),
    pytest.param("rules:\n  - name: b\n    allow_origins: &o [https://a.example.com]\n"
                 "  - name: a\n    allow_origins: *o   # the same\n", "allow_origins", ("https://b.example.com",),
                 "rules:\n  - name: b\n    allow_origins: &o [https://a.example.com]\n"
                 "  - name: a\n    allow_origins: [https://a.example.com, https://b.example.com]   # the same\n",
                 id="alias-gets-its-own-list"),
    pytest.param("rules:\n  - name: a\n    allow_origins: [\n      https://a.example.com,\n    ]\n",
                 "allow_origins", ("https://b.example.com",),
                 "rules:\n  - name: a\n    allow_origins: [\n      https://a.example.com, https://b.example.com,\n"
                 "    ]\n", id="multi-line-flow-with-trailing-comma"),
    pytest.param("rules:\n  - name: a\n    allow_origins: ['*']\n    allow_headers: []\n", "allow_headers",
                 ("X-A",), "rules:\n  - name: a\n    allow_origins: ['*']\n    allow_headers: [X-A]\n",
                 id="empty-flow-list"),
    pytest.param("rules:\n- name: a\n  allow_origins:\n  - regex: '^https://x\\.example\\.com$'\n  # the end",
                 "allow_origins", ("https://b.example.com",),
                 "rules:\n- name: a\n  allow_origins:\n  - regex: '^https://x\\.example\\.com$'\n"
                 "  - https://b.example.com\n  # the end", id="unindented-list-no-final-newline"),
    pytest.param("rules:\n  - name: a\n    allow_origins: [https://a.example.com]\n    allow_methods: [GET]\n",
                 "allow_methods", ("M-SEARCH", "null"),
                 "rules:\n  - name: a\n    allow_origins: [https://a.example.com]\n    allow_methods: [GET, M-SEARCH, "
                 "'null']\n", id="a-yaml-word-is-quoted"),
]


@pytest.mark.parametrize("rules, field, values, expected", EDITS)
def test_text_edits_land_at_the_node_and_the_result_loads(rules: str, field: str, values: tuple, expected: str) -> None:
    from corsproxy.suggest import Change, edit

    config = cfg.parse(UP + rules, "c.yaml", env={})
    rule = next(r for r in config.rules if r.name == "a")
    out, shared = edit(UP + rules, "c.yaml", [Change(rule, field, values, (1,) * len(values))], env={})
    assert (out, shared) == (UP + expected, [])
    after = next(r for r in cfg.parse(out, "c.yaml", env={}).rules if r.name == "a")
    have = after.origins.exact if field == "allow_origins" else set(getattr(after, field))
    assert set(values) <= have


def test_an_anchored_list_other_rules_alias_is_left_alone_with_a_note() -> None:
    from corsproxy.suggest import Change, edit

    text = UP + ("rules:\n  - name: a\n    allow_origins: &o [https://a.example.com]\n"
                 "  - name: b\n    allow_origins: *o\n")
    rule = cfg.parse(text, "c.yaml", env={}).rules[0]
    change = Change(rule, "allow_origins", ("https://b.example.com",), (1,))
    assert edit(text, "c.yaml", [change], env={}) == (text, [change])


@pytest.mark.parametrize("expose, origin, expected", [
    ("[X-Request-Id]", "https://a.example.com", ("X-Total", "ETag")),
    ('"*"', "https://a.example.com", ()),
    ("[X-Request-Id]", "https://a.example.com/", ()),  # an invalid Origin reads nothing, whatever is exposed
], ids=["listed-and-generic-skipped", "star-exposes-all", "invalid-origin"])
def test_unexposed_names_are_the_application_headers_a_page_could_not_read(expose, origin, expected) -> None:
    from corsproxy.policy import CorsRequest, Policy, decide
    from corsproxy.readable import unexposed

    config = cfg.parse(UP + f"rules:\n  - {{allow_origins: ['https://a.example.com'], expose_headers: {expose}}}\n",
                       "c.yaml", env={})
    decision = decide(Policy.from_config(config), CorsRequest.from_headers("GET", "/x", {"Origin": origin}))
    names = ["Content-Type", "Date", "Server", "Set-Cookie", "Access-Control-Allow-Origin", "x-request-id",
             "X-Total", "ETag", "x-total", "Strict-Transport-Security"]
    assert unexposed(decision, names) == expected
