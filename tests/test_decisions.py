"""DecisionLog (design §5 /decisions): bounded, newest first, counts by reason, escaped HTML; and one
reason for one request everywhere: ``corsproxy explain``, ``CORS-Decision``, the log and the page."""

from __future__ import annotations

import re
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from corsproxy import config as cfg
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.cli import main
from corsproxy.decisions import DecisionLog
from corsproxy.policy import CorsRequest, Policy, decide

RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST, PUT]
    allow_headers: [Content-Type]
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
"""
APP = "https://app.example.com"
POLICY = Policy.from_config(cfg.parse("upstream: {url: 'http://127.0.0.1:9'}\n" + RULES, "t.yaml", env={}))


def decision(origin: str | None, method: str = "GET", path: str = "/api/x", **headers: str):
    sent = ({"Origin": origin} if origin is not None else {}) | headers
    return decide(POLICY, CorsRequest.from_headers(method, path, sent))


def test_allowed_and_unmatched_requests_are_not_stored():
    log = DecisionLog()
    log.record(decision(APP), "GET", "/api/x")
    log.record(decision("https://evil.example", path="/other"), "GET", "/other")
    log.record(decision(None), "GET", "/api/x")
    assert (log.entries(), log.counts()) == ([], [])


def test_entries_are_newest_first_with_every_column():
    log = DecisionLog()
    log.record(decision("https://a.example"), "GET", "/api/1")
    log.record(decision(APP, "OPTIONS", **{"Access-Control-Request-Method": "DELETE"}), "OPTIONS", "/api/2")
    first, second = log.entries()
    assert (first.path, first.method, first.origin, first.rule, first.verdict, first.reason, first.mode) == (
        "/api/2", "OPTIONS", APP, "app", "denied:method", "method DELETE not in allow_methods (rule 'app')", "enforce")
    assert (second.path, second.verdict, second.origin) == ("/api/1", "denied:origin", "https://a.example")
    assert abs(first.time - time.time()) < 5


def test_the_buffer_keeps_only_the_last_200_but_counts_everything():
    log = DecisionLog()
    for i in range(250):
        log.record(decision(f"https://e{i}.example"), "GET", f"/api/{i}")
    entries = log.entries()
    assert len(entries) == 200
    assert (entries[0].path, entries[-1].path) == ("/api/249", "/api/50")
    assert sum(n for _, n in log.counts()) == 250


def test_counts_group_by_verdict_and_reason_most_common_first():
    log = DecisionLog()
    for _ in range(3):
        log.record(decision("https://x.example"), "GET", "/api/x")
    log.record(decision(APP, "OPTIONS", **{"Access-Control-Request-Method": "GET",
                                           "Access-Control-Request-Headers": "x-token"}), "OPTIONS", "/api/x")
    assert log.counts() == [("denied:origin: origin https://x.example not in allow_origins", 3),
                            ("denied:header: x-token not in allow_headers", 1)]
    assert log.to_json()["counts"] == [
        {"reason": "denied:origin: origin https://x.example not in allow_origins", "count": 3},
        {"reason": "denied:header: x-token not in allow_headers", "count": 1}]


def test_json_lists_entries_newest_first():
    log = DecisionLog()
    log.record(decision("https://a.example"), "GET", "/api/a")
    log.record(decision("https://b.example"), "POST", "/api/b")
    entries = log.to_json()["entries"]
    assert [(e["origin"], e["method"], e["path"]) for e in entries] == [
        ("https://b.example", "POST", "/api/b"), ("https://a.example", "GET", "/api/a")]
    assert set(entries[0]) == {"time", "origin", "method", "path", "rule", "verdict", "reason", "mode", "time_iso"}


def test_a_script_in_the_origin_is_escaped_on_the_page():
    log = DecisionLog()
    evil = "https://x.example<script>alert(1)</script>"
    log.record(decision(evil), "GET", '/api/"><img src=x onerror=alert(2)>')
    page = log.render_html()
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page


def test_the_page_is_self_contained_and_fits_a_phone():
    log = DecisionLog()
    log.record(decision("https://a.example"), "GET", "/api/a")
    page = log.render_html()
    assert page.startswith("<!doctype html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert re.search(r"\b(src|href)\s*=", page) is None  # no script, stylesheet, image or font to fetch
    assert "@media (max-width:700px)" in page
    assert "origin https://a.example not in allow_origins (rule &#x27;app&#x27;)" in page


def test_the_page_lists_counts_and_says_when_nothing_was_denied():
    empty = DecisionLog().render_html()
    assert "No CORS request has been denied since the proxy started." in empty
    log = DecisionLog()
    log.record(decision("https://a.example"), "GET", "/api/a")
    log.record(decision("https://a.example"), "GET", "/api/b")
    page = log.render_html()
    assert "No CORS request" not in page
    assert re.search(r"<td>denied:origin: origin https://a.example not in allow_origins</td><td class=n>2</td>", page)
    assert page.count('<td data-label="path" class="path">') == 2


def test_recording_allowed_requests_costs_next_to_nothing():
    log, allowed = DecisionLog(), decision(APP)
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        log.record(allowed, "GET", "/api/x")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 2e-6  # a proxied GET takes ~1000x that; measured ~0.1 us here
    assert log.entries() == []


# ---------------------------------------------------------------------- one reason everywhere


async def test_explain_header_log_and_page_give_the_same_reason(tmp_path: Path, capsys, aiohttp_client, upstream):
    text = f"upstream: {{url: '{upstream.url}/v1'}}\nadmin: null\ndebug: {{decision_header: true}}\n{RULES}"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code = main(["explain", "-c", str(path), "--origin", APP, "--method", "PUT", "--path", "/api/x",
                 "--header", "X-Token", "--preflight"])
    out = capsys.readouterr().out
    assert code == 1
    explained = re.search(r"^reason:\s+(.*)$", out, re.M)[1]

    log = DecisionLog()
    proxy = await aiohttp_client(build_app(cfg.parse(text, str(path), env={}), observers=[log.observe]))
    resp = await proxy.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "PUT",
                                                  "Access-Control-Request-Headers": "x-token"})
    assert resp.status == 403
    header = resp.headers["CORS-Decision"]
    detail = re.fullmatch(r'rule=app; verdict=denied:header; detail="(.*)"', header)[1]

    admin = await aiohttp_client(build_admin(AdminState(lambda: None, CollectorRegistry(), _source(log))))
    listed = (await (await admin.get("/decisions", headers={"Accept": "application/json"})).json())["entries"]
    page = await (await admin.get("/decisions")).text()

    assert explained == "x-token not in allow_headers (rule 'app')"
    assert explained == f"{detail} (rule 'app')"
    assert (await resp.text()).strip() == explained
    assert [e["reason"] for e in listed] == [explained]
    assert "x-token not in allow_headers (rule &#x27;app&#x27;)" in page
    assert upstream.count() == 0


def _source(log: DecisionLog):
    async def get() -> DecisionLog:
        return log
    return get


def test_counts_by_reason_stay_bounded_whatever_origins_clients_send():
    # SECURITY (issue 13.4): each reason quotes the client's Origin; 5,000 origins used to make 5,000 rows.
    log = DecisionLog()
    for i in range(5000):
        log.record(decision(f"https://e{i}.example"), "GET", "/api/x")
    counts = dict(log.counts())
    assert len(counts) == 101
    assert counts["other reasons"] == 4900 and sum(counts.values()) == 5000
    assert "origin https://e0.example not in allow_origins" in log.counts()[1][0]
    assert len(log.render_html()) < 160_000  # 200 entries and 101 counts (it was 620 KB)


def test_merged_counts_from_workers_stay_bounded_too():
    parts = [{"entries": [], "counts": [{"reason": f"denied:origin: w{w} r{i}", "count": 1} for i in range(80)]}
             for w in range(3)]
    counts = dict(DecisionLog.merged(parts).counts())
    assert len(counts) == 101 and counts["other reasons"] == 140
