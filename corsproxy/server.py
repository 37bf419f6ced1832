"""Listeners, signals, live reload, graceful shutdown and the worker supervisor.

Process model:

- ``serve`` without ``--workers`` (or ``--workers 1``): one process runs the proxy listener
  and the admin listener, watches the config file and handles the signals itself.
- ``--workers N``: a supervisor process starts N workers (``python -m corsproxy serve``, each
  told its role by ``$CORSPROXY_WORKER_DIR``); each binds the proxy port with ``SO_REUSEPORT``
  and the kernel spreads connections over them. The supervisor runs the admin listener,
  watches the config file, turns SIGHUP/SIGTERM/SIGINT into SIGHUP/SIGTERM for every worker
  and restarts a worker that dies. Metrics use prometheus-client's multiprocess mode (the
  supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a temp dir it makes and reads every worker's
  files at scrape time); ``/decisions`` is gathered from each worker over a unix socket in the
  same dir and merged.

Signals: SIGHUP reloads (so does a change of the file, polled every second). An invalid file
is logged with every error and the running config stays; requests in flight finish on the
config they started with (``snapshot.Live`` swaps one reference). SIGTERM/SIGINT: /readyz turns
503, the listener stops accepting, in-flight requests get up to ``listen.drain_timeout``, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import mark_process_dead

from . import logs
from .admin import AdminState, build_admin
from .app import build_app, reload
from .config import RESTART_ONLY, Config, ConfigError
from .decisions import DecisionLog
from .exchange import LIVE_KEY
from .fastpath import Answerer, FastHandler
from .guard import FD_SPARE, Descriptors, GuardedHandler, GuardedRunner
from .listener import ListenSite
from .metrics import ConfigState, Metrics, multiprocess_registry

log = logging.getLogger("corsproxy")

WORKER_DIR_ENV = "CORSPROXY_WORKER_DIR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
POLL_INTERVAL = 1.0  # seconds between looks at the config file (in a worker, at its parent) and metrics published
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESTART_PAUSE = 1.0  # a worker that dies within this many seconds of starting is restarted after a pause
EXIT_STARTUP = 3  # could not listen (uvicorn's STARTUP_FAILURE); a supervisor does not restart such a worker
KILL_GRACE = 5.0  # seconds past drain_timeout the supervisor waits before killing a worker
# Connections the kernel may hold for the listener before it accepts them (aiohttp's default, 128, overflows when
# a thousand clients connect at once: their handshakes are retried a second or three later; nginx uses 511, Go
# 4096). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096

Loader = Callable[[], Config]


def server_ssl(config: Config) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def make_runner(app: web.Application, config: Config, *, fast_preflights: bool = True) -> GuardedRunner:
    """The runner for the proxy app.

    handler_cancellation: a client that goes away cancels its handler, and so the upstream request.
    fast_preflights: the commonest requests (answered preflights, keep-alive requests whose body, if
    any, came with the head) are answered at the connection (fastpath.py), which skips aiohttp's
    request and response objects and so ``on_response_prepare`` hooks (``exchange.TAPS_KEY`` sees those
    answers). Off only in tests, to run them on aiohttp's path too.
    descriptors: the upstream pool's connections stay possible when clients use up RLIMIT_NOFILE
    (guard.Descriptors): three a pooled connection (its socket, and the pipe a splice keeps).
    """
    handler, kwargs = (FastHandler, {"fast_answer": Answerer(app)}) if fast_preflights else (GuardedHandler, {})
    # timeout_ceil_threshold: aiohttp's default as a float, which each connection then shares (float(5) is a new one).
    return GuardedRunner(app, handler_cancellation=True, access_log=None, timeout_ceil_threshold=5.0,
                         descriptors=Descriptors(3 * config.upstream.max_connections + FD_SPARE),
                         shutdown_timeout=config.listen.drain_timeout,
                         header_timeout=config.limits.header_timeout, body_timeout=config.limits.body_timeout,
                         min_data_rate=config.limits.min_data_rate, handler=handler, handler_kwargs=kwargs)


def run(config: Config, load: Loader, *, workers: int = 1, worker_argv: list[str] | None = None,
        loop: str = "auto") -> int:
    """Run until stopped (the CLI's ``serve``) on ``loop`` (:func:`loop_factory`). Returns the exit code."""
    if os.environ.get(WORKER_DIR_ENV):
        # Until our handlers are installed, SIGHUP's default action would kill the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        if workers > 1:
            assert worker_argv is not None
            return runner.run(Supervisor(config, load, workers, worker_argv).run())
        return runner.run(serve(config, load))


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``serve --loop``: uvloop when installed (``auto``), or asyncio's own. uvloop answers 10-30 % more requests
    a second; both accept through listener.Acceptor, so neither leaves new connections waiting when busy."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise SystemExit("serve --loop uvloop: uvloop is not installed (pip install 'corsproxy[speed]')") from None
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        return "uvloop"
    return "asyncio (pip install 'corsproxy[speed]' for uvloop)"


async def serve(config: Config, load: Loader) -> int:
    """One serving process: alone, or a worker of a :class:`Supervisor`."""
    server = Server(config, load, os.environ.get(WORKER_DIR_ENV) or None)
    try:
        await server.start()
    except OSError as exc:  # port taken, address not local, unreadable TLS key...
        log.error("cannot start: %s", exc)
        await server.shutdown()
        return EXIT_STARTUP
    await server.run_until_stopped()
    return 0


# ---------------------------------------------------------------- reload


class FileWatch:
    """Notices a change of the config file: mtime, size and inode first, then the content's sha256."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp, self.digest = self._stamp(), self._digest()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # mid-replace (editors rename over the file): look again next time
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _digest(self) -> str | None:
        try:
            return hashlib.sha256(Path(self.path).read_bytes()).hexdigest()
        except OSError:
            return None

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp is None or stamp == self.stamp:
            return False
        self.stamp = stamp
        digest = self._digest()
        if digest is None or digest == self.digest:
            return False
        self.digest = digest
        return True

    def seen(self) -> None:
        """The file was just (re)loaded by other means (SIGHUP): do not load it twice."""
        self.stamp, self.digest = self._stamp(), self._digest()


class FilesWatch:
    """The config file and the origin files it reads (``{file:}``): a change of any of them reloads.

    Each is stat-ed through its symlinks, so a Kubernetes ConfigMap update (which swaps the ``..data``
    symlink the mounted names point through) is a change of every file in it.
    """

    def __init__(self, paths: list[str], kept: FilesWatch | None = None) -> None:
        old: dict[str, FileWatch] = kept.watches if kept is not None else {}
        self.watches: dict[str, FileWatch] = {path: old.get(path) or FileWatch(path) for path in dict.fromkeys(paths)}

    def changed(self) -> bool:
        return any([watch.changed() for watch in self.watches.values()])  # a list: every stamp is brought up to date

    def seen(self) -> None:
        for watch in self.watches.values():
            watch.seen()


def _watched(config: Config, extra: tuple[str, ...] = ()) -> list[str]:
    return [config.source, *config.origin_files, *extra]


class Reloader:
    """Loads the file again; applies it if valid, else logs every error and keeps what runs."""

    def __init__(self, load: Loader, state: ConfigState, apply: Callable[[Config], None],
                 current: Callable[[], Config]) -> None:
        self.load, self.state, self.apply, self.current = load, state, apply, current
        self.watch = FilesWatch(_watched(current()))

    def __call__(self, why: str) -> bool:
        if why == "SIGHUP":
            self.watch.seen()
        return self.settle(why, self.current(), self._load())

    def _load(self) -> Config | ConfigError:
        try:
            return self.load()
        except ConfigError as exc:
            return exc

    def settle(self, why: str, old: Config, new: Config | ConfigError) -> bool:
        """Apply a loaded config, or log why it could not be and keep ``old``."""
        if isinstance(new, ConfigError):
            exc = new
            self.watch = FilesWatch(_watched(old, exc.files), self.watch)  # so fixing a new origin file reloads
            self.state.failed()
            log.error("reload (%s) failed, keeping the running config (sha256 %s); %d error(s):\n%s",
                      why, old.sha256[:12], len(exc.issues), exc)
            return False
        self.apply(new)
        self.watch = FilesWatch(_watched(new), self.watch)
        self.state.loaded(new.sha256)
        log.info("config reloaded (%s): sha256 %s, %d rule(s)", why, new.sha256[:12], len(new.rules))
        changed = [name for name in RESTART_ONLY if _get(old, name) != _get(new, name)]
        if changed:
            log.warning("reload: %s changed; that takes effect on restart only", ", ".join(changed))
        return True

    def poll(self) -> None:
        if self.watch.changed():
            self("file changed")

    async def poll_in_thread(self) -> None:
        """:meth:`poll`, with the files read and checked in a thread: 100,000 origins take about 0.4 s to
        load, and the event loop keeps answering requests meanwhile (it gets the GIL every few ms)."""
        if self.watch.changed():
            old = self.current()
            self.settle("file changed", old, await asyncio.to_thread(self._load))


def _get(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def apply_logging(config: Config) -> None:
    logs.setup(config.logging.level, config.logging.format)


# ---------------------------------------------------------------- one process


class Server:
    """The proxy listener, the admin listener (a unix socket when a worker), signals and reload."""

    def __init__(self, config: Config, load: Loader, worker_dir: str | None) -> None:
        self.worker_dir = worker_dir
        registry = CollectorRegistry()
        self.metrics = Metrics(registry)
        self.config_state = ConfigState(config.sha256)
        registry.register(self.config_state)
        self.decisions = DecisionLog()
        self.access = logs.AccessLog(config.logging.access_log)
        self.app = build_app(config, observers=[self.metrics.observe, self.decisions.observe, self.access.observe],
                             started=[self.metrics.started])
        self.admin = AdminState(self.config, registry, self._decisions, before_scrape=self.metrics.publish)
        self.reloader = Reloader(load, self.config_state, self._apply, self.config)
        self.stop = asyncio.Event()
        self.runners: list[web.AppRunner] = []
        self.proxy_runner: GuardedRunner | None = None

    def config(self) -> Config:
        return self.app[LIVE_KEY].current.config

    async def _decisions(self) -> DecisionLog:
        return self.decisions

    def _apply(self, config: Config) -> None:
        reload(self.app, config)
        apply_logging(config)
        self.access.enabled = config.logging.access_log
        if self.proxy_runner is not None:
            limits = config.limits
            self.proxy_runner.set_timeouts(limits.header_timeout, limits.body_timeout, limits.min_data_rate)

    async def start(self) -> None:
        config = self.config()
        self._signals()
        runner = self.proxy_runner = make_runner(self.app, config)
        # the admin listener's accept() failing with EMFILE (asyncio's loop): one line a minute, not a traceback
        # a second; the proxy listener's are its Acceptor's, reported to the same Descriptors
        runner.descriptors.watch_accept(asyncio.get_running_loop())
        await runner.setup()
        self.runners.append(runner)
        # SO_REUSEPORT only for workers: a second copy started by mistake must fail, not share the port.
        await ListenSite(runner, config.listen.host, config.listen.port, ssl_context=server_ssl(config),
                         reuse_port=self.worker_dir is not None, backlog=LISTEN_BACKLOG,
                         descriptors=runner.descriptors).start()
        scheme = "https" if config.listen.tls else "http"
        log.info("%s pid %d listening on %s://%s:%s -> %s (event loop: %s)",
                 "worker" if self.worker_dir else "corsproxy", os.getpid(), scheme, config.listen.host,
                 config.listen.port, config.upstream.url, loop_name())
        await self._start_admin(config)

    async def _start_admin(self, config: Config) -> None:
        if self.worker_dir is None and config.admin is None:
            return
        runner = GuardedRunner(build_admin(self.admin), access_log=None)  # slow clients time out here too
        await runner.setup()
        self.runners.append(runner)
        if self.worker_dir is not None:  # only the supervisor talks to a worker's admin
            await web.UnixSite(runner, worker_socket(self.worker_dir, os.getpid())).start()
        elif config.admin is not None:
            await web.TCPSite(runner, config.admin.host, config.admin.port).start()
            log.info("admin on http://%s:%s (/healthz /readyz /metrics /config /decisions)",
                     config.admin.host, config.admin.port)

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        if self.worker_dir is None:
            loop.add_signal_handler(signal.SIGINT, self.stop.set)
        else:
            # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM each.
            loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, self.reloader, "SIGHUP")

    async def run_until_stopped(self) -> None:
        poller = asyncio.ensure_future(self._poll())
        await self.stop.wait()
        poller.cancel()
        await self.shutdown()

    async def _poll(self) -> None:
        parent = os.getppid()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.metrics.publish()  # a worker's counts reach the supervisor's /metrics through its files
            if self.worker_dir is None:
                await self.reloader.poll_in_thread()  # a worker's supervisor watches the file for it
            elif os.getppid() != parent:
                log.error("worker pid %d: the supervisor is gone; stopping", os.getpid())
                self.stop.set()

    async def shutdown(self) -> None:
        self.admin.draining = True
        drain = self.config().listen.drain_timeout
        if self.proxy_runner is not None:
            self.proxy_runner._shutdown_timeout = drain  # the value in force now: drain_timeout reloads
        log.info("stopping: no new connections; in-flight requests get up to %gs", drain)
        # The proxy first (stop accepting, drain), the admin last: /readyz says 503 meanwhile.
        for runner in self.runners:
            await runner.cleanup()
        self.metrics.publish()
        log.info("stopped (pid %d)", os.getpid())


def worker_socket(worker_dir: str, pid: int) -> str:
    return os.path.join(worker_dir, f"worker-{pid}.sock")


# ---------------------------------------------------------------- workers


class Supervisor:
    """Starts N workers, restarts any that dies, passes reload and stop on, serves the admin."""

    def __init__(self, config: Config, load: Loader, workers: int, argv: list[str]) -> None:
        self.current = config
        self.workers = workers
        self.argv = argv
        self.dir = tempfile.mkdtemp(prefix="corsproxy-workers-")
        self.env = {**os.environ, WORKER_DIR_ENV: self.dir, MULTIPROC_ENV: self.dir}
        self.config_state = ConfigState(config.sha256)
        self.admin = AdminState(lambda: self.current, multiprocess_registry(self.dir, self.config_state),
                                self._decisions)
        self.reloader = Reloader(load, self.config_state, self._apply, lambda: self.current)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stop = asyncio.Event()
        self.stopping = False
        self.exit_code = 0

    def _apply(self, config: Config) -> None:
        self.current = config
        apply_logging(config)
        for proc in self._live():
            if os.path.exists(worker_socket(self.dir, proc.pid)):  # its SIGHUP handler is installed
                proc.send_signal(signal.SIGHUP)

    def _live(self) -> list[asyncio.subprocess.Process]:
        return [p for p in self.procs.values() if p.returncode is None]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader, "SIGHUP")
        config = self.current
        log.info("supervisor pid %d: %d workers on %s:%s (SO_REUSEPORT), event loop: %s", os.getpid(),
                 self.workers, config.listen.host, config.listen.port, loop_name())
        try:
            admin = await self._start_admin(config)
        except OSError as exc:
            log.error("cannot start the admin listener: %s", exc)
            shutil.rmtree(self.dir, ignore_errors=True)
            return EXIT_STARTUP
        keepers = [asyncio.ensure_future(self._keep(i)) for i in range(self.workers)]
        poller = asyncio.ensure_future(self._poll())
        await self.stop.wait()
        poller.cancel()
        await self._stop_workers(keepers, self.current.listen.drain_timeout)
        if admin is not None:
            await admin.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("supervisor stopped")
        return self.exit_code

    async def _start_admin(self, config: Config) -> web.AppRunner | None:
        if config.admin is None:
            return None
        runner = GuardedRunner(build_admin(self.admin), access_log=None)  # slow clients time out here too
        await runner.setup()
        await web.TCPSite(runner, config.admin.host, config.admin.port).start()
        log.info("admin on http://%s:%s, covering all workers (metrics: prometheus multiprocess mode)",
                 config.admin.host, config.admin.port)
        return runner

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self.reloader.poll_in_thread()

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; start it again whenever it dies, until we stop."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env)
            self.procs[index] = proc
            started = loop.time()
            log.info("worker %d started (pid %d)", index, proc.pid)
            code = await proc.wait()
            self._forget(proc.pid)
            if self.stopping:
                log.info("worker %d (pid %d) exited with code %s", index, proc.pid, code)
                return
            if code == EXIT_STARTUP:
                log.error("worker %d (pid %d) could not start; stopping", index, proc.pid)
                self.exit_code = EXIT_STARTUP
                self.stop.set()
                return
            log.error("worker %d (pid %d) died (exit code %s); restarting it", index, proc.pid, code)
            if loop.time() - started < RESTART_PAUSE:
                await asyncio.sleep(RESTART_PAUSE)  # do not spin on a worker that cannot start

    def _forget(self, pid: int) -> None:
        mark_process_dead(pid, self.dir)  # drops its live gauges (in-flight) from the sums
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker_socket(self.dir, pid))

    async def _stop_workers(self, keepers: Sequence[asyncio.Future[None]], drain: float) -> None:
        self.stopping = True
        self.admin.draining = True
        log.info("stopping %d worker(s): in-flight requests get up to %gs", len(self._live()), drain)
        for proc in self._live():
            proc.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=drain + KILL_GRACE)
        for proc in self._live():
            log.error("worker pid %d still running after %gs; killing it", proc.pid, drain + KILL_GRACE)
            proc.kill()
        if pending:
            await asyncio.wait(pending, timeout=KILL_GRACE)

    async def _decisions(self) -> DecisionLog:
        sockets = sorted(Path(self.dir).glob("worker-*.sock"))
        parts = await asyncio.gather(*(_fetch_decisions(str(s)) for s in sockets))
        return DecisionLog.merged([p for p in parts if p is not None])


async def _fetch_decisions(path: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path),
                                         timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get("http://worker/decisions", headers={"Accept": "application/json"}) as resp:
                return dict(await resp.json())
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not read /decisions from %s: %s", path, exc)  # a worker that just died
        return None


def worker_argv(config_path: str, *, host: str | None, port: int | None, upstream: str | None,
                loop: str = "auto") -> list[str]:
    """The command line a worker runs: the supervisor's own, one worker each."""
    argv = [sys.executable, "-m", "corsproxy", "serve", "-c", os.path.abspath(config_path), "--workers", "1",
            "--loop", loop]
    for flag, value in (("--host", host), ("--port", port), ("--upstream", upstream)):
        if value is not None:
            argv += [flag, str(value)]
    return argv

