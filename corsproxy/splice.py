"""Move bytes from one socket to another without them entering the process (Linux ``splice(2)``).

Relayed through the event loop, a large response body is copied from the kernel into a read
buffer, from there into ``bytes`` by the parser, and back into the kernel on send. ``splice``
through a pipe moves the socket's pages instead. For a 1 MiB GET that took the proxy's CPU per
request from 360 to 217 µs (bench/README.md).

The sockets stay owned by their asyncio transports; :func:`move` works on duplicates of their
descriptors (event loops refuse to watch a descriptor a transport owns, and a transport closing
its own must not leave us writing to a reused number). The transports must be idle meanwhile:
the source's reading paused, nothing waiting in the destination's write buffer.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any

PIPE_SIZE = 2**18  # 64 pages: 256 such pipes fit in the kernel's default per-user soft limit (64 MiB)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def works() -> bool:
    """Whether this system can splice from a socket: Linux, and no sandbox (seccomp, gVisor) refusing it."""
    if not (hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")):
        return False
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    a, b = socket.socketpair()
    try:
        a.send(b"x")
        return os.splice(b.fileno(), write_end, 1, flags=_FLAGS) == 1
    except OSError:
        return False
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        a.close()
        b.close()


AVAILABLE = works()  # else every body is relayed through the process


class SourceClosed(Exception):
    """The source ended, or broke, before all the bytes came."""


class SourceStalled(Exception):
    """The source sent nothing for ``timeout`` seconds."""


class DestinationStalled(Exception):
    """The destination took nothing for ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the client took no byte for {timeout:g}s")


class Pipe:
    """A kernel pipe to splice through, reusable while empty."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.size = PIPE_SIZE
        try:
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over the user's pipe budget: the default (16 pages) still works
            self.size = fcntl.fcntl(self.write_end, fcntl.F_GETPIPE_SZ)
        self.held = 0  # bytes in it

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


TICK = 1.0  # seconds between looks at the destination's rate while waiting on it
PATIENCE = 0.25  # seconds the destination may take nothing before a body that fits ``budget`` stops splicing


class DestinationTooSlow(DestinationStalled):
    """The destination took fewer than ``min_rate`` bytes a second over ``grace`` seconds of waiting on it."""

    def __init__(self, taken: int, waited: float, min_rate: float) -> None:
        Exception.__init__(self, f"the client took {taken} bytes in {waited:.0f}s, under limits.min_data_rate "
                                 f"({min_rate:g} bytes/s)")


async def move(src_fd: int, dst_fd: int, count: int, pipe: Pipe, timeout: float, sent: list[int],
               first: list[bytes], *, budget: int = 0, min_rate: float | None = None,
               grace: float = 5.0) -> tuple[list[bytes], int] | None:
    """Write the bytes in ``first`` to socket ``dst_fd``, then splice exactly ``count`` bytes to it from
    socket ``src_fd``, waiting at most ``timeout`` seconds at a time for either side.

    ``sent[0]`` counts the bytes delivered as they go. Returns None when all went. When the destination took
    nothing for PATIENCE seconds and what is left fits ``budget`` bytes, stops instead and returns the bytes
    already taken from the source (``first``'s rest, the pipe's content: the caller sends them first) and how
    many are still on the source socket. Over each ``grace`` seconds spent waiting on the destination, it must
    take ``min_rate`` bytes a second, else :class:`DestinationTooSlow`.
    Raises :class:`SourceClosed`, :class:`SourceStalled`, :class:`DestinationStalled`, or
    ``ConnectionResetError`` (or another ``OSError``) when the destination went away; ``pipe.held`` may then
    be non-zero.
    """
    loop = asyncio.get_running_loop()
    src, dst = os.dup(src_fd), os.dup(dst_fd)  # see the module docstring
    clock = _Clock(loop, sent, min_rate, grace)
    try:
        for i, data in enumerate(first):
            view = memoryview(data)
            while view:
                n = _nonblocking(os.write, dst, view)
                if n is None:
                    if not await clock.wait(dst, timeout, budget >= len(view) + count):
                        return [bytes(view), *first[i + 1:]], count
                    continue
                view = view[n:]
                sent[0] += n
        while count:
            room = min(count, pipe.size) - pipe.held  # never more than this body from the source
            try:
                got = _nonblocking(os.splice, src, pipe.write_end, room, flags=_FLAGS) if room > 0 else None
            except OSError as exc:  # a reset from the source is not the destination going away
                raise SourceClosed(f"reading the body failed: {exc.strerror}") from None
            if got == 0:
                raise SourceClosed(f"the body ended {count - pipe.held} bytes short")
            pipe.held += got or 0
            out = _nonblocking(os.splice, pipe.read_end, dst, pipe.held, flags=_FLAGS) if pipe.held else None
            if out:
                pipe.held -= out
                count -= out
                sent[0] += out
            elif not got and pipe.held:  # the destination holds us up
                if not await clock.wait(dst, timeout, budget >= count):
                    on_socket = count - pipe.held
                    return [_empty(pipe)], on_socket
            elif not got:
                await _ready(loop, src, writable=False, timeout=timeout)
    finally:
        os.close(src)
        os.close(dst)
    return None


class _Clock:
    """Time spent waiting on the destination, against what it took (``sent``) since the first wait."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sent: list[int], min_rate: float | None,
                 grace: float) -> None:
        self.loop, self.sent, self.min_rate, self.grace = loop, sent, min_rate, grace
        self.waited = 0.0  # seconds waited on the destination in all
        self.window = 0.0  # ``waited`` when the current window began
        self.mark: int | None = None  # sent[0] then

    async def wait(self, dst: int, timeout: float, may_stop: bool) -> bool:
        """Wait until ``dst`` is writable (True); False when it is not within PATIENCE and ``may_stop``.

        Raises DestinationStalled after ``timeout`` seconds, DestinationTooSlow as the class says."""
        if self.mark is None:
            self.mark = self.sent[0]
        began = self.loop.time()
        while True:
            start = self.loop.time()
            left = timeout - (start - began)
            try:
                await _ready(self.loop, dst, writable=True, timeout=min(PATIENCE if may_stop else TICK, left))
                ready = True
            except DestinationStalled:
                ready = False
            now = self.loop.time()
            self.waited += now - start
            self._check()
            if ready:
                return True
            if may_stop:
                return False
            if now - began >= timeout:
                raise DestinationStalled(timeout)


    def _check(self) -> None:
        """Over each ``grace`` seconds of waiting, the destination must take ``min_rate`` bytes a second."""
        span, taken = self.waited - self.window, self.sent[0] - (self.mark or 0)
        if self.min_rate is None or span < self.grace:
            return
        if taken < self.min_rate * span:
            raise DestinationTooSlow(taken, span, self.min_rate)
        self.window, self.mark = self.waited, self.sent[0]


def _empty(pipe: Pipe) -> bytes:
    """Read what the pipe holds back into the process."""
    parts = []
    while pipe.held:
        data = os.read(pipe.read_end, pipe.held)
        pipe.held -= len(data)
        parts.append(data)
    return b"".join(parts)


def _nonblocking(call: Callable[..., int], *args: Any, **kwargs: Any) -> int | None:
    """``call``'s byte count; None when it would block."""
    try:
        return call(*args, **kwargs)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            raise ConnectionResetError(exc.errno, exc.strerror) from None
        raise


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, writable: bool, timeout: float) -> None:
    """Wait until ``fd`` can be written (read); raises a *Stalled error after ``timeout`` seconds."""
    waiter: asyncio.Future[bool] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    add(fd, _wake, waiter, True)
    timer = loop.call_later(timeout, _wake, waiter, False)
    try:
        ready = await waiter
    finally:
        remove(fd)  # before the duplicate closes: epoll would go on watching the socket
        timer.cancel()
    if not ready:
        raise DestinationStalled(timeout) if writable else SourceStalled()


def _wake(waiter: asyncio.Future[bool], ready: bool) -> None:
    if not waiter.done():
        waiter.set_result(ready)
