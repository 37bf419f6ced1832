"""Metrics: known traffic through the real proxy, then /metrics scraped from the real admin listener
and parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from corsproxy import config as cfg
from corsproxy.admin import AdminState, build_admin
from corsproxy.app import build_app
from corsproxy.decisions import DecisionLog
from corsproxy.metrics import ConfigState, Metrics
from tests.conftest import BASE_RULES

APP = "https://app.example.com"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening, so nobody else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class Stack:
    """Proxies (sharing one Metrics, as one process's apps would) and the admin client."""

    def __init__(self, aiohttp_server: Callable[..., Awaitable[TestServer]],
                 aiohttp_client: Callable[..., Awaitable[TestClient]]) -> None:
        self.server, self.client = aiohttp_server, aiohttp_client
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.state = ConfigState("0" * 64)
        self.registry.register(self.state)
        self.config: cfg.Config | None = None

    async def proxy(self, upstream_url: str, rules: str = BASE_RULES) -> TestClient:
        self.config = cfg.parse(f"upstream: {{url: '{upstream_url}'}}\n{rules}", "test.yaml", env={})
        app = build_app(self.config, observers=[self.metrics.observe], started=[self.metrics.started])
        return await self.client(await self.server(app, host="127.0.0.1"), auto_decompress=False)

    async def scrape(self) -> Samples:
        async def decisions() -> DecisionLog:
            return DecisionLog()

        assert self.config is not None
        admin = await self.client(build_admin(AdminState(lambda: self.config, self.registry, decisions,
                                                         before_scrape=self.metrics.publish)))
        resp = await admin.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


@pytest.fixture
def stack(aiohttp_server, aiohttp_client) -> Stack:
    return Stack(aiohttp_server, aiohttp_client)


async def test_each_counter_holds_the_expected_value_after_known_traffic(stack, upstream, closed_port):
    proxy = await stack.proxy(upstream.url + "/v1")
    dead = await stack.proxy(f"http://127.0.0.1:{closed_port}")
    sent_out = 0

    async def send(client: TestClient, method: str, path: str, status: int, **kw: object) -> None:
        nonlocal sent_out
        resp = await client.request(method, path, **kw)
        assert resp.status == status, await resp.text()
        sent_out += len(await resp.read())

    pre = {"Origin": APP, "Access-Control-Request-Method": "PUT"}
    for _ in range(2):
        await send(proxy, "OPTIONS", "/api/x", 204, headers=pre)
    await send(proxy, "OPTIONS", "/api/x", 403, headers={**pre, "Access-Control-Request-Method": "TRACE"})
    await send(proxy, "OPTIONS", "/api/x", 403, headers={**pre, "Origin": "https://evil.example"})
    await send(proxy, "OPTIONS", "/api/x", 403, headers={**pre, "Access-Control-Request-Headers": "x-token"})
    for _ in range(3):
        await send(proxy, "GET", "/api/x", 200, headers={"Origin": APP})
    await send(proxy, "POST", "/api/upload", 200, headers={"Origin": APP}, data=b"x" * 1000)
    await send(proxy, "GET", "/public/x", 200)
    await send(dead, "GET", "/api/x", 502, headers={"Origin": APP})

    samples = await stack.scrape()
    assert named(samples, "corsproxy_requests_total") == {
        labels(rule="app", method="OPTIONS", status_class="2xx", verdict="allowed"): 2,
        labels(rule="app", method="OPTIONS", status_class="4xx", verdict="denied:method"): 1,
        labels(rule="app", method="OPTIONS", status_class="4xx", verdict="denied:origin"): 1,
        labels(rule="app", method="OPTIONS", status_class="4xx", verdict="denied:header"): 1,
        labels(rule="app", method="GET", status_class="2xx", verdict="allowed"): 3,
        labels(rule="app", method="POST", status_class="2xx", verdict="allowed"): 1,
        labels(rule="public", method="GET", status_class="2xx", verdict="none"): 1,
        labels(rule="app", method="GET", status_class="5xx", verdict="allowed"): 1,
    }
    assert named(samples, "corsproxy_preflights_total") == {
        labels(rule="app", verdict="allowed"): 2,
        labels(rule="app", verdict="denied:method"): 1,
        labels(rule="app", verdict="denied:origin"): 1,
        labels(rule="app", verdict="denied:header"): 1,
    }
    assert named(samples, "corsproxy_upstream_errors_total") == {labels(kind="refused"): 1}
    assert named(samples, "corsproxy_request_duration_seconds_count") == {labels(): 11}
    assert named(samples, "corsproxy_request_duration_seconds_bucket")[labels(le="+Inf")] == 11
    assert named(samples, "corsproxy_bytes_total") == {labels(direction="in"): 1000, labels(direction="out"): sent_out}
    assert named(samples, "corsproxy_in_flight_requests") == {labels(): 0}
    assert named(samples, "corsproxy_config_reloads_total") == {labels(result="ok"): 0, labels(result="failed"): 0}
    assert named(samples, "corsproxy_config_info") == {labels(sha256="0" * 64): 1}


async def test_in_flight_gauge_counts_a_request_while_it_runs(stack, upstream):
    proxy = await stack.proxy(upstream.url + "/v1")
    slow = asyncio.ensure_future(proxy.get("/slow?s=1"))
    for _ in range(100):
        if named(await stack.scrape(), "corsproxy_in_flight_requests") == {labels(): 1}:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the slow request never showed as in flight")
    resp = await asyncio.wait_for(slow, 5)
    assert resp.status == 200
    await resp.read()
    assert named(await stack.scrape(), "corsproxy_in_flight_requests") == {labels(): 0}


async def test_report_only_verdicts_are_marked_and_unknown_methods_count_as_other(stack, upstream):
    rules = """
rules:
  - name: trial
    paths: ["/**"]
    allow_origins: ["https://app.example.com"]
    mode: report-only
"""
    proxy = await stack.proxy(upstream.url + "/v1", rules)
    resp = await proxy.get("/x", headers={"Origin": "https://evil.example"})
    assert resp.status == 200
    resp = await proxy.request("PROPFIND", "/x", headers={"Origin": APP})
    assert resp.status == 200
    assert named(await stack.scrape(), "corsproxy_requests_total") == {
        labels(rule="trial", method="GET", status_class="2xx", verdict="denied:origin (report-only)"): 1,
        labels(rule="trial", method="other", status_class="2xx", verdict="denied:method (report-only)"): 1,
    }


async def test_reloads_are_counted_by_result_and_config_info_shows_only_the_config_in_force(stack, upstream):
    await stack.proxy(upstream.url + "/v1")
    stack.state.loaded("a" * 64)
    stack.state.failed()
    stack.state.loaded("b" * 64)
    samples = await stack.scrape()
    assert named(samples, "corsproxy_config_reloads_total") == {labels(result="ok"): 2, labels(result="failed"): 1}
    assert named(samples, "corsproxy_config_info") == {labels(sha256="b" * 64): 1}


async def test_metrics_live_on_the_apps_registry_never_the_global_one(stack, upstream):
    proxy = await stack.proxy(upstream.url + "/v1")
    assert (await proxy.get("/api/x", headers={"Origin": APP})).status == 200
    assert not [m for m in REGISTRY.collect() if m.name.startswith("corsproxy")]
    assert named(await stack.scrape(), "corsproxy_requests_total")
