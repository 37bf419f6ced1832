#!/usr/bin/env python3
"""Does corsproxy stream bodies with flat memory? (design §4: "a 1 GiB upload or download passes with flat memory")

Starts an aiohttp upstream in this process and ``corsproxy serve`` as a subprocess, both on 127.0.0.1,
then streams ``--mib`` MiB down (GET) and ``--mib`` MiB up (POST, Content-Length) through the proxy.
Prints the proxy's peak RSS (VmHWM from /proc/PID/status) before and after, the growth, and MiB/s.

    .venv/bin/python bench/memory_stream.py [--mib 512] [--max-growth-mib 50] [--timeout 300]

Exit 0 when the peak grew less than --max-growth-mib, 1 when not, 2 when the run failed or timed out.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from corsproxy.testing import free_port, listen_loopback, serve_process

MIB = 2**20
CHUNK = 64 * 1024
ORIGIN = "https://app.example.com"
CONFIG = """\
listen: {{host: 127.0.0.1, port: {port}}}
upstream: {{url: "{upstream}", read_timeout: 30}}
limits: {{max_body_size: {limit}}}
admin: null
logging: {{level: warning, access_log: false}}
rules:
  - name: bench
    paths: ["/**"]
    allow_origins: ["{origin}"]
"""


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of ``pid`` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / 1024  # kB -> MiB
    return fields["VmHWM"], fields["VmRSS"]


# ---------------------------------------------------------------------- the upstream


async def down(request: web.Request) -> web.StreamResponse:
    mib = int(request.match_info["mib"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = mib * MIB
    await resp.prepare(request)
    block = b"d" * CHUNK
    for _ in range(mib * MIB // CHUNK):
        await resp.write(block)  # waits for the proxy to take it: the proxy sets the pace
    await resp.write_eof()
    return resp


async def up(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.json_response({"size": size})


async def start_upstream() -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/down/{mib}", down)
    app.router.add_post("/up", up)
    runner = web.AppRunner(app, access_log=None)
    return runner, await listen_loopback(runner)


# ---------------------------------------------------------------------- the proxy


def proxy_config(port: int, upstream_port: int, mib: int) -> str:
    return CONFIG.format(port=port, upstream=f"http://127.0.0.1:{upstream_port}", limit=(mib + 1) * MIB,
                         origin=ORIGIN)


# ---------------------------------------------------------------------- the client


async def download(session: aiohttp.ClientSession, base: str, mib: int) -> float:
    started, size = time.monotonic(), 0
    async with session.get(f"{base}/down/{mib}", headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
    assert size == mib * MIB, f"downloaded {size} bytes, expected {mib * MIB}"
    return mib / (time.monotonic() - started)


async def blocks(mib: int) -> AsyncIterator[bytes]:
    block = b"u" * CHUNK
    for _ in range(mib * MIB // CHUNK):
        yield block


async def upload(session: aiohttp.ClientSession, base: str, mib: int) -> float:
    started = time.monotonic()
    headers = {"Origin": ORIGIN, "Content-Length": str(mib * MIB), "Content-Type": "application/octet-stream"}
    async with session.post(f"{base}/up", data=blocks(mib), headers=headers) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        body = await resp.json()
    assert body["size"] == mib * MIB, f"the upstream got {body['size']} bytes, expected {mib * MIB}"
    return mib / (time.monotonic() - started)


async def measure(args: argparse.Namespace, workdir: Path) -> int:
    runner, upstream_port = await start_upstream()
    port = free_port()
    try:
        with serve_process(proxy_config(port, upstream_port, args.mib), workdir, port, timeout=20) as proc:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None)) as session:
                await download(session, base, 1)  # warm up: imports, pools, first buffers
                await upload(session, base, 1)
                before_hwm, before_rss = peak_rss_mib(proc.pid)
                down_rate = await download(session, base, args.mib)
                after_down, _ = peak_rss_mib(proc.pid)
                up_rate = await upload(session, base, args.mib)
                after_hwm, after_rss = peak_rss_mib(proc.pid)
    finally:
        await runner.cleanup()
    growth = after_hwm - before_hwm
    print(f"corsproxy pid {proc.pid}, {args.mib} MiB each way, 64 KiB client chunks")
    print(f"peak RSS (VmHWM) before: {before_hwm:7.1f} MiB   (VmRSS {before_rss:.1f} MiB)")
    print(f"peak RSS after download: {after_down:7.1f} MiB")
    print(f"peak RSS after upload:   {after_hwm:7.1f} MiB   (VmRSS {after_rss:.1f} MiB)")
    print(f"growth:                  {growth:7.1f} MiB   (limit {args.max_growth_mib} MiB)")
    print(f"download: {down_rate:7.1f} MiB/s   upload: {up_rate:7.1f} MiB/s")
    ok = growth < args.max_growth_mib
    print("PASS: memory stays flat" if ok else "FAIL: memory grew with the body size")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB to stream each way (default 512)")
    parser.add_argument("--max-growth-mib", type=float, default=50.0, help="allowed VmHWM growth (default 50)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    args = parser.parse_args()
    if not Path(f"/proc/{os.getpid()}/status").exists():
        print("needs Linux /proc to read the proxy's memory", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="corsproxy-bench-") as tmp:
        try:
            return asyncio.run(asyncio.wait_for(measure(args, Path(tmp)), args.timeout))
        except (TimeoutError, RuntimeError, AssertionError, aiohttp.ClientError) as exc:
            print(f"run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
