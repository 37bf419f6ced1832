"""The proxy's listening sockets, and accepting on them (``ListenSite``, an aiohttp site).

The event loop's own server is not used for the proxy listener because uvloop's (libuv's) stops keeping up
with new connections while the ones it has keep the loop busy: with a thousand clients connecting at once to a
saturated process, half of them waited seconds to be accepted (their first request's latency: wrk's p99 of
3 s and its timeouts, bench/README.md "Accepting under load"), while asyncio's server, which accepts up to its
backlog each time the socket is readable, took them all within 40 ms. So this module binds the sockets and
accepts itself, the same way on both loops: up to ACCEPT_BATCH connections a wakeup, each handed to the loop's
``connect_accepted_socket`` with the runner's protocol factory.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from aiohttp import web
from yarl import URL

from .guard import Descriptors

log = logging.getLogger("corsproxy")

ACCEPT_BATCH = 128  # connections accepted per wakeup of the listening socket, so a burst cannot hold the loop
ACCEPT_PAUSE = 1.0  # seconds without accepting once accept() finds no descriptor (asyncio's selector loop: 1 s)
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# This connection only, not the listener: the client left while in the backlog, or a firewall rule refused it.
SKIP_ONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)


def bind(host: str, port: int, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (as ``loop.create_server`` binds them)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = dict.fromkeys((family, sockaddr[:2]) for family, _, _, _, sockaddr in infos)
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            socks.append(socket.create_server(address, family=family, backlog=backlog, reuse_port=reuse_port))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    for sock in socks:
        sock.setblocking(False)
    return socks


class Acceptor(asyncio.AbstractServer):
    """Accepts connections on ``socks`` and gives each to ``factory``'s protocol, until :meth:`close`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                 factory: Callable[[], asyncio.BaseProtocol], *, ssl_context: ssl.SSLContext | None,
                 descriptors: Descriptors | None) -> None:
        self._loop = loop
        self._socks = socks
        self._factory = factory
        self._ssl = ssl_context
        self._descriptors = descriptors
        self._connecting = set[asyncio.Task[None]]()  # (referenced, so that the loop does not drop them)
        self._serving = True
        for sock in socks:
            loop.add_reader(sock.fileno(), self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._socks)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in SKIP_ONE:
                    continue
                # Paused, not retried at once (a busy loop); the waiting clients stay in the backlog meanwhile,
                # and the open connections keep being served.
                if exc.errno in OUT_OF_DESCRIPTORS and self._descriptors is not None:
                    self._descriptors.accept_failed(exc)
                else:
                    log.error("accept() failed: %s; trying again in %gs", exc, ACCEPT_PAUSE)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_PAUSE, self._resume, sock)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (TimeoutError, OSError, ssl.SSLError) as exc:  # gone, or a failed TLS handshake
            log.debug("a connection closed while it was set up: %s", exc)
            conn.close()

    def _resume(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def wait_closed(self) -> None:
        return None

    async def start_serving(self) -> None:
        return None  # (serving from the start, as create_server's default)

    async def serve_forever(self) -> None:
        raise NotImplementedError("the aiohttp runner owns this server's lifetime")


class ListenSite(web.BaseSite):
    """aiohttp's ``TCPSite``, listening through an :class:`Acceptor` instead of the loop's server."""

    __slots__ = ("_host", "_port", "_reuse_port", "_descriptors")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 backlog: int = 128, reuse_port: bool = False, descriptors: Descriptors | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._descriptors = descriptors

    @property
    def port(self) -> int:
        """The port listened on (once started, the one the kernel chose for 0)."""
        return self._port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="https" if self._ssl_context else "http", host=self._host or "0.0.0.0",
                             port=self.port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        socks = bind(self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port)
        self._port = socks[0].getsockname()[1]
        self._server = Acceptor(asyncio.get_running_loop(), socks, server, ssl_context=self._ssl_context,
                                descriptors=self._descriptors)
