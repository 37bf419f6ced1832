"""The rollout of design §5 in real Chromium: a page's requests that a report-only rule would deny,
`corsproxy suggest --admin --write` against the running `corsproxy serve`, the rule enforced (the
file change reloads it), and the same requests now succeed in the page, its header readable."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from corsproxy.testing import free_port, serve_process
from tests.browser.conftest import Loop, fetch, open_page, start_site

pytestmark = pytest.mark.browser

CONFIG = """\
listen: {{host: 127.0.0.1, port: {port}}}
upstream: {{url: 'http://127.0.0.1:{upstream}/v1'}}
admin: {{host: 127.0.0.1, port: {admin}}}
logging: {{format: json}}

rules:
  # the app, tried out before it is enforced
  - name: app
    paths: ["/api/**"]
    allow_origins:
      - https://app.example.com    # production
    mode: report-only
"""


async def _servers() -> tuple[list[web.AppRunner], int, int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title><p>the app", content_type="text/html")

    async def items(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "items": [1, 2]}, headers={"X-Total": "2"})

    page_app, api = web.Application(), web.Application()
    page_app.router.add_get("/", page)
    api.router.add_route("*", "/v1/api/{tail:.*}", items)
    (page_runner, page_port), (api_runner, api_port) = await start_site(page_app), await start_site(api)
    return [page_runner, api_runner], page_port, api_port


def _wait_for(path: Path, text: str, start: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text()[start:]:
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{path.read_text()[-2000:]}"
        time.sleep(0.1)


def test_suggest_admin_writes_the_rule_and_once_enforced_the_page_s_requests_succeed(context, tmp_path):
    loop = Loop()
    runners, page_port, api_port = loop.run(_servers())
    port, admin = free_port(), free_port()
    text = CONFIG.format(port=port, upstream=api_port, admin=admin)
    try:
        with serve_process(text, tmp_path, port):
            config, log = tmp_path / "corsproxy.yaml", tmp_path / "proxy.log"
            page = open_page(context, f"http://localhost:{page_port}")
            api = f"http://localhost:{port}/api/items"
            calls = [(api, {}), (api, {"method": "POST", "body": "x", "headers": {"Content-Type": "text/plain"}})]
            before = [fetch(page, url, init) for url, init in calls]
            assert [r["error"] is not None for r in before] == [True, True], before  # a "CORS error" each

            suggest = subprocess.run([sys.executable, "-m", "corsproxy", "suggest", "-c", str(config),
                                      "--admin", f"http://127.0.0.1:{admin}", "--write"],
                                     capture_output=True, text=True, timeout=30)
            assert suggest.returncode == 0, suggest.stderr
            origin = f"http://localhost:{page_port}"
            assert f"+      - {origin}\n" in suggest.stdout and "+    expose_headers: [X-Total]\n" in suggest.stdout
            assert "# production" in config.read_text()

            mark = len(log.read_text())
            config.write_text(config.read_text().replace("mode: report-only", "mode: enforce"))
            _wait_for(log, "config reloaded (file changed)", mark)

            after = [fetch(page, url, init) for url, init in calls]
            assert [(r["error"], r["status"]) for r in after] == [(None, 200), (None, 200)], after
            assert [r["headers"].get("x-total") for r in after] == ["2", "2"]
            assert '"method": "POST"' in after[1]["body"]
    finally:
        for runner in runners:
            loop.run(runner.cleanup())
        loop.close()
