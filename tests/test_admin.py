"""The admin listener: /healthz /readyz /metrics /config /decisions over real sockets."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from corsproxy import config as cfg
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.decisions import DecisionLog
from corsproxy.policy import CorsRequest, Policy, decide

APP = "https://app.example.com"
RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: ["https://app.example.com"]
"""


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def make_config(upstream_url: str, extra: str = "") -> cfg.Config:
    return cfg.parse(f"upstream: {{url: '{upstream_url}'}}\n{extra}\n{RULES}", "test.yaml", env={})


async def admin_client(aiohttp_client, config: cfg.Config, source: Any = None) -> tuple[TestClient, AdminState]:
    log = source if source is not None else DecisionLog()

    async def decisions() -> Any:
        return log

    state = AdminState(lambda: config, CollectorRegistry(), decisions)
    return await aiohttp_client(build_admin(state)), state


async def test_healthz_answers_200(aiohttp_client, closed_port):
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"))
    resp = await client.get("/healthz")
    assert (resp.status, await resp.text()) == (200, "ok\n")


async def test_readyz_is_200_while_the_upstream_accepts_connections(aiohttp_client, upstream):
    client, _ = await admin_client(aiohttp_client, make_config(upstream.url + "/v1"))
    resp = await client.get("/readyz")
    assert (resp.status, await resp.text()) == (200, "ready\n")
    assert upstream.seen == []  # a TCP connect only; no request reaches the API


async def test_readyz_is_503_naming_the_upstream_when_it_refuses(aiohttp_client, closed_port):
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.text()).startswith(f"upstream 127.0.0.1:{closed_port} does not accept connections")


async def test_readyz_is_503_as_soon_as_draining_starts_even_with_the_upstream_up(aiohttp_client, upstream):
    client, state = await admin_client(aiohttp_client, make_config(upstream.url + "/v1"))
    state.draining = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "draining" in await resp.text()


async def test_config_is_the_effective_config_with_key_paths_but_never_their_contents(aiohttp_client, upstream,
                                                                                   tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    config = make_config(upstream.url + "/v1", f"listen: {{tls: {{cert: '{cert_path}', key: '{key_path}'}}}}")
    # A password is a config error (issue 13.5); /config would still mask one that got in some other way.
    config = dataclasses.replace(config, upstream=dataclasses.replace(
        config.upstream, url=upstream.url.replace("http://", "http://user:s3cret@") + "/v1"))
    client, _ = await admin_client(aiohttp_client, config)
    resp = await client.get("/config")
    assert resp.status == 200
    text = await resp.text()
    data = await resp.json()
    assert data["listen"]["tls"] == {"cert": str(cert_path), "key": str(key_path)}
    assert "PRIVATE KEY" not in text and "s3cret" not in text
    assert data["upstream"]["url"] == upstream.url.replace("http://", "http://user:***@") + "/v1"
    assert data["rules"][0]["name"] == "app" and data["rules"][0]["allow_origins"] == [APP]
    assert data["limits"]["min_data_rate"] == 240.0
    assert data["sha256"] == config.sha256


async def test_decisions_are_fed_by_the_proxy_and_served_as_json_or_escaped_html(aiohttp_client, aiohttp_server,
                                                                                upstream):
    config = make_config(upstream.url + "/v1")
    log = DecisionLog()
    proxy = await aiohttp_client(await aiohttp_server(build_app(config, observers=[log.observe]), host="127.0.0.1"))
    resp = await proxy.options("/api/x", headers={"Origin": "https://evil.example<b>",
                                                  "Access-Control-Request-Method": "GET"})
    assert resp.status == 403
    assert (await proxy.get("/api/x", headers={"Origin": APP})).status == 200  # allowed: not listed
    client, _ = await admin_client(aiohttp_client, config, log)

    resp = await client.get("/decisions", headers={"Accept": "application/json"})
    assert resp.headers["Content-Type"].startswith("application/json")
    [entry] = (await resp.json())["entries"]
    assert (entry["method"], entry["path"], entry["rule"], entry["verdict"]) == ("OPTIONS", "/api/x", "app",
                                                                                 "denied:origin")
    resp = await client.get("/decisions", headers={"Accept": "text/html"})
    assert resp.headers["Content-Type"].startswith("text/html")
    html = await resp.text()
    assert "evil.example&lt;b&gt;" in html and "evil.example<b>" not in html


class BareSource:
    """A decisions source without render_html: the admin's own minimal page is used."""

    def to_json(self) -> dict[str, Any]:
        return {"entries": [{"time": 1.0, "origin": "<script>x</script>", "verdict": "denied:origin"}], "counts": []}


async def test_decisions_html_falls_back_to_an_escaped_table(aiohttp_client, closed_port):
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"), BareSource())
    html = await (await client.get("/decisions")).text()
    assert "<td>&lt;script&gt;x&lt;/script&gt;</td>" in html and "<script>" not in html
    assert "<th>origin</th>" in html


def test_merged_decisions_from_workers_are_newest_first_with_counts_summed():
    def part(*times: float) -> dict[str, Any]:
        entries = [{"time": t, "origin": "https://e.example", "method": "GET", "path": "/", "rule": "app",
                    "verdict": "denied:origin", "reason": "r", "mode": "enforce"} for t in times]
        return {"entries": entries, "counts": [{"reason": "denied:origin: r", "count": len(times)}]}

    merged = DecisionLog.merged([part(3.0, 1.0), part(4.0, 2.0)], size=3)
    assert [e["time"] for e in merged.to_json()["entries"]] == [4.0, 3.0, 2.0]
    assert merged.to_json()["counts"] == [{"reason": "denied:origin: r", "count": 4}]


async def test_the_admin_index_lists_every_endpoint_and_names_itself_without_versions(aiohttp_client, closed_port):
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"))
    resp = await client.get("/")
    assert (resp.status, resp.headers["Server"]) == (200, "corsproxy")
    links = re.findall(r'<a href="([^"]+)">', await resp.text())
    assert links == ["/healthz", "/readyz", "/metrics", "/config", "/decisions"]
    for link in links[:1] + links[2:]:
        assert (await client.get(link)).status == 200, link


async def test_config_shows_the_values_in_force_and_lists_what_waits_for_a_restart(aiohttp_client, closed_port):
    started = make_config(f"http://127.0.0.1:{closed_port}", "listen: {port: 8080}\nadmin: {port: 9901}")
    reloaded = make_config(f"http://127.0.0.1:{closed_port}/v2", "listen: {port: 9090}\nadmin: null")
    reloaded = dataclasses.replace(reloaded, upstream=dataclasses.replace(reloaded.upstream, max_connections=7))
    live = [started]
    state = AdminState(lambda: live[0], CollectorRegistry(), DecisionLog)
    client = await aiohttp_client(build_admin(state))
    assert (await (await client.get("/config")).json())["pending_restart"] == {}
    live[0] = reloaded
    data = await (await client.get("/config")).json()
    assert (data["listen"]["port"], data["admin"], data["upstream"]["max_connections"]) == (
        8080, {"host": "127.0.0.1", "port": 9901}, 7)  # the pool's settings reload (a new pool)
    assert data["upstream"]["url"] == f"http://127.0.0.1:{closed_port}/v2"  # a reload changes the upstream at once
    assert data["pending_restart"] == {"listen.port": 9090, "admin": None}


def denied_log(*origins_rules: tuple[str, str]) -> DecisionLog:
    log = DecisionLog()
    policy = Policy.from_config(cfg.parse("upstream: {url: 'http://127.0.0.1:9'}\nrules:\n"
                                          "  - {name: app, paths: ['/api/**'], allow_origins: [https://a.example]}\n"
                                          "  - {name: ro, paths: ['/ro/**'], allow_origins: ['*'], "
                                          "allow_methods: [GET]}\n", "t.yaml", env={}))
    for method, path in origins_rules:
        log.record(decide(policy, CorsRequest(method, path, ("https://b.example",))), method, path)
    return log


async def test_decisions_json_gives_the_time_as_iso_8601_too(aiohttp_client, closed_port):
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"),
                                   denied_log(("GET", "/api/x")))
    [entry] = (await (await client.get("/decisions", headers={"Accept": "application/json"})).json())["entries"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time_iso"])
    assert abs(datetime.fromisoformat(entry["time_iso"]).timestamp() - entry["time"]) < 0.001


async def test_decisions_html_filters_by_rule_and_verdict_and_reloads_itself(aiohttp_client, closed_port):
    log = denied_log(("GET", "/api/x"), ("POST", "/ro/y"), ("GET", "/api/z"))
    client, _ = await admin_client(aiohttp_client, make_config(f"http://127.0.0.1:{closed_port}"), log)
    page = await (await client.get("/decisions")).text()
    assert len(re.findall(r'<td data-label="path"', page)) == 3
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<select name=rule><option value=\"\">any</option><option>app</option><option>ro</option></select>" in page
    only = await (await client.get("/decisions", params={"rule": "ro", "refresh": "0"})).text()
    assert re.findall(r'class="path">([^<]*)<', only) == ["/ro/y"]
    assert "http-equiv" not in only and "<option selected>ro</option>" in only
    origin = await (await client.get("/decisions", params={"verdict": "denied:origin"})).text()
    assert re.findall(r'class="path">([^<]*)<', origin) == ["/api/z", "/api/x"]
