"""Checks ``serve`` makes before it starts: are the ports free, does the upstream answer? And the file
descriptor limit it raises (``raise_nofile``).

A port that is taken is named by its key (``listen.port`` or ``admin.port``) with the fix, instead of
the bind error alone; an upstream that refuses connections is one warning line (serving goes on:
requests get ``502`` and ``/readyz`` says ``503`` until it answers). Blocking stdlib sockets, run once
before the event loop starts; every wait is bounded.
"""

from __future__ import annotations

import errno
import resource
import socket

from yarl import URL

from .config import Config

ANY_HOSTS = frozenset({"0.0.0.0", "::", ""})  # bind every address, so any port clash is real
UPSTREAM_PROBE_TIMEOUT = 1.0  # seconds, at most, that start waits for the upstream's TCP handshake


def raise_nofile() -> str:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every connection is a file descriptor; the soft limit is
    often 1024 while the hard one is far higher) and say what it was and is, for the start's log."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return f"file descriptors: RLIMIT_NOFILE soft limit {soft} (hard limit {hard})"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # (macOS refuses RLIM_INFINITY above OPEN_MAX)
        return f"file descriptors: RLIMIT_NOFILE soft limit {soft} kept, hard limit {hard}: cannot raise it ({exc})"
    return f"file descriptors: RLIMIT_NOFILE soft limit raised from {soft} to the hard limit {hard}"


def port_problems(config: Config) -> list[str]:
    """Why the proxy or the admin listener could not bind, each with its fix; empty when both can."""
    listeners = [("listen", config.listen.host, config.listen.port,
                  "pass --port P or set listen.port to a free port")]
    if config.admin is not None:
        listeners.append(("admin", config.admin.host, config.admin.port,
                          "set admin.port to a free port, or admin: null to run without the admin listener"))
    admin = config.admin
    if admin is not None and admin.port == config.listen.port != 0 and (
            admin.host == config.listen.host or {admin.host, config.listen.host} & ANY_HOSTS):
        # The file is checked for this (config.py); a --port flag can still make the two meet.
        return [f"listen.port and admin.port are both {admin.port}; pass another --port, or give admin.port "
                "another port (default 9901), or admin: null"]
    problems = []
    for key, host, port, fix in listeners:
        why = _bind_problem(host, port)
        if why is None:
            continue
        if why == errno.EADDRINUSE:
            problems.append(f"{key}.port {port} on {host} is in use by another process; {fix}")
        elif why == errno.EACCES:
            problems.append(f"{key}.port {port} needs privileges to bind (ports below 1024); use a port above 1023")
        elif why == errno.EADDRNOTAVAIL or why == -1:
            problems.append(f"{key}.host {host!r} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one "
                            "of its addresses")
        else:
            problems.append(f"{key} {host}:{port} cannot be bound ({errno.errorcode.get(why, why)})")
    return problems


def _bind_problem(host: str, port: int) -> int | None:
    """The errno binding ``host:port`` fails with (-1: the host does not resolve), or None."""
    if port == 0:
        return None  # any free port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return -1
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no clash
            try:
                sock.bind(address)
            except OSError as exc:
                return exc.errno
    return None


def upstream_problem(config: Config) -> str | None:
    """Why the upstream does not accept a TCP connection now (a plain connect, no request); None if it does."""
    url = URL(config.upstream.url)
    host, port = url.raw_host or "", url.port or 80
    timeout = min(config.upstream.connect_timeout, UPSTREAM_PROBE_TIMEOUT)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror:
        return f"upstream host {host!r} does not resolve"
    except TimeoutError:
        return f"upstream {host}:{port} did not accept a connection within {timeout:g}s"
    except OSError as exc:
        return f"upstream {host}:{port} does not accept connections ({exc.strerror or exc})"
    return None
