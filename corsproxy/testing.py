"""Run ``corsproxy serve`` as a real process, for tests and benchmarks (as ``aiohttp.test_utils`` is for aiohttp).

The one launcher: tests/test_server.py (signals, reload, workers), tests/test_drain.py, tests/reliability (file
descriptors and signals of a process of its own), bench/soak.py and bench/memory_stream.py (its RSS measured
apart from the client's). Each process runs in its own session, so its workers are stopped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def listen_loopback(runner: Any, port: int | None = None, *, ssl_context: Any = None) -> int:
    """Set up an aiohttp ``AppRunner`` (or corsproxy's GuardedRunner) and listen on 127.0.0.1 as ``serve``
    listens (listener.ListenSite); returns the port."""
    from .listener import ListenSite  # (aiohttp is not needed for the rest of this module)

    await runner.setup()
    site = ListenSite(runner, "127.0.0.1", port or 0, ssl_context=ssl_context,
                      descriptors=getattr(runner, "descriptors", None))
    await site.start()
    return site.port


class ServeProcess:
    """``python -m corsproxy serve ARGS`` in ``cwd``; its stdout+stderr collected line by line by a thread (and
    written to ``log_path`` when given). ``CORSPROXY_*``/``PROMETHEUS_*`` of this environment are not passed on."""

    def __init__(self, args: Sequence[str], cwd: Path, log_path: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CORSPROXY_", "PROMETHEUS_"))}
        self.popen = subprocess.Popen([sys.executable, "-m", "corsproxy", "serve", *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self.lines: list[str] = []
        self._log = log_path.open("w") if log_path is not None else None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._log is not None:
                self._log.write(line)
                self._log.flush()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (every line is one with logging.format: json)."""
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["logger"] == "corsproxy.access"]

    async def wait_line(self, pred: Callable[[str], bool], timeout: float = 10.0, start: int = 0) -> str:
        """The first line from ``start`` on that ``pred`` accepts (waits for it, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if pred(line):
                    return line
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching log line within {timeout}s; output:\n" + "\n".join(self.lines[-40:]))

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            assert time.monotonic() < deadline, "process did not exit in time:\n" + "\n".join(self.lines[-30:])
            await asyncio.sleep(0.05)
        return self.popen.returncode

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to the whole session (workers included) after ``timeout``."""
        if self.popen.poll() is None:
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill_group()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)
        self._reader.join(5)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        if self._log is not None:
            self._log.close()


@contextlib.contextmanager
def serve_process(config_text: str, workdir: Path, port: int, *, args: Sequence[str] = (),
                  timeout: float = 15.0) -> Iterator[ServeProcess]:
    """``corsproxy serve`` on ``config_text`` (which must listen on 127.0.0.1:``port``) with ``args``
    (``--workers 2``), its output in ``workdir/proxy.log``; yields once the port accepts connections; SIGTERM at
    the end (SIGKILL to its whole session after 10 s).

    Raises RuntimeError, with the log, when the process exits or does not listen within ``timeout``.
    """
    config = workdir / "corsproxy.yaml"
    config.write_text(config_text)
    proc = ServeProcess(["-c", str(config), *args], workdir, workdir / "proxy.log")
    try:
        _wait_listening(proc, port, timeout)
        yield proc
    finally:
        proc.stop()


def _wait_listening(proc: ServeProcess, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            proc._reader.join(5)
            raise RuntimeError(f"corsproxy exited with {proc.returncode}:\n{proc.output[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"corsproxy did not listen on 127.0.0.1:{port} within {timeout:g}s:\n"
                               f"{proc.output[-3000:]}")
        time.sleep(0.05)
