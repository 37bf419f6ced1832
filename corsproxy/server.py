"""Listeners, signals, reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web

from .app import build_app, reload
from .config import Config, ConfigError
from .guard import GuardedRunner

log = logging.getLogger("corsproxy")


def server_ssl(config: Config) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    # handler_cancellation: a client that goes away cancels its handler, and so the upstream request.
    return GuardedRunner(app, handler_cancellation=True, access_log=None,
                         shutdown_timeout=config.listen.drain_timeout)


async def serve(config: Config, load: Callable[[], Config]) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads via ``load``. Returns the exit code."""
    app = build_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=server_ssl(config))
    await site.start()
    scheme = "https" if config.listen.tls else "http"
    log.info("corsproxy listening on %s://%s:%s -> %s", scheme, config.listen.host, config.listen.port,
             config.upstream.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app, load))
    await stop.wait()
    log.info("stopping: draining in-flight requests for up to %ss", config.listen.drain_timeout)
    await runner.cleanup()
    return 0


def _reload(app: web.Application, load: Callable[[], Config]) -> None:
    try:
        config = load()
    except ConfigError as exc:
        log.error("reload failed; keeping the running config:\n%s", exc)
        return
    reload(app, config)
    log.info("config reloaded (sha256 %s)", config.sha256[:12])
