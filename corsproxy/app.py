"""build_app(): the proxy application, its live config, its upstream pools and WebSocket sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from .config import Config
from .exchange import LIVE_KEY, OBSERVERS_KEY, POOLS_KEY, SESSIONS_KEY, STARTED_KEY, TAPS_KEY, Observer, retire_pools
from .proxy import handle, keep_untyped, name_server
from .snapshot import Live, Snapshot


def build_app(config: Config, *, observers: Iterable[Observer] = (),
              started: Iterable[Observer] = ()) -> web.Application:
    """The proxy app for ``config``; ``observers`` are told about every finished request,
    ``started`` about every request as it starts (for an in-flight gauge)."""
    # auto_decompress off: a request body passes byte for byte, its Content-Encoding with it (aiohttp would
    # inflate a gzip body and the upstream would get plain bytes labelled gzip).
    app = web.Application(handler_args={"max_field_size": 16 * 1024, "auto_decompress": False})
    app[LIVE_KEY] = Live(Snapshot.build(config))
    app[OBSERVERS_KEY] = list(observers)
    app[STARTED_KEY] = list(started)
    app[TAPS_KEY] = []
    app[POOLS_KEY] = {}
    app[SESSIONS_KEY] = {}
    app.cleanup_ctx.append(_close_clients)
    app.on_response_prepare.append(keep_untyped)
    app.on_response_prepare.append(name_server)
    app._router = CatchAllRouter(handle)  # the router= argument is deprecated; the attribute is not
    return app


class CatchAllRouter(web.UrlDispatcher):
    """One route takes every request, so resolve it without aiohttp's per-path lookup.

    That lookup builds a yarl URL and walks the path's prefixes: about a tenth of a preflight's
    cost (bench/README.md). The proxy handler reads ``request.raw_path`` itself.
    """

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._route = self.add_route("*", "/{tail:.*}", handler)

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        return UrlMappingMatchInfo({}, self._route)


async def _close_clients(app: web.Application) -> AsyncIterator[None]:
    # HTTP goes through upstream.Pool; aiohttp's session carries WebSockets only. Both are made on first use,
    # one for each set of upstream settings (snapshot.Snapshot.pool_key), so a reload that changes them takes effect.
    yield
    for pool in app[POOLS_KEY].values():
        await pool.close()
    for session in app[SESSIONS_KEY].values():
        await session.close()


def reload(app: web.Application, config: Config) -> None:
    """Swap the config in force; requests already running keep the snapshot they started with."""
    snap = app[LIVE_KEY].current = Snapshot.build(config)
    retire_pools(app, snap)
