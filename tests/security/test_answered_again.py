"""Heads the proxy answered itself, seen again (fastpath.Answerer.again): answered from memory only when they are
those very bytes, whole and alone in one chunk, on a connection whose parser holds nothing; every near miss is
parsed as ever.

Each case is a table row: the writes on one connection and the statuses each write gets. It runs "cold" (nothing
remembered) and "taught": after LEARNED was answered on another connection, and twice, so that whatever bytes the
case itself has the proxy answer are remembered by the first run and answered from memory by the second. All
three runs must give the table's answers and send the upstream the same requests, on both request paths.
"""

from __future__ import annotations

import pytest

from .conftest import APP, Conn, StrictUpstream, connect, get, serve_edge

LEARNED = get("/api/x", "Access-Control-Request-Method: PUT", "Access-Control-Request-Headers: content-type",
              method="OPTIONS")
GET = get("/api/x")
CHUNKED = b"POST /api/x HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
SMUG = b"GET /public/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSED = "closed"  # after its last write the proxy closes the connection


def _with(*lines: str) -> bytes:
    """LEARNED with header lines added at its end."""
    return LEARNED[:-2] + "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n"


# (id, [(bytes written, statuses they get)], upstream targets, CLOSED or "")
CASES: list[tuple[str, list[tuple[bytes, tuple[int, ...]]], list[str], str]] = [
    ("the same bytes", [(LEARNED, (204,))], [], ""),
    ("the same bytes, three times", [(LEARNED, (204,)), (LEARNED, (204,)), (LEARNED, (204,))], [], ""),
    ("twice in one write", [(LEARNED + LEARNED, (204, 204))], [], ""),
    ("a GET behind it in the write", [(LEARNED + GET, (204, 200))], ["/api/x"], ""),
    ("a dot-segment request behind it", [(LEARNED + SMUG, (204, 400)), (LEARNED, (204,))], [], ""),
    ("half a head behind it", [(LEARNED + GET[:12], (204,)), (GET[12:], (200,))], ["/api/x"], ""),
    ("split in two writes", [(LEARNED[:20], ()), (LEARNED[20:], (204,))], [], ""),
    ("all but its last byte, then that byte", [(LEARNED[:-1], ()), (LEARNED[-1:], (204,))], [], ""),
    ("after half a head", [(GET[:12], ()), (LEARNED, (400,))], [], CLOSED),
    ("after a head without its blank line", [(GET[:-2], ()), (LEARNED, (400,))], [], CLOSED),
    ("a leading empty line", [(b"\r\n" + LEARNED, (204,))], [], ""),
    ("another origin", [(LEARNED.replace(APP.encode(), b"https://evil.example"), (403,))], [], ""),
    ("one header more", [(_with("X-Trace: 1"), (204,)), (LEARNED, (204,))], [], ""),
    ("Connection: close", [(_with("Connection: close"), (204,))], [], CLOSED),
    ("HTTP/1.0", [(LEARNED.replace(b"HTTP/1.1", b"HTTP/1.0"), (204,))], [], CLOSED),
    ("a sized body that is a request", [(_with(f"Content-Length: {len(SMUG)}") + SMUG, (204,)), (GET, (200,))],
     ["/api/x"], ""),
    ("a chunked body", [(_with("Transfer-Encoding: chunked") + b"0\r\n\r\n", (204,)), (LEARNED, ())], [], CLOSED),
    ("after a chunked request", [(CHUNKED, (200,)), (LEARNED, ())], ["/api/x"], CLOSED),
    ("after a relayed GET", [(GET, (200,)), (LEARNED, (204,))], ["/api/x"], ""),
    ("a second Host", [(_with("Host: evil.example"), (400,))], [], CLOSED),
    ("an upgrade", [(_with("Upgrade: websocket", "Connection: Upgrade"), (204,)), (GET, (200,))], ["/api/x"], ""),
]


Run = tuple[list[tuple[tuple[int, tuple[tuple[str, str], ...]], ...]], list[str], bool]


async def _run(port: int, up: StrictUpstream, steps: list[tuple[bytes, tuple[int, ...]]], closes: bool) -> Run:
    """Per write, the answers it got (status and headers but Date); the upstream's targets; whether the connection
    closed (waiting for that longer when it should)."""
    before = len(up.messages)
    got = []
    async with connect(port) as conn:
        for data, statuses in steps:
            await conn.send(data)
            answers = await conn.responses(len(statuses), idle=1.0) if statuses else []
            more = await conn.quiet()  # bytes after the expected answers: an answer too many
            got.append(tuple((a.status, tuple(h for h in a.headers if h[0] != "Date")) for a in answers)
                       + (((int(more[9:12]), ()),) if more.startswith(b"HTTP/1.") else ()))
        closed = conn.closed or await _closes(conn, 2.0 if closes else 0.1)
    return got, [m.target for m in up.messages[before:]], closed


async def _closes(conn: Conn, within: float) -> bool:
    await conn.responses(1, idle=within)
    return conn.closed


def _statuses(run: Run) -> tuple[list[tuple[int, ...]], list[str], bool]:
    answers, targets, closed = run
    return [tuple(status for status, _ in write) for write in answers], targets, closed


@pytest.mark.parametrize("taught", [False, True], ids=["cold", "taught"])
@pytest.mark.parametrize(("steps", "targets", "closes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_head_is_answered_again_only_when_it_is_those_very_bytes(
        strict_upstream: StrictUpstream, request_path: str, steps: list[tuple[bytes, tuple[int, ...]]],
        targets: list[str], closes: str, taught: bool) -> None:
    expected = ([statuses for _, statuses in steps], targets, closes == CLOSED)
    async with serve_edge(strict_upstream.url, request_path) as edge:
        if taught:
            learned = await _run(edge.port, strict_upstream, [(LEARNED, (204,)), (LEARNED, (204,))], False)
            assert _statuses(learned) == ([(204,), (204,)], [], False)
            assert learned[0][0] == learned[0][1]  # the same headers, answered again
            first = await _run(edge.port, strict_upstream, steps, expected[2])  # teaches the case's own answers
            assert _statuses(first) == expected
        again = await _run(edge.port, strict_upstream, steps, expected[2])
        assert _statuses(again) == expected
        if taught:
            assert again == first
        async with connect(edge.port) as fresh:  # and the proxy goes on serving
            await fresh.send(GET)
            assert [a.status for a in await fresh.responses(1)] == [200]
    assert strict_upstream.errors == []
