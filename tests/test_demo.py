"""`corsproxy demo` as a newcomer runs it: prints the URL, serves the three origins, stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys

import aiohttp

from corsproxy import demo

DEMO = [sys.executable, "-m", "corsproxy", "demo"]


async def _read_banner(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    lines = []
    for _ in range(20):
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        lines.append(line)
        if line.startswith("Press Ctrl-C") or not line:
            break
    return "".join(lines)


async def test_demo_prints_the_url_serves_the_page_and_exits_0_on_ctrl_c():
    proc = await asyncio.create_subprocess_exec(*DEMO, "--port", "0", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        banner = await _read_banner(proc)
        page = re.search(r"Open (http://localhost:\d+/) in your browser", banner)
        proxy = re.search(r"corsproxy +(http://localhost:\d+/)", banner)
        assert page and proxy, banner
        async with aiohttp.ClientSession() as session:
            async with session.get(page.group(1).replace("localhost", "127.0.0.1")) as resp:
                assert resp.status == 200
                assert "CORS in action" in await resp.text()
            async with session.get(proxy.group(1).replace("localhost", "127.0.0.1") + "api/notes",
                                   headers={"Origin": page.group(1).rstrip("/")}) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == page.group(1).rstrip("/")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_demo_on_a_taken_port_exits_2_and_says_which():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(*DEMO, "--port", str(port), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert err.decode().strip() == f"corsproxy demo: port {port} on 127.0.0.1 is in use; choose another with --port"


async def test_demo_falls_back_to_free_ports_when_the_defaults_are_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = demo.bind(port, fallback=True)
        try:
            assert sock.getsockname()[1] not in (port, 0)
        finally:
            sock.close()


async def test_demo_config_allows_the_page_on_api_paths_only():
    running = await demo.start(0)
    try:
        rules = {rule.name: rule for rule in running.config.rules}
        assert list(rules) == ["demo-page", "private"]
        page = f"http://localhost:{running.page_port}"
        async with aiohttp.ClientSession() as session:
            proxy = f"http://127.0.0.1:{running.proxy_port}"
            async with session.get(proxy + "/api/notes", headers={"Origin": page}) as resp:
                assert resp.headers["Access-Control-Allow-Origin"] == page
            async with session.get(proxy + "/private/stats", headers={"Origin": page}) as resp:
                assert resp.status == 200
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
            async with session.get(f"http://127.0.0.1:{running.api_port}/api/notes", headers={"Origin": page}) as resp:
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    finally:
        await running.stop()
