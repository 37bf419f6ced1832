"""The access log and the app's own lines, text and JSON, through the real proxy."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime

import pytest
from aiohttp.test_utils import TestClient

from corsproxy import config as cfg
from corsproxy import logs
from corsproxy.app import build_app

APP = "https://app.example.com"
RULES = """
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: ["https://app.example.com"]
    allow_methods: [GET, POST]
  - name: trial
    paths: ["/trial/**"]
    allow_origins: ["https://app.example.com"]
    mode: report-only
"""


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler: logging.Handler | None = None

    def setup(self, level: str, fmt: str) -> None:
        self.close()
        self.handler = logs.setup(level, fmt, self.stream)

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler = None

    def lines(self) -> list[str]:
        """Our lines (the test servers' own aiohttp.access lines left out)."""
        return [line for line in self.stream.getvalue().splitlines() if "aiohttp.access" not in line]


@pytest.fixture
def captured() -> Iterator[Captured]:
    cap = Captured()
    level = logging.getLogger().level
    yield cap
    cap.close()
    logging.getLogger().setLevel(level)


async def proxy(aiohttp_server, aiohttp_client, upstream_url: str, *, access_log: bool = True) -> TestClient:
    config = cfg.parse(f"upstream: {{url: '{upstream_url}'}}\n{RULES}", "test.yaml", env={})
    app = build_app(config, observers=[logs.AccessLog(access_log).observe])
    return await aiohttp_client(await aiohttp_server(app, host="127.0.0.1"))


async def test_json_access_lines_parse_and_carry_every_field(aiohttp_server, aiohttp_client, upstream, captured):
    captured.setup("info", "json")
    client = await proxy(aiohttp_server, aiohttp_client, upstream.url + "/v1")
    assert (await client.get("/api/x?q=1", headers={"Origin": APP})).status == 200
    assert (await client.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "PUT"})).status \
        == 403
    assert (await client.post("/other", data=b"12345")).status == 200
    assert (await client.get("/trial/x", headers={"Origin": "https://evil.example"})).status == 200

    lines = [json.loads(line) for line in captured.lines()]
    assert [line["logger"] for line in lines] == ["corsproxy.access"] * 4
    for line in lines:
        assert set(logs.ACCESS_FIELDS) <= set(line), line
        datetime.fromisoformat(line["time"])
        assert line["level"] == "info" and line["client"] == "127.0.0.1"
        assert isinstance(line["duration"], float) and 0 <= line["duration"] < 5
        assert isinstance(line["bytes"], int) and isinstance(line["status"], int)
    allowed, denied, plain, trial = lines
    assert (allowed["method"], allowed["path"], allowed["status"], allowed["rule"], allowed["verdict"],
            allowed["origin"]) == ("GET", "/api/x?q=1", 200, "app", "allowed", APP)
    assert allowed["bytes"] > 0 and "reason" not in allowed
    assert (denied["status"], denied["verdict"], denied["bytes"]) == (403, "denied:method", len(
        "method PUT not in allow_methods (rule 'app')\n"))
    assert denied["reason"] == "method PUT not in allow_methods (rule 'app')"
    assert (plain["rule"], plain["verdict"], plain["origin"], plain["bytes_in"]) == ("-", "none", "-", 5)
    assert (trial["verdict"], trial["rule"]) == ("denied:origin (report-only)", "trial")
    assert trial["reason"] == "origin https://evil.example not in allow_origins (rule 'trial')"


async def test_text_access_line_reads_as_one_line_with_reason_for_a_denial(aiohttp_server, aiohttp_client, upstream,
                                                                          captured):
    captured.setup("info", "text")
    client = await proxy(aiohttp_server, aiohttp_client, upstream.url + "/v1")
    resp = await client.options("/api/x", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "GET"})
    assert resp.status == 403
    [line] = captured.lines()
    assert re.fullmatch(r'\S+Z INFO corsproxy\.access\[\d+\]: 127\.0\.0\.1 "OPTIONS /api/x" 403 \d+B [0-9.]+ms '
                        r'rule=app '
                        r'verdict=denied:origin origin=https://evil\.example '
                        r'reason="origin https://evil\.example not in allow_origins \(rule \'app\'\)"', line), line


async def test_access_log_false_logs_no_request_but_denials_and_app_lines_still_come_as_json(
        aiohttp_server, aiohttp_client, captured):
    captured.setup("info", "json")
    client = await proxy(aiohttp_server, aiohttp_client, "http://127.0.0.1:1", access_log=False)
    assert (await client.get("/api/x", headers={"Origin": APP})).status == 502
    resp = await client.options("/api/x", headers={"Origin": APP, "Access-Control-Request-Method": "PUT"})
    assert resp.status == 403
    refused, denial = [json.loads(text) for text in captured.lines()]
    assert refused["logger"] == "corsproxy" and refused["level"] == "warning"
    assert refused["message"].startswith("upstream refused for GET /api/x")
    assert (denial["logger"], denial["level"]) == ("corsproxy", "info")
    assert denial["message"] == "CORS denied:method: OPTIONS /api/x: method PUT not in allow_methods (rule 'app')"


async def test_access_log_is_kept_when_level_is_warning(aiohttp_server, aiohttp_client, upstream, captured):
    captured.setup("warning", "json")
    client = await proxy(aiohttp_server, aiohttp_client, upstream.url + "/v1")
    assert (await client.get("/api/x", headers={"Origin": APP})).status == 200
    logging.getLogger("corsproxy").info("an app line below the level")
    assert [json.loads(text)["logger"] for text in captured.lines()] == ["corsproxy.access"]


def test_setup_again_replaces_its_handler_instead_of_adding_one(captured):
    captured.setup("info", "text")
    first = captured.handler
    second = logs.setup("info", "json", io.StringIO())
    try:
        ours = [h for h in logging.getLogger().handlers if h in (first, second)]
        assert ours == [second]
    finally:
        logging.getLogger().removeHandler(second)
