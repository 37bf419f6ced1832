"""Run ``corsproxy serve`` as a real process, for tests and benchmarks (as ``aiohttp.test_utils`` is for aiohttp).

Used by tests/reliability (file descriptors and signals of a process of its own), bench/soak.py and
bench/memory_stream.py (its RSS measured apart from the client's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_process(config_text: str, workdir: Path, port: int, *, args: Sequence[str] = (),
                  timeout: float = 15.0) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m corsproxy serve`` on ``config_text`` (which must listen on 127.0.0.1:``port``) with ``args``
    (``--workers 2``), its output in ``workdir/proxy.log``; yields once the port accepts connections; SIGTERM at
    the end (SIGKILL to its whole process group, workers included, after 10 s).

    Raises RuntimeError, with the log, when the process exits or does not listen within ``timeout``.
    """
    config = workdir / "corsproxy.yaml"
    config.write_text(config_text)
    log_path = workdir / "proxy.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORSPROXY_", "PROMETHEUS_"))}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "corsproxy", "serve", "-c", str(config), *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_listening(proc, port, timeout, log_path)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the process and any worker it left behind
        proc.wait(5)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"corsproxy exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"corsproxy did not listen on 127.0.0.1:{port} within {timeout:g}s:\n"
                               f"{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
