"""The admin listener: /healthz /readyz /metrics /config /decisions, on its own host and port.

Keep it private (it shows the config and recent denials). It is served by the one process
(or, with ``--workers``, by the supervisor, which gathers every worker's numbers: see server.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from yarl import URL

from .config import RESTART_ONLY, Config, describe
from .decisions import DEFAULT_REFRESH
from .headers import SERVER

READY_TIMEOUT = 2.0  # seconds /readyz waits for the upstream's TCP handshake at most


class AdminState:
    """What the admin handlers read; ``draining`` turns /readyz to 503 when shutdown starts."""

    def __init__(self, config: Callable[[], Config], registry: CollectorRegistry,
                 decisions: Callable[[], Awaitable[Any]], before_scrape: Callable[[], None] | None = None) -> None:
        self.config = config
        self.registry = registry
        self.decisions = decisions  # -> an object with to_json() and, optionally, render_html()
        self.before_scrape = before_scrape  # brings the registry up to date (Metrics.publish)
        self.draining = False
        self.started = config()  # the config at start: listen, admin and the pool keep its values until restart


ADMIN_KEY = web.AppKey("admin", AdminState)


# The index at "/": every endpoint with what it answers.
ENDPOINTS = (
    ("/healthz", "200 while the process runs (liveness)"),
    ("/readyz", "200 when the upstream accepts a connection, else 503; 503 while draining (readiness)"),
    ("/metrics", "Prometheus text format"),
    ("/config", "the config in force as JSON, and what waits for a restart"),
    ("/decisions", "the last CORS decisions that were not plain allows, with their reasons (JSON with "
                   "Accept: application/json)"),
)


def build_admin(state: AdminState) -> web.Application:
    app = web.Application()
    app[ADMIN_KEY] = state
    app.on_response_prepare.append(name_server)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", config)
    app.router.add_get("/decisions", decisions)
    return app


async def name_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER  # not aiohttp's "Python/3.x aiohttp/3.x": no versions to a stranger


async def index(request: web.Request) -> web.Response:
    items = "".join(f'<li><a href="{path}">{path}</a>: {escape(what)}</li>' for path, what in ENDPOINTS)
    return web.Response(text="<!doctype html><html lang=en><meta charset=utf-8><title>corsproxy admin</title>"
                        f"<h1>corsproxy admin</h1><ul>{items}</ul></html>\n", content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[ADMIN_KEY]
    if state.draining:
        return web.Response(status=503, text="draining: shutting down, send no new requests\n")
    cfg = state.config()
    url = URL(cfg.upstream.url)
    problem = await upstream_reachable(url.raw_host or "", url.port or 80,
                                       min(cfg.upstream.connect_timeout, READY_TIMEOUT))
    if problem:
        return web.Response(status=503, text=f"upstream {url.raw_host}:{url.port} {problem}\n")
    return web.Response(text="ready\n")


async def upstream_reachable(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout``, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"did not accept a connection within {timeout:g}s"
    except OSError as exc:
        return f"does not accept connections ({exc.strerror or exc})"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass  # the check has its answer; a reset on close changes nothing
    return None


async def metrics(request: web.Request) -> web.Response:
    state = request.app[ADMIN_KEY]
    if state.before_scrape is not None:
        state.before_scrape()
    body = generate_latest(state.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def config(request: web.Request) -> web.Response:
    state = request.app[ADMIN_KEY]
    data = in_force(state.started, state.config())
    data["upstream"]["url"] = _hide_password(data["upstream"]["url"])
    # TLS cert/key appear as paths (from describe); their contents are never read here.
    return web.json_response(data, dumps=lambda d: json.dumps(d, indent=2))


def in_force(started: Config, current: Config) -> dict[str, Any]:
    """The config as it runs: what a reload changed, but the settings read at start only (``RESTART_ONLY``)
    keep their values in force, and the reloaded values are listed under ``pending_restart``."""
    data, loaded = describe(current), describe(started)
    pending: dict[str, Any] = {}
    for dotted in RESTART_ONLY:
        *parents, key = dotted.split(".")
        now, then = data, loaded
        for part in parents:
            now, then = now[part], then[part]
        if now[key] == then[key]:
            continue
        if isinstance(now[key], dict) and isinstance(then[key], dict):  # name each changed key of a section
            pending.update({f"{dotted}.{k}": v for k, v in now[key].items() if v != then[key].get(k)})
        else:
            pending[dotted] = now[key]
        now[key] = then[key]
    data["pending_restart"] = pending
    return data


def _hide_password(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


async def decisions(request: web.Request) -> web.Response:
    state = request.app[ADMIN_KEY]
    source = await state.decisions()
    running = state.config()
    suggest = _suggester(running) if running is not None else None
    if "application/json" in request.headers.get("Accept", ""):
        data = source.to_json()
        for entry in data.get("entries", []) if suggest is not None else ():
            entry["suggestion"] = suggest(entry)
        return web.json_response(data)
    render = getattr(source, "render_html", None)
    if render is None:
        return web.Response(text=plain_html(source.to_json()), content_type="text/html")
    query = request.query
    refresh = query.get("refresh", "")
    html = render(rule=query.get("rule") or None, verdict=query.get("verdict") or None,
                  refresh=min(int(refresh), 3600) if refresh.isdigit() else DEFAULT_REFRESH, suggest=suggest)
    return web.Response(text=html, content_type="text/html")


def _suggester(config: Config) -> Callable[[dict[str, Any]], str]:
    """Each /decisions entry's change as ``corsproxy suggest`` would make it (design §5)."""
    from . import suggest  # the public suffix list is loaded on first use, not at startup

    def one(entry: dict[str, Any]) -> str:
        [seen] = suggest.from_decisions({"entries": [entry]})
        return suggest.suggestion_for(config, seen)

    return one


def plain_html(data: dict[str, Any]) -> str:
    """A minimal page for a decisions source without its own rendering; every value escaped."""
    entries = data.get("entries", [])
    columns = list(entries[0]) if entries else []
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{escape(str(e[c]))}</td>" for c in columns) + "</tr>" for e in entries)
    return (f"<!doctype html><meta charset=utf-8><title>corsproxy decisions</title>"
            f"<table><tr>{head}</tr>{rows}</table>")
