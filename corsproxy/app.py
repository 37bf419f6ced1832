"""build_app(): the proxy application, its live config and its one pooled ClientSession."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from .config import Config
from .proxy import (
    LIVE_KEY,
    OBSERVERS_KEY,
    POOLS_KEY,
    SESSION_KEY,
    STARTED_KEY,
    Live,
    Observer,
    Snapshot,
    client_ssl,
    handle,
    keep_untyped,
    name_server,
)


def build_app(config: Config, *, observers: Iterable[Observer] = (),
              started: Iterable[Observer] = ()) -> web.Application:
    """The proxy app for ``config``; ``observers`` are told about every finished request,
    ``started`` about every request as it starts (for an in-flight gauge)."""
    app = web.Application(handler_args={"max_field_size": 16 * 1024})
    app[LIVE_KEY] = Live(Snapshot.build(config))
    app[OBSERVERS_KEY] = list(observers)
    app[STARTED_KEY] = list(started)
    app[POOLS_KEY] = {}
    app.cleanup_ctx.append(_client_session)
    app.on_response_prepare.append(keep_untyped)
    app.on_response_prepare.append(name_server)
    app._router = CatchAllRouter(handle)  # the router= argument is deprecated; the attribute is not
    return app


class CatchAllRouter(web.UrlDispatcher):
    """One route takes every request, so resolve it without aiohttp's per-path lookup.

    That lookup builds a yarl URL and walks the path's prefixes: about a tenth of a preflight's
    cost (bench/README.md). The proxy handler reads ``request.raw_path`` itself.
    """

    def __init__(self, handler: web.Handler) -> None:
        super().__init__()
        self._route = self.add_route("*", "/{tail:.*}", handler)

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        return UrlMappingMatchInfo({}, self._route)


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    # HTTP goes through upstream.Pool (made on first use, closed here); aiohttp's session carries
    # WebSockets only. Upstream TLS and pool settings are read when a pool is made, so they change
    # on restart, or on a reload to another upstream.
    config = app[LIVE_KEY].current.config
    connector = aiohttp.TCPConnector(
        limit=config.upstream.max_connections, ssl=client_ssl(config), enable_cleanup_closed=False
    )
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # encoded bodies pass byte for byte
        cookie_jar=aiohttp.DummyCookieJar(),  # SECURITY: never carry one client's cookies to another
        trust_env=False,
        read_bufsize=2**16,
        # The handshake is bounded like any upstream request; once open, aiohttp drops the read
        # timeout (ws_receive=None), so an idle WebSocket is not cut.
        timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream.connect_timeout,
                                      sock_connect=config.upstream.connect_timeout,
                                      sock_read=config.upstream.read_timeout),
    ) as session:
        app[SESSION_KEY] = session
        try:
            yield
        finally:
            for pool in app[POOLS_KEY].values():
                await pool.close()


def reload(app: web.Application, config: Config) -> None:
    """Swap the config in force; requests already running keep the snapshot they started with."""
    app[LIVE_KEY].current = Snapshot.build(config)
