#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: an A/B of builds that other load cannot move.

    .venv/bin/python bench/instructions.py                                   # this checkout
    .venv/bin/python bench/instructions.py --build before=/work/old/.venv/bin/python --build after=.venv/bin/python

wrk's req/s on a shared 2-core machine moves by 10-30 % between rounds (bench/README.md), more than
the few per cent a change to the request path costs. callgrind counts the instructions the proxy
process executes instead, which is the same for the same build and inputs whatever else runs.
For each build and scenario: start the bench upstream (plain Python), start ``corsproxy serve`` under
callgrind (uvloop, the bench's config), send WARMUP requests, count what it executes idle for 5 s,
then count while COUNT requests go one at a time over 8 keep-alive connections, and print instructions
per request with the idle rate times the wall time taken out (loop, parser, syscall entry included; the
kernel's side is not counted). Slow (callgrind runs the
proxy ~50x slower): a few minutes for three scenarios and two builds.

Each ``--build NAME=PYTHON`` names an interpreter whose environment has the build installed
(``pip install -e`` of a worktree); it runs with ``PYTHONSAFEPATH`` so this directory does not shadow it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
ORIGIN = "https://app.example.com"
# (method, path, body bytes, preflight): as ../shared/bench/run's scenarios
SCENARIOS = {
    "preflight": ("OPTIONS", "/small", 0, True),
    "get-small": ("GET", "/small", 0, False),
    "post-64k": ("POST", "/echo", 65536, False),
}
CONNECTIONS = 8
IDLE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not listening after {seconds} s")


def request_bytes(scenario: str, port: int) -> bytes:
    method, path, size, preflight = SCENARIOS[scenario]
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Origin: {ORIGIN}"]
    if preflight:
        lines += ["Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: content-type, authorization"]
    if size:
        lines += ["Content-Type: application/octet-stream", f"Content-Length: {size}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"x" * size


def read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one response (Content-Length framed, as the proxy sends these) off ``sock``."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    total = len(head) + 4 + (int(match.group(1)) if match else 0)
    while len(buf) < total:
        buf += _recv(sock)
    if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3")):
        raise RuntimeError(f"unexpected answer: {head[:80]!r}")
    del buf[:total]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(1 << 17)
    if not data:
        raise RuntimeError("the proxy closed the connection")
    return data


def send(port: int, scenario: str, count: int) -> None:
    message = request_bytes(scenario, port)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(CONNECTIONS)]
    bufs = [bytearray() for _ in socks]
    try:
        for i in range(count):
            sock = socks[i % CONNECTIONS]
            sock.sendall(message)
            read_response(sock, bufs[i % CONNECTIONS])
    finally:
        for sock in socks:
            sock.close()


def measure(python: str, scenario: str, count: int, warmup: int, workdir: Path, up_port: int) -> float:
    port = free_port()
    config = workdir / f"{port}.yaml"
    template = (SHARED / "corsproxy.yaml.tmpl").read_text()
    config.write_text(template.replace("@PORT@", str(port)).replace("@UPSTREAM_PORT@", str(up_port)))
    out = workdir / f"callgrind.{port}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
           python, "-m", "corsproxy", "serve", "-c", str(config)]
    env = dict(os.environ, PYTHONSAFEPATH="1")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, 180)
        send(port, scenario, warmup)
        # What the process does with no request (the config-file poll, metrics, timers), per second of wall time:
        # under callgrind requests take ~50x longer, and that work would be charged to them.
        idle = _count(proc.pid, workdir, port, lambda: time.sleep(IDLE_SECONDS))
        total = _count(proc.pid, workdir, port, lambda: send(port, scenario, count))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return (total[0] - idle[0] / idle[1] * total[1]) / count


def _count(pid: int, workdir: Path, port: int, work: Callable[[], None]) -> tuple[int, float]:
    """Instructions the process executed during ``work``, and its wall time."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    started = time.monotonic()
    work()
    seconds = time.monotonic() - started
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dumps = sorted(workdir.glob(f"callgrind.{port}.{pid}.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    return _totals(dumps[-1]), seconds


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="append", default=[], metavar="NAME=PYTHON",
                    help="a build to count (repeatable); default: this checkout's interpreter")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--count", type=int, default=2000, help="requests counted per scenario (default 2000)")
    ap.add_argument("--warmup", type=int, default=300, help="requests sent before counting (default 300)")
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("needs valgrind (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    builds = [(name, os.path.abspath(py)) for name, py in (b.split("=", 1) for b in args.build)] \
        or [("this", sys.executable)]
    scenarios = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(prefix="corsproxy-ir-") as tmp:
        workdir = Path(tmp)
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, str(SHARED / "upstream.py"), "--port", str(up_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(up_port, upstream, 20)
            results = {(name, sc): measure(py, sc, args.count, args.warmup, workdir, up_port)
                       for sc in scenarios for name, py in builds}
        finally:
            upstream.terminate()
            upstream.wait(10)
    names = [name for name, _ in builds]
    print(f"\ninstructions per request (callgrind, {args.count} requests after {args.warmup}, "
          f"{CONNECTIONS} keep-alive connections)\n")
    print(f"{'scenario':10s} " + " ".join(f"{n:>12s}" for n in names)
          + ("".join(f" {n + '÷' + names[0]:>14s}" for n in names[1:])))
    for sc in scenarios:
        base = results[(names[0], sc)]
        print(f"{sc:10s} " + " ".join(f"{results[(n, sc)]:>12,.0f}" for n in names)
              + "".join(f" {results[(n, sc)] / base:>14.3f}" for n in names[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
