"""The real thing: `python -m corsproxy serve` as a subprocess in front of a real upstream on 127.0.0.1.

Reload under load, graceful stop, workers. Every process runs in its own process group, killed
in teardown whatever happened; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corsproxy.logs import ACCESS_FIELDS
from corsproxy.testing import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "https://app.example.com"
LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"  # corsproxy[speed] or not


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    procs: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        proc = ServeProcess(list(args), tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill_group()


class Setup:
    """A config file for the process under test, with free ports."""

    def __init__(self, path: Path, upstream_url: str, drain: float = 5.0, extra: str = "") -> None:
        self.path, self.upstream_url, self.drain, self.extra = path, upstream_url, drain, extra
        self.port, self.admin_port = free_port(), free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def text(self, rules: str) -> str:
        return (f"listen: {{host: 127.0.0.1, port: {self.port}, drain_timeout: {self.drain}}}\n"
                f"upstream: {{url: '{self.upstream_url}/v1', read_timeout: 30}}\n"
                f"admin: {{host: 127.0.0.1, port: {self.admin_port}}}\n"
                f"logging: {{format: json}}\n{self.extra}\n{rules}")

    def write(self, rules: str) -> None:
        # Replaced in one step (as editors and Kubernetes ConfigMaps do), so no reader sees half a file.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.text(rules))
        os.replace(tmp, self.path)


def rule(name: str, *, origins: str = f'["{ORIGIN}"]', extra: str = "") -> str:
    return f"rules:\n  - name: {name}\n    paths: ['/**']\n    allow_origins: {origins}\n{extra}"


async def until_up(session: aiohttp.ClientSession, setup: Setup, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(setup.admin + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("admin listener did not come up")


async def scrape(session: aiohttp.ClientSession, setup: Setup) -> dict[tuple[str, frozenset], float]:
    async with session.get(setup.admin + "/metrics") as resp:
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def refused(port: int, timeout: float = 3.0) -> None:
    """Wait (bounded) until nothing accepts connections on ``port`` any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} still accepts connections after {timeout}s")


# ---------------------------------------------------------------- reload


RELOAD_SECONDS = 20.0
SLACK = 0.75  # seconds a request may take to reach the proxy after the client started it


async def test_reload_under_load_fails_no_request_and_each_follows_the_config_it_started_with(
        spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url, extra="debug: {decision_header: true}")
    setup.write(rule("gen0"))
    proc = spawn("-c", str(setup.path))
    sent: dict[int, float] = {0: 0.0}  # valid generation -> when its file was written
    confirmed: dict[int, float] = {0: 0.0}  # -> when /config showed it in force
    results: list[tuple[float, float, str, int, str]] = []  # (start, end, kind, status, rule) per request
    failures: list[str] = []
    deadline = time.monotonic() + RELOAD_SECONDS

    async def client(session: aiohttp.ClientSession, kinds: tuple[str, ...], pause: float = 0.0) -> None:
        for i in range(100_000):
            await asyncio.sleep(pause)  # the machine is shared: a steady stream, not a flood
            if time.monotonic() > deadline:
                return
            kind = kinds[i % len(kinds)]
            start = time.monotonic()
            try:
                if kind == "preflight":
                    req = session.options(setup.url + "/api/x", headers={
                        "Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
                else:
                    path = "/slow?s=1.5" if kind == "slow" else "/api/x"
                    req = session.get(setup.url + path, headers={"Origin": ORIGIN})
                async with req as resp:
                    await resp.read()
                    decision = resp.headers.get("CORS-Decision", "")
                    name = decision.split(";")[0].removeprefix("rule=")
                    results.append((start, time.monotonic(), kind, resp.status, name))
                    if resp.status not in (200, 204) or not name.startswith("gen"):
                        failures.append(f"{kind}: {resp.status} {decision}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{kind}: {type(exc).__name__}: {exc}")

    async def reloader(session: aiohttp.ClientSession) -> None:
        for gen in range(1, 1000):
            if time.monotonic() > deadline - 1:
                return
            valid = gen % 2 == 1
            failed_before = total(await scrape(session, setup), "corsproxy_config_reloads_total", result="failed")
            if valid:
                sent[gen] = time.monotonic()
                setup.write(rule(f"gen{gen}"))
            else:  # two errors in one file: both must be reported
                setup.write(rule(f"bad{gen}", origins="[]", extra="    alow_methods: [GET]\n"))
            os.kill(proc.pid, signal.SIGHUP)
            for _ in range(60):  # 3 s at most for the reload to show
                await asyncio.sleep(0.05)
                if valid:
                    async with session.get(setup.admin + "/config") as resp:
                        if (await resp.json())["rules"][0]["name"] == f"gen{gen}":
                            confirmed[gen] = time.monotonic()
                            break
                elif total(await scrape(session, setup), "corsproxy_config_reloads_total",
                           result="failed") > failed_before:
                    break
            else:
                raise AssertionError(f"reload {gen} did not show within 3 s")
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - sent.get(gen, time.monotonic()))))

    async with aiohttp.ClientSession() as admin, aiohttp.ClientSession() as pooled, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        await until_up(admin, setup)
        deadline = time.monotonic() + RELOAD_SECONDS
        await asyncio.gather(reloader(admin), client(pooled, ("fast", "preflight"), 0.005),
                             client(fresh, ("fast", "preflight"), 0.01), client(pooled, ("slow",)),
                             client(fresh, ("slow", "fast")))
        metrics = await scrape(admin, setup)

    assert failures == []
    assert len(results) > 500
    valid_gens = sorted(sent)
    assert len(valid_gens) >= 8, "the test should have gone through several reloads"

    def latest(times: dict[int, float], before: float) -> int:
        return max(g for g in valid_gens if g in times and times[g] <= before)

    spanned = 0
    for start, end, kind, _, name in results:
        gen = int(name.removeprefix("gen"))
        low, high = latest(confirmed, start), latest(sent, min(end, start + SLACK))
        assert low <= gen <= high, f"{kind} started at {start:.2f} got gen{gen}, in force then: gen{low}..gen{high}"
        if kind == "slow" and latest(confirmed, end) > gen:
            spanned += 1  # a reload finished while it was in flight, and it kept its own config
    assert spanned > 0
    assert total(metrics, "corsproxy_config_reloads_total", result="ok") >= len(valid_gens) - 1
    assert total(metrics, "corsproxy_config_reloads_total", result="failed") >= len(valid_gens) - 2
    last = max(valid_gens)
    assert [k for (n, ls), v in metrics.items() if n == "corsproxy_config_info" for k in ls] == \
        [("sha256", hashlib.sha256(setup.text(rule(f"gen{last}")).encode()).hexdigest())]
    errors = [r["message"] for r in proc.records() if r["level"] == "error" and "reload" in r["message"]]
    assert errors and all("2 error(s)" in m and "allow_origins" in m and "alow_methods" in m for m in errors)


async def test_a_change_of_the_file_reloads_it_without_a_signal_and_a_bad_one_keeps_the_running_config(
        spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("first"))
    proc = spawn("-c", str(setup.path))
    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        setup.write("limits: {header_timeout: 0.5}\n" + rule("second", origins='["https://other.example"]'))
        await proc.wait_line(lambda line: "config reloaded (file changed)" in line, timeout=5)
        async with session.get(setup.admin + "/config") as resp:
            assert (await resp.json())["rules"][0]["name"] == "second"
        started = time.monotonic()  # a new connection that sends nothing gets the reloaded header_timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3  # 20 s before the reload
        writer.close()
        setup.write("rules: [")
        await proc.wait_line(lambda line: "reload (file changed) failed" in line, timeout=5)
        async with session.get(setup.url + "/x", headers={"Origin": "https://other.example"}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://other.example"
        metrics = await scrape(session, setup)
    assert total(metrics, "corsproxy_config_reloads_total", result="ok") == 1
    assert total(metrics, "corsproxy_config_reloads_total", result="failed") == 1


async def test_no_log_line_ever_carries_a_password_written_in_the_upstream_url(spawn, tmp_path, upstream):
    # SECURITY (issue 13.5): the startup line printed "-> http://bob:s3cret@..."; now such a URL is a config error
    # at start and on reload, and its message masks the password.
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path))
    await proc.wait_line(lambda line: "listening on" in line)
    setup.upstream_url = upstream.url.replace("http://", "http://bob:s3cret@")
    setup.write(rule("app"))
    failed = await proc.wait_line(lambda line: "reload (file changed) failed" in line, timeout=5)
    assert "carries a user name and password" in failed and "bob:***@" in failed
    again = spawn("-c", str(setup.path))
    assert await again.wait_exit(20) == 2
    assert any(":2:" in line and "upstream.url: " in line for line in again.lines)
    assert [line for line in proc.lines + again.lines if "s3cret" in line] == []


async def test_serve_upstream_flag_stands_in_for_a_file_without_upstream(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.path.write_text(setup.text(rule("app")).replace(f"upstream: {{url: '{upstream.url}/v1', read_timeout: 30}}\n",
                                                          ""))
    assert "upstream" not in setup.path.read_text()
    proc = spawn("-c", str(setup.path), "--upstream", upstream.url + "/v1")
    await proc.wait_line(lambda line: "listening on" in line)
    async with aiohttp.ClientSession() as session:
        async with session.get(setup.url + "/x", headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 200 and (await resp.json())["raw_path"] == "/v1/x"


# ---------------------------------------------------------------- graceful stop


async def test_sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url, drain=8)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path))
    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        async with session.get(setup.admin + "/readyz") as resp:
            assert resp.status == 200
        slow = asyncio.ensure_future(session.get(setup.url + "/slow?s=2", headers={"Origin": ORIGIN}))
        for _ in range(100):  # until the proxy holds it
            if total(await scrape(session, setup), "corsproxy_in_flight_requests") == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the slow request never showed as in flight")
        proc.popen.send_signal(signal.SIGTERM)
        await proc.wait_line(lambda line: "stopping" in line, timeout=5)
        async with session.get(setup.admin + "/readyz") as resp:
            assert resp.status == 503
            assert "draining" in await resp.text()
        await refused(setup.port)
        resp = await asyncio.wait_for(slow, 10)
        assert resp.status == 200
        assert await resp.text() == "slow"
        resp.release()
    assert await proc.wait_exit(10) == 0


async def test_a_request_longer_than_drain_timeout_is_cut_and_the_exit_code_is_still_0(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url, drain=1)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path))
    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        slow = asyncio.ensure_future(session.get(setup.url + "/slow?s=20"))
        await proc.wait_line(lambda line: "listening" in line)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGINT)
        assert await proc.wait_exit(10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(slow, 5)


# ---------------------------------------------------------------- workers


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_loop_chooses_the_event_loop_of_the_supervisor_and_its_workers(spawn, tmp_path, upstream, loop):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path), "--workers", "2", "--loop", loop)
    expected = "asyncio" if loop == "asyncio" else LOOP
    deadline = time.monotonic() + 15
    while len([r for r in proc.records() if "listening on" in r.get("message", "")]) < 2:
        assert time.monotonic() < deadline, "\n".join(proc.lines)
        await asyncio.sleep(0.05)
    loops = [r["message"] for r in proc.records() if "event loop:" in r.get("message", "")]
    assert len(loops) == 3 and all(f"event loop: {expected}" in m for m in loops), loops


async def test_two_workers_both_serve_a_killed_one_comes_back_and_sigterm_stops_all(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path), "--workers", "2")
    await proc.wait_line(lambda line: "supervisor pid" in line and f"event loop: {LOOP}" in line)
    deadline = time.monotonic() + 15
    while len([r for r in proc.records() if "worker pid" in r.get("message", "")]) < 2:
        assert time.monotonic() < deadline, "\n".join(proc.lines)
        await asyncio.sleep(0.05)
    workers = {r["pid"] for r in proc.records() if "listening on" in r.get("message", "")}
    assert len(workers) == 2 and proc.pid not in workers

    async with aiohttp.ClientSession() as admin, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        await until_up(admin, setup)
        for _ in range(40):  # a new connection each; the kernel spreads them over both listeners
            async with fresh.get(setup.url + "/api/x", headers={"Origin": "https://evil.example"}) as resp:
                assert resp.status == 200
        # A worker logs and counts a request just after its last byte went out: wait (bounded) for all 40.
        deadline = time.monotonic() + 5
        while len(proc.access()) < 40 or total(await scrape(admin, setup), "corsproxy_requests_total") < 40:
            assert time.monotonic() < deadline, f"{len(proc.access())} access lines"
            await asyncio.sleep(0.05)
        lines = proc.access()
        assert len(lines) == 40
        assert {r["pid"] for r in lines} == workers  # both served
        for line in lines:
            assert set(ACCESS_FIELDS) <= set(line)
            assert line["verdict"] == "denied:origin" and line["origin"] == "https://evil.example"
        metrics = await scrape(admin, setup)  # one scrape covers both workers
        assert total(metrics, "corsproxy_requests_total") == 40
        assert total(metrics, "corsproxy_requests_total", rule="app", verdict="denied:origin") == 40
        async with admin.get(setup.admin + "/decisions", headers={"Accept": "application/json"}) as resp:
            decisions = await resp.json()
        assert len(decisions["entries"]) == 40
        assert decisions["counts"] == [{"reason": "denied:origin: origin https://evil.example not in allow_origins",
                                        "count": 40}]

        mark = len(proc.lines)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while {r["pid"] for r in proc.records()[mark:] if "config reloaded" in r.get("message", "")} != \
                workers | {proc.pid}:
            assert time.monotonic() < deadline, "\n".join(proc.lines[mark:])
            await asyncio.sleep(0.05)

        victim = min(workers)
        mark = len(proc.lines)
        os.kill(victim, signal.SIGKILL)
        await proc.wait_line(lambda line: f"(pid {victim}) died" in line and "restarting" in line, start=mark)
        line = await proc.wait_line(lambda line: "worker pid" in line and "listening" in line, start=mark)
        newcomer = json.loads(line)["pid"]
        assert newcomer not in workers
        for _ in range(200):
            async with fresh.get(setup.url + "/api/x") as resp:
                assert resp.status == 200
            if newcomer in {r["pid"] for r in proc.access()}:
                break
        else:
            raise AssertionError("the restarted worker never served")

    proc.popen.send_signal(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0
    for pid in (workers - {victim}) | {newcomer}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_must_be_a_positive_number_or_auto(tmp_path, workers):
    done = subprocess.run([sys.executable, "-m", "corsproxy", "serve", "-c", str(tmp_path / "none.yaml"),
                           "--workers", workers], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "expected a number >= 1 or 'auto'" in done.stderr


async def test_a_port_in_use_stops_the_supervisor_with_exit_3_instead_of_restarting_workers(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    with socket.socket() as taken:  # bound without SO_REUSEPORT: the workers cannot share it
        taken.bind(("127.0.0.1", setup.port))
        taken.listen()
        proc = spawn("-c", str(setup.path), "--workers", "2")
        assert await proc.wait_exit(20) == 3
    assert any("cannot start: listen.port" in line and "is in use" in line for line in proc.lines)
    assert not any("restarting" in line for line in proc.lines)


@pytest.mark.parametrize("taken", ["listen", "admin"])
async def test_a_port_in_use_is_named_by_its_key_with_the_fix_and_nothing_else_is_said(spawn, tmp_path, upstream,
                                                                                       taken):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    port = setup.port if taken == "listen" else setup.admin_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        proc = spawn("-c", str(setup.path))
        assert await proc.wait_exit(20) == 3
    fix = ("pass --port P or set listen.port to a free port" if taken == "listen" else
           "set admin.port to a free port, or admin: null to run without the admin listener")
    assert [(r["level"], r["message"]) for r in proc.records()] == [
        ("error", f"cannot start: {taken}.port {port} on 127.0.0.1 is in use by another process; {fix}")]


async def test_a_port_flag_meeting_the_admin_port_is_said_before_anything_binds(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path), "--port", str(setup.admin_port))
    assert await proc.wait_exit(20) == 3
    assert [(r["level"], r["message"]) for r in proc.records()] == [
        ("error", f"cannot start: listen.port and admin.port are both {setup.admin_port}; pass another --port, or "
                  "give admin.port another port (default 9901), or admin: null")]


async def test_an_upstream_that_refuses_connections_is_one_warning_at_start_and_serving_goes_on(spawn, tmp_path):
    gone = free_port()
    setup = Setup(tmp_path / "config.yaml", f"http://127.0.0.1:{gone}")
    setup.write(rule("app"))
    proc = spawn("-c", str(setup.path))
    await proc.wait_line(lambda line: "listening on" in line)
    warnings = [r["message"] for r in proc.records() if r["level"] == "warning"]
    assert warnings == [f"upstream 127.0.0.1:{gone} does not accept connections (Connection refused); serving "
                        "anyway: requests get 502 and /readyz says 503 until it does"]
    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        async with session.get(setup.admin + "/readyz") as resp:
            assert resp.status == 503
        async with session.get(setup.url + "/x", headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 502


async def test_admin_null_runs_the_proxy_without_an_admin_listener(spawn, tmp_path, upstream):
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.path.write_text(setup.text(rule("app")).replace(f"admin: {{host: 127.0.0.1, port: {setup.admin_port}}}",
                                                          "admin: null"))
    proc = spawn("-c", str(setup.path))
    await proc.wait_line(lambda line: "listening on" in line)
    async with aiohttp.ClientSession() as session:
        async with session.get(setup.url + "/x", headers={"Origin": ORIGIN}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    await refused(setup.admin_port, timeout=0.5)
    assert not any("admin on" in line for line in proc.lines)


def test_serve_process_yields_a_listening_proxy_and_reports_one_that_cannot_start(tmp_path, upstream):
    from corsproxy.testing import serve_process

    port = free_port()
    config = (f"listen: {{port: {port}}}\nupstream: {{url: '{upstream.url}/v1'}}\nadmin: null\n"
              f"{rule('app')}")
    with serve_process(config, tmp_path, port) as proc, socket.create_connection(("127.0.0.1", port), timeout=2):
        assert proc.poll() is None
    assert proc.returncode == 0  # SIGTERM: a graceful stop
    with pytest.raises(RuntimeError, match=r"exited with 2:(.|\n)*unknown key .allow_origin. \(did you mean"):
        with serve_process(config.replace("allow_origins", "allow_origin"), tmp_path, port):
            pass
