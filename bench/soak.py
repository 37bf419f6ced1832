"""Soak: mixed load through a real ``corsproxy serve`` subprocess on loopback.

    .venv/bin/python bench/soak.py                 # 60 s, 32 concurrent clients
    .venv/bin/python bench/soak.py --seconds 5     # the short version tests/reliability runs

Traffic, from allowed and disallowed origins: preflights, GETs of random sizes, POSTs with
random bodies, server-sent events, WebSocket echoes. Every body is checked by SHA-256 against
what the sender made; every CORS answer against the rules. Denials we ask for (a disallowed
preflight, a rejected POST, a refused WebSocket) are counted apart from errors. The proxy's
RSS and open fds are sampled every few seconds and printed at start and end.

Exit status 0 when there was no unexpected error, every hash matched, no denied request
reached the upstream, and the fd count came back to where it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from corsproxy.testing import free_port, serve_process

ALLOWED = "https://app.example.com"
DENIED = "https://evil.example.net"
RULES = """
rules:
  - name: api
    paths: ["/api/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST]
    allow_headers: [Content-Type, X-Seed]
    allow_credentials: true
  - name: strict
    paths: ["/strict/**"]
    allow_origins: [https://app.example.com]
    allow_methods: [GET, POST]
    disallowed_origin: reject
"""
SSE_EVENTS = 5
RSS_SLACK_MIB = 16  # allocator noise under load; a leak of one buffer a request would pass it in seconds


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ------------------------------------------------------------------ the upstream


class Upstream:
    """Answers every kind of soak request; counts what reached it on the "strict" paths."""

    def __init__(self) -> None:
        self.strict_hits = 0
        self.app = web.Application(client_max_size=2**22)
        self.app.router.add_get("/v1/api/get", self.get)
        self.app.router.add_post("/v1/api/post", self.post)
        self.app.router.add_post("/v1/strict/post", self.strict)
        self.app.router.add_get("/v1/api/sse", self.sse)
        self.app.router.add_get("/v1/api/ws", self.ws)

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=payload(int(request.query["seed"]), int(request.query["size"])),
                            headers={"Access-Control-Allow-Origin": request.headers.get("Origin", "*")})

    async def post(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def strict(self, request: web.Request) -> web.Response:
        self.strict_hits += 1
        await request.read()
        return web.json_response({"origin": request.headers.get("Origin")})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seed = int(request.query["seed"])
        for i in range(SSE_EVENTS):
            await resp.write(f"id: {i}\ndata: {payload(seed + i, 32).hex()}\n\n".encode())
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(hashlib.sha256(msg.data).digest() + msg.data)
        return sock


# ------------------------------------------------------------------ the load


class Unexpected(Exception):
    """An answer the contract does not allow."""


@dataclass
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    denied_on_purpose: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    bytes_checked: int = 0
    hashes_checked: int = 0
    latencies: list[float] = field(default_factory=list)


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Unexpected(what)


def cors_of(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}  # type: ignore[attr-defined]


async def preflight(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    allowed = rng.random() < 0.7
    headers = {"Origin": ALLOWED if allowed else DENIED, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type, x-seed"}
    async with s.options(f"{url}/api/post", headers=headers) as r:
        await r.read()
        if allowed:
            expect(r.status == 204 and r.headers.get("Access-Control-Allow-Origin") == ALLOWED, f"preflight {r.status}")
            return "preflight"
        expect(r.status == 403 and not cors_of(r.headers), f"denied preflight {r.status} {cors_of(r.headers)}")
        return "denied"


async def get(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    allowed = rng.random() < 0.7
    seed, size = rng.randrange(2**31), rng.choice([0, 1, 100, 4096, 65_536, 262_144, 1_048_576])
    async with s.get(f"{url}/api/get", params={"seed": seed, "size": size},
                     headers={"Origin": ALLOWED if allowed else DENIED}) as r:
        body = await r.read()
        expect(r.status == 200, f"GET {r.status}")
        # The upstream reflects every Origin; the proxy must answer only the allowed one.
        expect(cors_of(r.headers).get("access-control-allow-origin") == (ALLOWED if allowed else None),
               f"GET CORS {cors_of(r.headers)}")
    expect(hashlib.sha256(body).digest() == hashlib.sha256(payload(seed, size)).digest(), "GET body hash")
    t.bytes_checked += size
    t.hashes_checked += 1
    return "get"


async def post(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    body = payload(rng.randrange(2**31), rng.choice([0, 10, 4096, 100_000, 1_048_576]))
    chunked = rng.random() < 0.5

    async def stream() -> object:
        for i in range(0, len(body), 65_536):
            yield body[i:i + 65_536]

    async with s.post(f"{url}/api/post", data=stream() if chunked else body,
                      headers={"Origin": ALLOWED, "Content-Type": "application/octet-stream"}) as r:
        answer = await r.json()
        expect(r.status == 200, f"POST {r.status}")
    expect(answer == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}, "POST body hash")
    t.bytes_checked += len(body)
    t.hashes_checked += 1
    return "post"


async def rejected_post(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    async with s.post(f"{url}/strict/post", data=b"must not arrive", headers={"Origin": DENIED}) as r:
        await r.read()
        expect(r.status == 403 and not cors_of(r.headers), f"rejected POST {r.status}")
    return "denied"


async def sse(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    seed = rng.randrange(2**31)
    async with s.get(f"{url}/api/sse", params={"seed": seed}, headers={"Origin": ALLOWED}) as r:
        expect(r.status == 200 and r.headers.get("Access-Control-Allow-Origin") == ALLOWED, f"SSE {r.status}")
        text = (await r.read()).decode()
    want = "".join(f"id: {i}\ndata: {payload(seed + i, 32).hex()}\n\n" for i in range(SSE_EVENTS))
    expect(text == want, "SSE stream differs")
    t.hashes_checked += 1
    return "sse"


async def websocket(s: aiohttp.ClientSession, url: str, rng: random.Random, t: Tally) -> str:
    allowed = rng.random() < 0.8
    try:
        async with s.ws_connect(f"{url}/api/ws", headers={"Origin": ALLOWED if allowed else DENIED}) as ws:
            expect(allowed, "WebSocket from a disallowed origin was accepted")
            for _ in range(5):
                data = payload(rng.randrange(2**31), rng.choice([1, 1000, 50_000]))
                await ws.send_bytes(data)
                msg = await ws.receive(timeout=10)
                expect(msg.type == aiohttp.WSMsgType.BINARY and msg.data == hashlib.sha256(data).digest() + data,
                       "WebSocket echo differs")
                t.hashes_checked += 1
                t.bytes_checked += len(data)
        return "websocket"
    except aiohttp.WSServerHandshakeError as exc:
        expect(not allowed and exc.status == 403, f"WebSocket handshake {exc.status}")
        return "denied"


Kind = Callable[[aiohttp.ClientSession, str, random.Random, Tally], Awaitable[str]]
MIX: list[tuple[Kind, int]] = [(preflight, 25), (get, 30), (post, 20), (rejected_post, 5), (sse, 10),
                               (websocket, 10)]


async def client(url: str, seed: int, deadline: float, t: Tally, max_requests: int) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as s:
        while time.monotonic() < deadline and sum(t.done.values()) < max_requests:
            kind = rng.choices(kinds, weights)[0]
            started = time.monotonic()
            try:
                outcome = await kind(s, url, rng, t)
            except (TimeoutError, Unexpected, aiohttp.ClientError) as exc:
                t.errors[kind.__name__] += 1
                if len(t.first_errors) < 10:
                    t.first_errors.append(f"{kind.__name__}: {type(exc).__name__}: {exc}")
                continue
            t.latencies.append(time.monotonic() - started)
            t.done[kind.__name__] += 1
            if outcome == "denied":
                t.denied_on_purpose[kind.__name__] += 1


# ------------------------------------------------------------------ the proxy process


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def proxy_process(upstream_url: str, workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    config = (f"listen:\n  port: {port}\nupstream:\n  url: {upstream_url}\n  max_connections: 100\n"
              f"limits:\n  max_body_size: 4MiB\nadmin: null\nlogging:\n  level: warning\n{RULES}")
    with serve_process(config, workdir, port) as proc:
        yield f"http://127.0.0.1:{port}", proc


async def sample(pid: int, every: float, stop: asyncio.Event, samples: list[tuple[float, int, int]],
                 t0: float) -> None:
    while not stop.is_set():
        samples.append((time.monotonic() - t0, rss_kib(pid), fds(pid)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def soak(seconds: float, concurrency: int, max_requests: int, workdir: Path) -> dict:
    up = Upstream()
    runner = web.AppRunner(up.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        with proxy_process(upstream_url, workdir) as (url, proc):
            await asyncio.sleep(0.5)  # the proxy has closed the readiness probe's connection
            start_rss, start_fds = rss_kib(proc.pid), fds(proc.pid)
            print(f"start: proxy pid {proc.pid}, RSS {start_rss / 1024:.1f} MiB, {start_fds} fds", flush=True)
            t, samples, stop = Tally(), [], asyncio.Event()
            t0 = time.monotonic()
            sampler = asyncio.ensure_future(sample(proc.pid, max(1.0, seconds / 12), stop, samples, t0))
            deadline = t0 + seconds
            await asyncio.gather(*(client(url, i, deadline, t, max_requests) for i in range(concurrency)))
            elapsed = time.monotonic() - t0
            stop.set()
            await sampler
            loaded_rss, loaded_fds = rss_kib(proc.pid), fds(proc.pid)
            await runner.cleanup()  # the upstream drops its keep-alive connections: the proxy's pool empties
            end_fds = await settle(proc.pid, start_fds)
            end_rss = rss_kib(proc.pid)
            alive = proc.poll() is None
    finally:
        await runner.cleanup()  # a no-op when done above
    warm = samples[min(1, len(samples) - 1)]
    lat = sorted(t.latencies) or [0.0]
    report = {
        "seconds": round(elapsed, 1), "concurrency": concurrency, "requests": sum(t.done.values()),
        "by_kind": dict(t.done), "denied_on_purpose": dict(t.denied_on_purpose), "errors": dict(t.errors),
        "first_errors": t.first_errors, "hashes_checked": t.hashes_checked,
        "mib_checked": round(t.bytes_checked / 2**20),
        "denied_reached_upstream": up.strict_hits, "rps": round(sum(t.done.values()) / elapsed),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
        "rss_mib": {"start": round(start_rss / 1024, 1), "warm": round(warm[1] / 1024, 1),
                    "loaded_end": round(loaded_rss / 1024, 1), "idle_end": round(end_rss / 1024, 1),
                    "max": round(max(s[1] for s in samples) / 1024, 1)},
        "fds": {"start": start_fds, "max_under_load": max(s[2] for s in samples), "loaded_end": loaded_fds,
                "idle_end": end_fds},
        "samples": [(round(s, 1), round(r / 1024, 1), f) for s, r, f in samples],
        "proxy_alive": alive,
    }
    # RSS "flat": after warm-up (first sample under load) it may wobble, not climb.
    report["rss_growth_after_warmup_mib"] = round((loaded_rss - warm[1]) / 1024, 1)
    report["ok"] = (not t.errors and up.strict_hits == 0 and end_fds <= start_fds and alive
                    and report["requests"] > 0 and report["rss_growth_after_warmup_mib"] < RSS_SLACK_MIB)
    return report


async def settle(pid: int, target: int, within: float = 5.0) -> int:
    deadline = time.monotonic() + within
    while fds(pid) > target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return fds(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop early after this many")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corsproxy-soak-") as tmp:
        report = asyncio.run(soak(args.seconds, args.concurrency, args.max_requests, Path(tmp)))
    rss, fd = report["rss_mib"], report["fds"]
    print(f"end:   RSS {rss['loaded_end']} MiB under load, {rss['idle_end']} MiB idle (start {rss['start']}, "
          f"warm {rss['warm']}, max {rss['max']}); fds {fd['loaded_end']} under load, {fd['idle_end']} idle "
          f"(start {fd['start']}, max {fd['max_under_load']})")
    print(f"{report['requests']} requests in {report['seconds']} s ({report['rps']}/s, p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms): {report['by_kind']}")
    print(f"denied on purpose: {report['denied_on_purpose']}; denied requests that reached the upstream: "
          f"{report['denied_reached_upstream']}")
    print(f"RSS growth after warm-up: {report['rss_growth_after_warmup_mib']} MiB (limit {RSS_SLACK_MIB})")
    print(f"hashes checked: {report['hashes_checked']} ({report['mib_checked']} MiB); "
          f"unexpected errors: {report['errors'] or 0} {report['first_errors'] or ''}")
    print("samples (s, RSS MiB, fds):", report["samples"])
    if args.json:
        print(json.dumps(report))
    print("OK" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
