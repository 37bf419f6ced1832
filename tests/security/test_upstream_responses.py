"""The misbehaving-upstream corpus: responses an upstream (broken, or taken over) sends to split, extend or
poison what the proxy's clients receive.

For each shape, on both request paths: the client receives exactly its one response (or a 502/504 when the
upstream's answer is unusable before its head was relayed, or a cut connection after), never a byte of
anything else (every hostile byte below carries the marker ``INJECTED``); and the next request, on the
same client connection and on a new one, gets the upstream's normal answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .conftest import CLOSE, Conn, Script, ScriptedUpstream, connect, get, serve_edge

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
SPLIT = (b"HTTP/1.1 302 Found\r\nLocation: http://INJECTED.example/\r\nSet-Cookie: INJECTED=1\r\n"
         b"Content-Length: 0\r\n\r\n")


def head(*lines: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@dataclass(frozen=True)
class Relayed:
    """The client gets exactly this response."""

    status: int
    body: bytes = b""


BAD_GATEWAY = "502"  # the proxy answers 502 itself
GATEWAY_TIMEOUT = "504"
CUT = "cut"  # the response began, then the client connection was cut before it was complete
BAD_GATEWAY_OR_CUT = "502 or cut"  # the fault came with the head: either is honest
Expected = Relayed | str

# (id, request method, what the upstream writes, what the client must get)
SHAPES: list[tuple[str, str, Script, Expected]] = [
    ("a plain response", "GET", [OK], Relayed(200, b"ok")),
    ("garbage after the response", "GET", [OK + b"INJECTED garbage\r\n\r\n"], Relayed(200, b"ok")),
    ("two responses in one write", "GET", [OK + SECOND], Relayed(200, b"ok")),
    ("a split response with injected Location and Set-Cookie", "GET", [OK + SPLIT], Relayed(200, b"ok")),
    ("a second response in a later write", "GET", [OK, 0.05, SECOND], Relayed(200, b"ok")),
    ("bytes past Content-Length", "GET", [head(b"Content-Length: 2") + b"okINJECTED"], Relayed(200, b"ok")),
    ("a second response after a chunked one", "GET",
     [head(b"Transfer-Encoding: chunked") + b"2\r\nok\r\n0\r\n\r\n" + SECOND], Relayed(200, b"ok")),
    ("a chunked trailer carrying Set-Cookie", "GET",
     [head(b"Transfer-Encoding: chunked") + b"2\r\nok\r\n0\r\nSet-Cookie: INJECTED=1\r\n\r\n"], Relayed(200, b"ok")),
    ("two different Content-Lengths", "GET", [head(b"Content-Length: 2", b"Content-Length: 10") + b"okINJECTED"],
     BAD_GATEWAY),
    ("two equal Content-Lengths", "GET", [head(b"Content-Length: 2", b"Content-Length: 2") + b"ok"], BAD_GATEWAY),
    ("a Content-Length list", "GET", [head(b"Content-Length: 2, 2") + b"ok"], BAD_GATEWAY),
    ("Content-Length with Transfer-Encoding", "GET",
     [head(b"Content-Length: 10", b"Transfer-Encoding: chunked") + b"2\r\nok\r\n0\r\n\r\nINJECTED"], BAD_GATEWAY),
    ("Transfer-Encoding with Content-Length", "GET",
     [head(b"Transfer-Encoding: chunked", b"Content-Length: 3") + b"2\r\nok\r\n0\r\n\r\nINJECTED"], BAD_GATEWAY),
    ("a negative Content-Length", "GET", [head(b"Content-Length: -2") + b"INJECTED"], BAD_GATEWAY),
    ("a signed Content-Length", "GET", [head(b"Content-Length: +2") + b"ok"], BAD_GATEWAY),
    ("space before the colon", "GET", [head(b"Content-Length : 2") + b"ok"], BAD_GATEWAY),
    ("a bare CR in a header", "GET", [head(b"X-A: a\rSet-Cookie: INJECTED=1", b"Content-Length: 2") + b"ok"],
     BAD_GATEWAY),
    ("a bare LF in a header", "GET", [head(b"X-A: a\nSet-Cookie: INJECTED=1", b"Content-Length: 2") + b"ok"],
     BAD_GATEWAY),
    ("an obs-fold header", "GET", [head(b"X-A: a", b" Set-Cookie: INJECTED=1", b"Content-Length: 2") + b"ok"],
     BAD_GATEWAY),
    ("a NUL in a header", "GET", [head(b"X-A: a\x00INJECTED", b"Content-Length: 2") + b"ok"], BAD_GATEWAY),
    ("a bare CR in the reason", "GET", [head(b"Content-Length: 2", status=b"200 O\rINJECTED") + b"ok"],
     BAD_GATEWAY),
    ("a four-digit status", "GET", [head(b"Content-Length: 2", status=b"2000 OK") + b"ok"], BAD_GATEWAY),
    ("not HTTP at all", "GET", [b"INJECTED\r\n\r\n"], BAD_GATEWAY),
    ("a head over 64 KiB", "GET", [head(*[b"X-Big-%d: %s" % (i, b"a" * 8000) for i in range(9)],
                                         b"Content-Length: 2") + b"ok"], BAD_GATEWAY),
    ("a bad chunk size with the head", "GET", [head(b"Transfer-Encoding: chunked") + b"zz\r\nINJECTED\r\n"],
     BAD_GATEWAY_OR_CUT),
    ("a chunk size overflow with the head", "GET",
     [head(b"Transfer-Encoding: chunked") + b"ffffffffffffffffffff\r\nINJECTED\r\n"], BAD_GATEWAY_OR_CUT),
    ("a bad chunk size after the head", "GET",
     [head(b"Transfer-Encoding: chunked") + b"2\r\nok\r\n", 0.05, b"zz\r\nINJECTED\r\n"], CUT),
    ("a body on a HEAD response", "HEAD", [head(b"Content-Length: 8") + b"INJECTED"], Relayed(200)),
    ("a chunked body on a HEAD response", "HEAD",
     [head(b"Transfer-Encoding: chunked") + b"8\r\nINJECTED\r\n0\r\n\r\n"], Relayed(200)),
    ("a body on a 204", "GET", [head(status=b"204 No Content") + b"INJECTED"], Relayed(204)),
    ("a Content-Length body on a 204", "GET", [head(b"Content-Length: 8", status=b"204 No Content") + b"INJECTED"],
     Relayed(204)),
    ("a body on a 304", "GET", [head(b"Content-Length: 8", status=b"304 Not Modified") + b"INJECTED"],
     Relayed(304)),
    ("100 Continue, then the response", "GET", [head(status=b"100 Continue") + OK], Relayed(200, b"ok")),
    ("two 100 Continue, then the response", "GET", [head(status=b"100 Continue") * 2, 0.02, OK],
     Relayed(200, b"ok")),
    ("103 Early Hints whose headers must not stick", "GET",
     [head(b"Link: <http://INJECTED.example/>; rel=preload", status=b"103 Early Hints") + OK], Relayed(200, b"ok")),
    ("101 Switching Protocols to a plain request", "GET",
     [head(b"Upgrade: INJECTED", b"Connection: Upgrade", status=b"101 Switching Protocols") + b"INJECTED"],
     BAD_GATEWAY),
    ("a body that never ends", "GET", [head(b"Content-Length: 10") + b"ok", 3.0], CUT),
    ("a head that never ends", "GET", [b"HTTP/1.1 200 OK\r\nX-A: ", 3.0], GATEWAY_TIMEOUT),
    ("silence", "GET", [3.0], GATEWAY_TIMEOUT),
    ("a close before any byte", "GET", [CLOSE], BAD_GATEWAY),
    ("a close inside the head", "GET", [b"HTTP/1.1 200 OK\r\nContent-", CLOSE], BAD_GATEWAY),
    ("a close inside the body", "GET", [head(b"Content-Length: 10") + b"ok", 0.05, CLOSE], CUT),
    ("a body until close", "GET", [head(b"Connection: close") + b"until close", CLOSE], Relayed(200, b"until close")),
    ("an HTTP/1.0 body until close", "GET", [b"HTTP/1.0 200 OK\r\n\r\nuntil close", CLOSE],
     Relayed(200, b"until close")),
]


def test_the_corpus_has_at_least_25_shapes() -> None:
    ids = [shape_id for shape_id, _, _, _ in SHAPES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize(("method", "script", "expected"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
async def test_client_gets_its_one_response_and_nothing_else(
        scripted_upstream: ScriptedUpstream, request_path: str, method: str, script: Script,
        expected: Expected) -> None:
    scripted_upstream.script = script
    async with serve_edge(scripted_upstream.url, request_path) as edge:
        async with connect(edge.port) as conn:
            await conn.send(get("/api/script", method=method), head_only=method == "HEAD")
            answers = await conn.responses(1, idle=4.0)
            _assert_got(conn, answers, expected)
            await conn.quiet(0.2)  # (a later write of the upstream's would arrive by now)
            assert b"INJECTED" not in conn.received
            if not conn.closed:
                await _assert_normal(conn)
        async with connect(edge.port) as fresh:
            await _assert_normal(fresh)


def _assert_got(conn: Conn, answers: list, expected: Expected) -> None:
    statuses = [a.status for a in answers if a.complete]
    if isinstance(expected, Relayed):
        assert [(a.status, a.body) for a in answers] == [(expected.status, expected.body)]
        assert all(b"INJECTED" not in (name + value).encode() for name, value in answers[0].headers)
    elif expected == CUT:
        assert statuses == [] and conn.closed, (answers, conn.received[:300])
    elif expected == BAD_GATEWAY_OR_CUT:
        assert statuses == [502] or (statuses == [] and conn.closed), (answers, conn.received[:300])
    else:
        assert statuses == [int(expected)], (answers, conn.received[:300])


async def _assert_normal(conn: Conn) -> None:
    await conn.send(get("/api/normal"))
    answers = await conn.responses(1)
    assert [(a.status, a.body) for a in answers] == [(200, b"normal")]
