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


async def move(src_fd: int, dst_fd: int, count: int, pipe: Pipe, timeout: float, sent: list[int],
               first: list[bytes]) -> None:
    """Write the bytes in ``first`` to socket ``dst_fd``, then splice exactly ``count`` bytes to it from
    socket ``src_fd``, waiting at most ``timeout`` seconds at a time for either side.

    ``sent[0]`` counts the bytes delivered as they go. Raises :class:`SourceClosed`,
    :class:`SourceStalled`, :class:`DestinationStalled`, or ``ConnectionResetError`` (or another
    ``OSError``) when the destination went away; ``pipe.held`` may then be non-zero.
    """
    loop = asyncio.get_running_loop()
    src, dst = os.dup(src_fd), os.dup(dst_fd)  # see the module docstring
    try:
        for data in first:
            view = memoryview(data)
            while view:
                n = _nonblocking(os.write, dst, view)
                if n is None:
                    await _ready(loop, dst, writable=True, timeout=timeout)
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
            elif not got:  # nothing moved: wait for the side that holds us up
                await _ready(loop, dst if pipe.held else src, writable=bool(pipe.held), timeout=timeout)
    finally:
        os.close(src)
        os.close(dst)


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
