"""Two clients, one pooled upstream connection: an attacker's request must never become part of, or answer,
another client's.

The attack (issue 13, defect 1): a body the upstream reads as the start of a second request, left open so
that the next client's request, with its ``Cookie``, is appended to it; the next client then gets the
attacker's answer. The proxy frames every request itself, so the body stays a body.
"""

from __future__ import annotations

import pytest

from .conftest import APP, StrictUpstream, connect, get, serve_edge

# A request left open at its last header: whatever is sent next on the connection becomes its header value.
ABSORB = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\nX-Absorb: "
ATTACKS = {
    "Connection: Content-Length": b"Connection: Content-Length",
    "Connection: close, Content-Length": b"Connection: close, Content-Length",
    "mixed case, two Connection headers": b"Connection: keep-alive\r\nconnection: CONTENT-length",
    "Connection: Transfer-Encoding (chunked body)": b"Connection: Transfer-Encoding",
}


def _attack(connection: bytes) -> bytes:
    if b"Transfer-Encoding" in connection:
        framing, body = b"Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(ABSORB), ABSORB)
    else:
        framing, body = b"Content-Length: %d" % len(ABSORB), ABSORB
    return (b"POST /api/x HTTP/1.1\r\nHost: proxy\r\nOrigin: " + APP.encode() + b"\r\n" + connection + b"\r\n"
            + framing + b"\r\n\r\n" + body)


@pytest.mark.parametrize("connection", list(ATTACKS.values()), ids=list(ATTACKS))
async def test_a_smuggling_body_never_captures_the_next_clients_request(
        strict_upstream: StrictUpstream, request_path: str, connection: bytes) -> None:
    async with serve_edge(strict_upstream.url, request_path, "  max_connections: 1\n") as edge:
        async with connect(edge.port) as attacker, connect(edge.port) as victim:
            await attacker.send(_attack(connection))
            refused = await attacker.responses(1)
            await victim.send(get("/api/victim", "Cookie: session=victim-secret"))
            answer = await victim.responses(1)
        assert [r.status for r in refused] == [400]
        assert [(r.status, r.json()["target"]) for r in answer] == [(200, "/api/victim")]
    assert [m.target for m in strict_upstream.messages] == ["/api/victim"]
    raw = b"".join(strict_upstream.raw.values())
    assert b"/api/smuggled" not in raw and raw.count(b"victim-secret") == 1
    assert strict_upstream.messages[0].header("Cookie") == ["session=victim-secret"]
    assert strict_upstream.errors == []


async def test_a_body_that_is_a_request_stays_a_body_on_the_shared_connection(
        strict_upstream: StrictUpstream, request_path: str) -> None:
    """The same body without the Connection trick is forwarded, as a body, framed by its length."""
    async with serve_edge(strict_upstream.url, request_path, "  max_connections: 1\n") as edge:
        async with connect(edge.port) as attacker, connect(edge.port) as victim:
            await attacker.send(_attack(b"X-Nothing: 1"))
            first = await attacker.responses(1)
            await victim.send(get("/api/victim", "Cookie: session=victim-secret"))
            answer = await victim.responses(1)
    assert [(r.status, r.json()) for r in first] == [(200, {"target": "/api/x", "body_len": len(ABSORB)})]
    assert [(r.status, r.json()["target"]) for r in answer] == [(200, "/api/victim")]
    assert [(m.target, m.body) for m in strict_upstream.messages] == [("/api/x", ABSORB), ("/api/victim", b"")]
    assert len(strict_upstream.raw) == 1  # one pooled connection carried both
