#!/usr/bin/env python3
"""Where an idle keep-alive connection's bytes go: a tracemalloc snapshot diff over N of them (issue 17).

    .venv/bin/python bench/idle_profile.py [--connections 2000] [--top 25] [--asyncio]

Runs the proxy app (``server.make_runner``, the FastHandler connections ``serve`` uses) in this process on uvloop
(``--asyncio``: asyncio's loop), and a client in a child process that opens ``--connections`` connections, sends
one ``GET /small`` on each, reads the answer and leaves them idle. Prints the RSS growth per connection and the
allocation sites (file:line, grouped) that grew, in bytes per connection. tracemalloc sees what Python and the C
extensions allocate through Python's allocators (objects, uvloop's handles, the parser); not the kernel's
socket buffers (which are not in RSS either).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENT = textwrap.dedent("""
    import socket, sys, time
    port, n = int(sys.argv[1]), int(sys.argv[2])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /small HTTP/1.1\\r\\nHost: x\\r\\nOrigin: https://app.example.com\\r\\n\\r\\n")
        got = b""
        while not got.endswith(b"x" * 16):
            got += s.recv(65536)
        socks.append(s)
    print("open", flush=True)
    sys.stdin.readline()
""")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def upstream() -> tuple[Any, int]:
    from aiohttp import web

    from corsproxy.testing import listen_loopback

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1024)

    app = web.Application()
    app.router.add_get("/small", small)
    runner = web.AppRunner(app, access_log=None)
    return runner, await listen_loopback(runner)


async def profile(args: argparse.Namespace) -> None:

    from corsproxy import config
    from corsproxy.app import build_app
    from corsproxy.server import make_runner
    from corsproxy.testing import free_port, listen_loopback

    up_runner, up_port = await upstream()
    port = free_port()
    cfg = config.parse(f"listen: {{port: {port}}}\nupstream: {{url: 'http://127.0.0.1:{up_port}'}}\nadmin: null\n"
                       "logging: {access_log: false}\nrules:\n  - paths: ['/**']\n"
                       "    allow_origins: ['https://app.example.com']\n", "profile")
    app = build_app(cfg)
    runner = make_runner(app, cfg)
    await listen_loopback(runner, port)
    loop = asyncio.get_running_loop()

    async def clients(n: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(n)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = await loop.run_in_executor(None, proc.stdout.readline)
        assert line.strip() == "open", line
        return proc

    warm = await clients(50)  # imports, pools, first buffers: not counted
    warm.communicate("\n", timeout=10)
    await asyncio.sleep(0.5)
    gc.collect()
    tracemalloc.start(8)
    before, rss0 = tracemalloc.take_snapshot(), rss_kib()
    proc = await clients(args.connections)
    await asyncio.sleep(1.0)
    gc.collect()
    after, rss1 = tracemalloc.take_snapshot(), rss_kib()
    traced = sum(s.size_diff for s in after.compare_to(before, "filename"))
    n = args.connections
    print(f"{n} idle keep-alive connections, loop {type(loop).__module__}: RSS +{(rss1 - rss0) / n:.2f} KiB each "
          f"(tracemalloc's own bookkeeping included), traced +{traced / n / 1024:.2f} KiB each")
    print(f"\ntop {args.top} allocation sites (bytes per connection, allocations per connection):")
    for stat in after.compare_to(before, "lineno")[:args.top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {stat.size_diff / n:8.0f} B  {stat.count_diff / n:5.2f}  {where:40s} {_line(frame)}")
    print(f"\nby traceback, the largest {args.tracebacks} (innermost last):")
    for stat in after.compare_to(before, "traceback")[:args.tracebacks]:
        print(f"  {stat.size_diff / n:.0f} B per connection:")
        for frame in stat.traceback.format()[-12:]:
            print("     " + frame)
    tracemalloc.stop()
    proc.communicate("\n", timeout=10)
    await runner.cleanup()
    await up_runner.cleanup()


def _line(frame: Any) -> str:
    import linecache
    return linecache.getline(frame.filename, frame.lineno).strip()[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tracebacks", type=int, default=3, help="how many of the largest sites to trace back")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's own loop instead of uvloop")
    args = parser.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    factory = None
    if not args.asyncio:
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(profile(args))


if __name__ == "__main__":
    main()
