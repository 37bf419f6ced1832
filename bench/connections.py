#!/usr/bin/env python3
"""What each open connection, stream and WebSocket costs, beside nginx and Caddy, in one run (issue 17).

    .venv/bin/python bench/connections.py                 # about 6 minutes
    .venv/bin/python bench/connections.py --quick         # about 2 minutes: shorter holds and wrk runs
    .venv/bin/python bench/connections.py --ws-interval 60 --ws-hold 300   # the issue's "a message a minute"

For each target (nginx with 1 worker, Caddy with GOMAXPROCS=1, both from ../shared/bench/peers/, and
``corsproxy serve`` through corsproxy.testing.ServeProcess), a fresh process per phase:

1. **idle keep-alive**: ``--idle`` connections (5,000) each send one ``GET /small`` and then stay open, idle;
   RSS of the target's process tree (VmRSS, /proc, summed over nginx's master and worker) before and after,
   divided by the count. A sample of them is asked again afterwards to prove they were still open.
2. **WebSockets**: ``--ws`` (1,000) WebSockets relayed to an echo upstream; each sends a message every
   ``--ws-interval`` seconds (staggered) for ``--ws-hold`` seconds. The issue asks for "idle, a message a
   minute": the default interval is 20 s, so that a run takes minutes (RSS at rest does not depend on it; pass
   ``--ws-interval 60`` for the real pace). RSS per relayed pair (a client and an upstream connection).
3. **SSE**: ``--sse`` (1,000) concurrent ``text/event-stream`` responses, an event a second each from the
   upstream, held ``--sse-hold`` seconds: RSS per stream and the target's CPU per stream (µs of CPU per second
   of streaming).
4. **latency under 1,000 connections**: ``wrk -t2 -c1000 --latency`` with ../shared/bench/wrk/scenario.lua,
   preflight and ``GET /small`` (1 KiB): req/s, p50, p99, errors, and the target's CPU µs per request.
5. **origins**: the 100,000-exact + 1,000-wildcard origin rule of bench/origins_scale.py: load + check +
   compile time and RSS (a fresh process each, its ``measure``), and ``decide()`` time against ten entries.

Two changes to the rendered nginx config, both printed with the table: ``worker_connections`` 4096 -> 16384
(5,000 clients would not fit) and the two ``Upgrade``/``Connection`` lines and an hour's
``proxy_read_timeout`` that nginx needs to relay a WebSocket at all (Caddy and corsproxy do it unasked).

The upstream is a small aiohttp app this file runs as a process of its own (``--upstream PORT``). All traffic is
on 127.0.0.1; every wait is bounded and every process this starts is stopped by its pid. Linux only (/proc).
This raises its own soft RLIMIT_NOFILE to the hard limit (children inherit it). ``--out FILE`` writes the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ORIGIN = "https://app.example.com"
SMALL_BODY = b"x" * 1024
GET_SMALL = (f"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n\r\n").encode()
SSE_REQUEST = (f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
OPEN_AT_ONCE = 200  # connections being opened at a time
KIB = 1024


def harness() -> ModuleType:
    """../shared/bench/run as a module: its peer templates, process and /proc helpers are reused as they are."""
    loader = importlib.machinery.SourceFileLoader("shared_bench_run", str(SHARED / "run"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # (its dataclasses look their module up)
    loader.exec_module(module)
    return module


H = harness()


# ---------------------------------------------------------------------- the upstream (a process of its own)


def upstream_main(port: int, sse_interval: float) -> None:
    from aiohttp import WSMsgType, web

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, headers={"X-Upstream": "bench", "Cache-Control": "no-store"})

    async def options(request: web.Request) -> web.Response:
        return web.Response(status=204)  # no CORS headers: a target that forwards preflights is seen

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        n = 0
        while n < 100_000:  # bounded; the client ends it long before
            await resp.write(b"data: tick %d\n\n" % n)
            n += 1
            await asyncio.sleep(sse_interval)
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_route("OPTIONS", "/{tail:.*}", options)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)
    try:
        import uvloop
        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_forever(app, port))


async def _serve_forever(app: Any, port: int) -> None:
    from aiohttp import web
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


# ---------------------------------------------------------------------- targets


@dataclass
class Running:
    name: str
    port: int
    pid: int
    stop: Callable[[], None]

    def rss_kib(self) -> int:
        return int(H.tree_status_kib(self.pid, "VmRSS"))

    def cpu_s(self) -> float:
        return float(H.tree_cpu_s(self.pid))


@dataclass
class Bench:
    args: argparse.Namespace
    rundir: Path
    upstream_port: int
    nginx_changes: list[str] = field(default_factory=list)

    def targets(self) -> list[str]:
        names = []
        for name, exe in (("nginx", "nginx"), ("caddy", "caddy")):
            if shutil.which(exe) or os.access(f"/usr/sbin/{exe}", os.X_OK):
                names.append(name)
            else:
                log(f"skip {name}: not installed (apt-get install -y {exe})")
        return [*names, "corsproxy"]

    @contextlib.contextmanager
    def start(self, name: str) -> Iterator[Running]:
        if name == "corsproxy":
            with self._corsproxy() as running:
                yield running
            return
        ns = argparse.Namespace(targets=name, peer_cpus=1, node_path=None, proxy_cmd=[], proxy_label=[])
        target = next(t for t in H.make_targets(ns, self.rundir, self.upstream_port) if t.name == name)
        if name == "nginx":
            self._patch_nginx(self.rundir / "nginx.conf")
        proc = H.Proc(target.argv, self.rundir / f"{name}.log", env=target.env)
        try:
            if not H.wait_port(target.port, proc.p):
                raise RuntimeError(f"{name} did not listen: {proc.tail(5)}")
            yield Running(name, target.port, proc.pid, proc.stop)
        finally:
            proc.stop()

    @contextlib.contextmanager
    def _corsproxy(self) -> Iterator[Running]:
        from corsproxy.testing import free_port, serve_process
        port = free_port()
        text = (SHARED / "corsproxy.yaml.tmpl").read_text()
        text = text.replace("@PORT@", str(port)).replace("@UPSTREAM_PORT@", str(self.upstream_port))
        folder = Path(tempfile.mkdtemp(dir=self.rundir, prefix="corsproxy-"))
        with serve_process(text, folder, port, timeout=20) as proc:
            yield Running("corsproxy", port, proc.pid, proc.stop)

    def _patch_nginx(self, conf: Path) -> None:
        text = conf.read_text()
        edits = [("worker_connections 4096;", "worker_connections 16384;"),
                 ('proxy_set_header Connection "";',
                  "proxy_set_header Upgrade $http_upgrade;\n"
                  "            proxy_set_header Connection $connection_upgrade;\n"
                  "            proxy_read_timeout 1h;"),
                 ("    upstream bench_upstream {",
                  "    map $http_upgrade $connection_upgrade {\n        default upgrade;\n        \"\" \"\";\n    }\n\n"
                  "    upstream bench_upstream {")]
        for old, new in edits:
            if old not in text:
                raise RuntimeError(f"the nginx template changed: {old!r} is not in it")
            text = text.replace(old, new, 1)
        conf.write_text(text)
        self.nginx_changes = ["worker_connections 16384 (was 4096)",
                              "Upgrade/Connection $connection_upgrade and proxy_read_timeout 1h (WebSockets)"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- clients


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length or chunked): its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return status, body
    return status, b""


async def gather_bounded(factories: list[Callable[[], Awaitable[Any]]], at_once: int = OPEN_AT_ONCE) -> list[Any]:
    sem = asyncio.Semaphore(at_once)

    async def one(make: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await make()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)


def opened(results: list[Any], into: dict[str, Any]) -> list[Any]:
    """The ones that opened; how many did not, and the first error, go into ``into``."""
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        into["failed_to_open"] = len(failed)
        into["first_error"] = f"{type(failed[0]).__name__}: {failed[0]}"
        log(f"  {len(failed)} failed to open; first: {into['first_error']}")
    return [r for r in results if not isinstance(r, BaseException)]


async def settle(target: Running, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return target.rss_kib()


async def idle_phase(bench: Bench, target: Running) -> dict[str, Any]:
    n = bench.args.idle
    await _warm(target)
    before = await settle(target, 1.0)

    async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 30)
        writer.write(GET_SMALL)
        status, body = await asyncio.wait_for(read_response(reader), 30)
        assert status == 200 and body == SMALL_BODY, status
        return reader, writer

    started = time.monotonic()
    result: dict[str, Any] = {}
    conns = opened(await gather_bounded([open_one] * n), result)
    opened_s = time.monotonic() - started
    after = await settle(target, 2.0)
    sample = conns[:: max(1, n // 50)]
    answers = await asyncio.gather(*(_ask(r, w) for r, w in sample))
    for _, writer in conns:
        writer.close()
    return {**result, "connections": len(conns), "rss_before_kib": before, "rss_after_kib": after,
            "open_s": round(opened_s, 2), "kib_per_conn": (after - before) / len(conns),
            "sample_still_open": sum(answers), "sample": len(sample)}


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    try:
        writer.write(GET_SMALL)
        status, _ = await asyncio.wait_for(read_response(reader), 10)
        return status == 200
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False


async def _warm(target: Running) -> None:
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        writer.write(GET_SMALL)
        await asyncio.wait_for(read_response(reader), 10)
        writer.close()


async def ws_phase(bench: Bench, target: Running) -> dict[str, Any]:
    import aiohttp
    n, interval, hold = bench.args.ws, bench.args.ws_interval, bench.args.ws_hold
    url = f"http://127.0.0.1:{target.port}/ws"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        async with session.ws_connect(url, headers={"Origin": ORIGIN}) as sock:  # warm up
            await sock.send_str("warm")
            await asyncio.wait_for(sock.receive(), 10)
        await _warm(target)
        before = await settle(target, 1.0)

        async def open_one() -> aiohttp.ClientWebSocketResponse:
            return await asyncio.wait_for(session.ws_connect(url, headers={"Origin": ORIGIN}, autoping=True), 30)

        result: dict[str, Any] = {}
        socks = opened(await gather_bounded([open_one] * n), result)
        n = len(socks)
        echoes = [0]
        deadline = time.monotonic() + hold

        async def talk(i: int, sock: aiohttp.ClientWebSocketResponse) -> None:
            await asyncio.sleep(interval * i / n)  # staggered: n / interval messages a second in all
            while time.monotonic() < deadline:
                await sock.send_str(f"m{i}")
                msg = await asyncio.wait_for(sock.receive(), 30)
                if msg.type == aiohttp.WSMsgType.TEXT and msg.data == f"m{i}":
                    echoes[0] += 1
                await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))

        cpu0 = target.cpu_s()
        await asyncio.gather(*(talk(i, s) for i, s in enumerate(socks)))
        cpu = target.cpu_s() - cpu0
        after = target.rss_kib()
        open_at_end = sum(not s.closed for s in socks)
        await asyncio.gather(*(s.close() for s in socks))
    return {**result, "websockets": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_pair": (after - before) / n,
            "echoes": echoes[0], "open_at_end": open_at_end, "hold_s": hold, "interval_s": interval,
            "cpu_s": round(cpu, 3)}


async def sse_phase(bench: Bench, target: Running) -> dict[str, Any]:
    n, hold = bench.args.sse, bench.args.sse_hold
    await _warm(target)
    before = await settle(target, 1.0)
    events = [0]
    stop = asyncio.Event()

    async def open_one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 30)
        writer.write(SSE_REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        readers.append(asyncio.ensure_future(read_events(reader)))
        return writer

    async def read_events(reader: asyncio.StreamReader) -> None:
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                return
            events[0] += chunk.count(b"data: tick")

    readers: list[asyncio.Future[None]] = []
    result: dict[str, Any] = {}
    writers = opened(await gather_bounded([open_one] * n), result)
    n = len(writers)
    await asyncio.sleep(2.0)  # every stream has had its first events
    cpu0, events0, rss0 = target.cpu_s(), events[0], target.rss_kib()
    await asyncio.sleep(hold)
    cpu, got, after = target.cpu_s() - cpu0, events[0] - events0, target.rss_kib()
    stop.set()
    for writer in writers:
        writer.close()
    for fut in readers:
        fut.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return {**result, "streams": n, "rss_before_kib": before, "rss_open_kib": rss0, "rss_after_kib": after,
            "kib_per_stream": (after - before) / n, "cpu_s": round(cpu, 3), "events": got, "hold_s": hold,
            "cpu_us_per_stream_s": cpu * 1e6 / n / hold, "cpu_us_per_event": cpu * 1e6 / got if got else None}


def wrk_phase(bench: Bench, target: Running, scenario: str) -> dict[str, Any]:
    preflight = scenario == "preflight"
    env = dict(os.environ, BENCH_METHOD="OPTIONS" if preflight else "GET", BENCH_ORIGIN=ORIGIN,
               BENCH_PREFLIGHT="1" if preflight else "0", BENCH_BODY="0")
    url = f"http://127.0.0.1:{target.port}/small"
    script = str(SHARED / "wrk" / "scenario.lua")
    c, d = bench.args.wrk_connections, bench.args.wrk_duration

    def wrk(seconds: float) -> tuple[str, float]:
        cpu0 = target.cpu_s()
        r = subprocess.run(["wrk", "-t2", f"-c{c}", f"-d{seconds:g}s", "--timeout", "5s", "--latency", "-s", script,
                            url], capture_output=True, text=True, env=env, timeout=seconds + 60)
        return r.stdout, target.cpu_s() - cpu0

    wrk(1)  # warm up: every connection opened once
    out, cpu = wrk(d)
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            data["errors_total"] = sum(data["errors"].values())
            data["cpu_us_per_req"] = cpu * 1e6 / data["requests"] if data["requests"] else None
            data["connections"] = c
            return data
    raise RuntimeError(f"wrk gave no result for {target.name}/{scenario}: {out[-400:]}")


def origins_phase(quick: bool) -> dict[str, Any]:
    from multidict import CIMultiDict
    from origins_scale import LARGE, SMALL, make_config

    from corsproxy import config
    from corsproxy.policy import CorsRequest, Policy, decide

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (exact, wild) in (("10", SMALL), ("100,000", LARGE)):
            folder = Path(tmp) / name.replace(",", "")
            folder.mkdir()
            path = make_config(folder, exact, wild)
            runs = [json.loads(subprocess.run([sys.executable, str(ROOT / "bench" / "origins_scale.py"), "--measure",
                                               str(path)], check=True, capture_output=True, text=True).stdout)
                    for _ in range(1 if quick else 3)]
            policy = Policy.from_config(config.load(path, env={}))
            req = CorsRequest.from_headers("GET", "/api/items/7", CIMultiDict({"Origin": ORIGIN}))
            assert decide(policy, req).verdict == "allowed"
            decide_us = min(timeit.repeat(lambda: decide(policy, req), number=20_000, repeat=5)) / 20_000 * 1e6
            result[name] = {"load_ms": min(r["seconds"] for r in runs) * 1000,
                            "rss_mib": min(r["rss_mib"] for r in runs), "decide_us": decide_us,
                            "origins": runs[0]["origins"]}
    return result


# ---------------------------------------------------------------------- the run


async def run_async_phase(bench: Bench, name: str, phase: Callable[[Bench, Running], Awaitable[dict[str, Any]]],
                          timeout: float) -> dict[str, Any]:
    with bench.start(name) as target:
        rest = target.rss_kib()
        result = await asyncio.wait_for(phase(bench, target), timeout)
        result["resting_rss_kib"] = rest
        return result


async def measure(bench: Bench) -> dict[str, Any]:
    import aiohttp
    args = bench.args
    results: dict[str, Any] = {name: {} for name in bench.targets()}
    phases: list[tuple[str, Callable[[Bench, Running], Awaitable[dict[str, Any]]], float]] = [
        ("idle", idle_phase, 300), ("ws", ws_phase, args.ws_hold + 300), ("sse", sse_phase, args.sse_hold + 300)]
    for key, phase, timeout in phases:
        if key in args.skip:
            continue
        for name in results:
            log(f"{key}: {name} ...")
            try:
                results[name][key] = await run_async_phase(bench, name, phase, timeout)
            except (OSError, RuntimeError, AssertionError, TimeoutError, asyncio.IncompleteReadError,
                    aiohttp.ClientError) as exc:
                log(f"{key}: {name} failed: {type(exc).__name__}: {exc}")
                results[name][key] = {"failed": f"{type(exc).__name__}: {exc}"}
    if "wrk" not in args.skip and shutil.which("wrk"):
        for scenario in ("preflight", "get-small"):
            for name in results:
                log(f"wrk -c{args.wrk_connections} {scenario}: {name} ...")
                with bench.start(name) as target:
                    try:
                        results[name][scenario] = wrk_phase(bench, target, scenario)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        results[name][scenario] = {"failed": str(exc)}
    if "origins" not in args.skip:
        log("origins ...")
        results.setdefault("corsproxy", {})["origins"] = origins_phase(args.quick)
    return results


def cell(results: dict[str, Any], name: str, *keys: str) -> float | None:
    value: Any = results.get(name, {})
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, int | float) else None


def table(results: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, list[float | None], str]]:
    names = list(results)
    rows: list[tuple[str, tuple[str, ...], str]] = [
        ("resting RSS MiB (before the idle phase)", ("idle", "resting_rss_kib"), "mib"),
        (f"idle keep-alive: KiB per connection ({args.idle:,})", ("idle", "kib_per_conn"), ".2f"),
        (f"WebSocket: KiB per relayed pair ({args.ws:,})", ("ws", "kib_per_pair"), ".2f"),
        (f"SSE: KiB per stream ({args.sse:,})", ("sse", "kib_per_stream"), ".2f"),
        ("SSE: CPU µs per stream-second (1 event/s)", ("sse", "cpu_us_per_stream_s"), ".1f"),
        ("SSE: CPU µs per event", ("sse", "cpu_us_per_event"), ".1f"),
    ]
    for scenario in ("preflight", "get-small"):
        label = f"{scenario} -c{args.wrk_connections}"
        rows += [(f"{label}: req/s", (scenario, "rps"), ".0f"),
                 (f"{label}: p50 ms", (scenario, "latency_us", "p50"), "ms"),
                 (f"{label}: p99 ms", (scenario, "latency_us", "p99"), "ms"),
                 (f"{label}: errors", (scenario, "errors_total"), ".0f"),
                 (f"{label}: CPU µs/req", (scenario, "cpu_us_per_req"), ".1f")]
    out = []
    for label, keys, fmt in rows:
        out.append((label, [cell(results, n, *keys) for n in names], fmt))
    return out


def fmt(value: float | None, how: str) -> str:
    if value is None:
        return "-"
    if how == "mib":
        return f"{value / 1024:.1f}"
    if how == "ms":
        return f"{value / 1000:.2f}"
    return format(value, how)


def print_table(results: dict[str, Any], args: argparse.Namespace, changes: list[str]) -> None:
    names = list(results)
    peers = [n for n in ("nginx", "caddy") if n in names]
    head = ["", *names, *[f"corsproxy ÷ {p}" for p in peers]]
    lines = [head]
    for label, values, how in table(results, args):
        row = [label, *[fmt(v, how) for v in values]]
        ours = values[names.index("corsproxy")] if "corsproxy" in names else None
        for peer in peers:
            theirs = values[names.index(peer)]
            row.append(f"{ours / theirs:.2f}" if ours is not None and theirs else "-")
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    print()
    for i, row in enumerate(lines):
        print("| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))
              + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    origins = results.get("corsproxy", {}).get("origins")
    if origins:
        print("\norigins (corsproxy; one rule, origins from a file; fresh process each for load/RSS):")
        for name, r in origins.items():
            print(f"  {name:8s} {r['origins']:7d} entries: load+check+compile {r['load_ms']:7.1f} ms, "
                  f"RSS +{r['rss_mib']:5.1f} MiB, decide() {r['decide_us']:.2f} µs")
    print("\nchecks:")
    for name in names:
        idle, ws, sse = (results[name].get(k, {}) for k in ("idle", "ws", "sse"))
        print(f"  {name}: idle sample still open {idle.get('sample_still_open', '-')}/{idle.get('sample', '-')}; "
              f"WebSockets open at end {ws.get('open_at_end', '-')}, echoes {ws.get('echoes', '-')}; "
              f"SSE events {sse.get('events', '-')} in {sse.get('hold_s', '-')} s"
              + "".join(f"; {k} failed: {v['failed']}" for k, v in results[name].items()
                        if isinstance(v, dict) and "failed" in v))
    print(f"\nWebSockets: a message every {args.ws_interval:g} s each, held {args.ws_hold:g} s "
          "(the issue's pace is one a minute: --ws-interval 60)")
    if changes:
        print("configs changed from the shared templates: " + "; ".join(changes))
    print("nginx: 1 worker; caddy: GOMAXPROCS=1; corsproxy: one process, uvloop when installed")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter holds and wrk runs (about 2 minutes)")
    parser.add_argument("--idle", type=int, default=5000, help="idle keep-alive connections (default 5000)")
    parser.add_argument("--ws", type=int, default=1000, help="WebSockets (default 1000)")
    parser.add_argument("--ws-interval", type=float, help="seconds between a WebSocket's messages (default 20)")
    parser.add_argument("--ws-hold", type=float, help="seconds the WebSockets stay open (default 40)")
    parser.add_argument("--sse", type=int, default=1000, help="SSE streams (default 1000)")
    parser.add_argument("--sse-hold", type=float, help="seconds the SSE streams are measured over (default 20)")
    parser.add_argument("--wrk-connections", type=int, default=1000)
    parser.add_argument("--wrk-duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--skip", default="", help="comma list of phases to leave out: idle,ws,sse,wrk,origins")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # run as the upstream on this port
    parser.add_argument("--sse-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        upstream_main(args.upstream, args.sse_interval)
        return 0
    quick = args.quick
    args.ws_interval = args.ws_interval or (5.0 if quick else 20.0)
    args.ws_hold = args.ws_hold or (10.0 if quick else 40.0)
    args.sse_hold = args.sse_hold or (5.0 if quick else 20.0)
    args.wrk_duration = args.wrk_duration or (3.0 if quick else 10.0)
    args.skip = {s for s in args.skip.split(",") if s}
    soft, hard = raise_nofile()
    needed = max(args.idle, args.ws * 2, args.sse, args.wrk_connections) + 200
    if soft < needed:
        log(f"RLIMIT_NOFILE is {soft} (hard {hard}); this run needs about {needed}: lower --idle or raise the limit")
        return 2
    rundir = Path(tempfile.mkdtemp(prefix="corsproxy-connections-"))
    rundir.chmod(0o755)  # nginx workers started by root run as nobody
    from corsproxy.testing import free_port
    up_port = free_port()
    upstream = H.Proc([sys.executable, __file__, "--upstream", str(up_port), "--sse-interval",
                       str(args.sse_interval)], rundir / "upstream.log")
    try:
        if not H.wait_port(up_port, upstream.p):
            log(f"the upstream did not start: {upstream.tail()}")
            return 2
        bench = Bench(args, rundir, up_port)
        results = _run(measure(bench))
    finally:
        upstream.stop()
        shutil.rmtree(rundir, ignore_errors=True)
    print_table(results, args, bench.nginx_changes)
    if args.out:
        args.out.write_text(json.dumps({"settings": {k: (sorted(v) if isinstance(v, set) else str(v)
                                                         if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()},
                                        "results": results}, indent=1))
    return 0


def _run(coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
