"""Bad input at the socket: raw bytes against the proxy served as server.py serves it.

Every case gets a clear 4xx (or a closed connection where HTTP allows nothing else), is
logged, forwards nothing ambiguous (the recorder upstream shows what arrived), and the
server serves a normal client right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import (
    ALLOWED,
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    Recorder,
    Served,
    assert_still_serving,
    header_names,
    open_fds,
    raw_exchange,
    serve_proxy,
    serve_subprocess,
    settle_fds,
    status_of,
)

H = b"Host: proxy\r\n"
POST = b"POST /api/x HTTP/1.1\r\n" + H
SMUGGLED = b"GET /api/smuggled HTTP/1.1\r\nHost: proxy\r\n\r\n"

# (id, bytes): each must be refused with 400 (431 allowed for size) and reach the upstream not at all.
REFUSED = [
    ("garbage request line", b"GARBAGE\r\n\r\n"),
    ("unknown HTTP version", b"GET /api/x HTTP/9.9\r\n" + H + b"\r\n"),
    ("HTTP/0.9, no version", b"GET /api/x\r\n\r\n"),
    ("control char in target", b"GET /api/\x01x HTTP/1.1\r\n" + H + b"\r\n"),
    ("request line of 10 KB", b"GET /api/" + b"a" * 10_000 + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("one header of 20 KB", b"GET /api/x HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n"),
    ("3000 headers", b"GET /api/x HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(3000)) + b"\r\n"),
    ("Origin folded over CRLF", b"GET /api/x HTTP/1.1\r\n" + H + b"Origin: " + ALLOWED.encode() + b"\r\n evil\r\n\r\n"),
    ("Origin with a bare CR", b"GET /api/x HTTP/1.1\r\n" + H + b"Origin: " + ALLOWED.encode() + b"\revil\r\n\r\n"),
    ("Origin with NUL", b"GET /api/x HTTP/1.1\r\n" + H + b"Origin: https://a\x00.example.com\r\n\r\n"),
    ("space before colon", b"GET /api/x HTTP/1.1\r\n" + H + b"Origin : " + ALLOWED.encode() + b"\r\n\r\n"),
    ("bad chunk size", b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("chunk longer than declared",
     b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n"),
    ("Content-Length with Transfer-Encoding",
     b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("Transfer-Encoding with Content-Length",
     b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("two different Content-Lengths", POST + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
    ("two equal Content-Lengths", POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("Content-Length list", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc"),
    ("negative Content-Length", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n"),
    ("signed Content-Length", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc"),
    ("chunked, identity", b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("unknown Transfer-Encoding", POST + b"Transfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("Transfer-Encoding in HTTP/1.0",
     b"POST /api/x HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + SMUGGLED),
]


@pytest.mark.parametrize("data", [d for _, d in REFUSED], ids=[i for i, _ in REFUSED])
async def test_malformed_request_is_refused_logged_never_forwarded_and_server_keeps_serving(
        served: Served, recorder: Recorder, caplog: pytest.LogCaptureFixture, data: bytes) -> None:
    caplog.set_level(logging.INFO)
    response = await raw_exchange(served.port, data)
    assert status_of(response) in (400, 431), response[:200]
    assert response.closed  # one answer, then the connection is closed: no second request is read from it
    assert recorder.seen == []  # nothing reached the upstream, smuggled or not
    assert any(r.levelno == logging.WARNING and "refused a malformed request" in r.getMessage() for r in caplog.records)
    await assert_still_serving(served.url)


BIG_HEAD = b"GET /api/x HTTP/1.1\r\n" + H + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
BIG_HEAD += b"\r\n"


@pytest.mark.parametrize("piece", [len(BIG_HEAD), 4096], ids=["in one write", "in 4 KiB writes"])
async def test_request_head_over_64_kib_in_all_gets_431_and_is_never_forwarded(
        served: Served, recorder: Recorder, caplog: pytest.LogCaptureFixture, piece: int) -> None:
    # 100 headers of 1 KB: each under aiohttp's per-line limit, the count under its 128, the sum ~100 KB.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    answer = asyncio.ensure_future(reader.read())
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(BIG_HEAD), piece):
            writer.write(BIG_HEAD[i:i + piece])
            await writer.drain()
            await asyncio.sleep(0.01)
    response = await asyncio.wait_for(answer, 5)
    writer.close()
    assert status_of(response) == 431, response[:100]
    assert recorder.seen == []
    assert "request head over 65536 bytes" in caplog.text
    await assert_still_serving(served.url)


@pytest.mark.parametrize("first", [b"GET /slow?s=0.3 HTTP/1.1\r\n" + H + b"\r\n",
                                   b"POST /slow?s=0.3 HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nhi"],
                         ids=["behind-a-get", "behind-a-post"])
async def test_request_head_over_64_kib_that_began_behind_a_request_in_progress_gets_431(
        served: Served, recorder: Recorder, first: bytes) -> None:
    # Half of the big head arrives with the first request, while that one is relayed; the rest later.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    half = len(BIG_HEAD) // 2
    writer.write(first + BIG_HEAD[:half])
    await writer.drain()
    await asyncio.sleep(0.05)
    with contextlib.suppress(ConnectionError):
        writer.write(BIG_HEAD[half:])
        await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(response) == 200 and b" 431 Request Header Fields Too Large\r\n" in response
    assert [s.path for s in recorder.seen] == ["/slow?s=0.3"]


async def test_request_head_of_48_kib_in_all_is_forwarded(served: Served, recorder: Recorder) -> None:
    head = b"GET /api/x HTTP/1.1\r\n" + H + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 1200) for i in range(40))
    response = await raw_exchange(served.port, head + b"Connection: close\r\n\r\n")
    assert status_of(response) == 200
    assert len(recorder.seen) == 1 and recorder.seen[0].headers["X-Fill-39"] == "v" * 1200


async def test_content_length_shorter_than_body_forwards_exactly_the_declared_bytes_and_no_smuggled_request(
        served: Served, recorder: Recorder) -> None:
    head = b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(head + b"abc")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"}"), 5)  # the JSON body of the first answer
    writer.write(b"defGET /api/smuggled HTTP/1.1\r\n" + H + b"\r\n")  # the lie's leftover: a bad request line
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(first) == 200 and status_of(rest) == 400
    assert [(s.method, s.path, s.body) for s in recorder.seen] == [("POST", "/api/x", b"abc")]
    await assert_still_serving(served.url)


async def test_content_length_longer_than_body_times_out_with_408_and_never_completes_upstream(
        served: Served, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    response = await raw_exchange(served.port, b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nabc",
                                  wait=BODY_TIMEOUT + 4)
    assert status_of(response) == 408, response
    assert BODY_TIMEOUT <= time.monotonic() - started < BODY_TIMEOUT + 3
    await asyncio.sleep(0.2)
    assert all(s.body is None for s in recorder.seen)  # the upstream never got a whole body
    assert "request body stalled" in caplog.text
    await assert_still_serving(served.url)


ODD_ORIGINS = [
    ("non-ASCII", "Origin: https://äpp.example.com".encode()),
    ("10 KB long", b"Origin: https://" + b"a" * 10_000 + b".evil.com"),
    ("two Origin headers", b"Origin: " + ALLOWED.encode() + b"\r\nOrigin: https://evil.com"),
    ("two values in one", b"Origin: " + ALLOWED.encode() + b", https://evil.com"),
    ("allowed origin with a path", b"Origin: " + ALLOWED.encode() + b"/"),
    ("userinfo trick", b"Origin: https://app.example.com@evil.com"),
]


@pytest.mark.parametrize("origin", [o for _, o in ODD_ORIGINS], ids=[i for i, _ in ODD_ORIGINS])
async def test_odd_origin_is_never_echoed_and_preflight_with_it_is_denied(
        served: Served, recorder: Recorder, origin: bytes) -> None:
    actual = await raw_exchange(served.port, b"GET /api/x HTTP/1.1\r\n" + H + origin + b"\r\nConnection: close\r\n\r\n")
    assert status_of(actual) == 200
    # The upstream reflects any Origin with credentials; none of it may reach the client.
    assert not [n for n in header_names(actual) if n.startswith("access-control-")], actual
    assert b"\r\nVary: Origin" in actual
    preflight = await raw_exchange(served.port, b"OPTIONS /api/x HTTP/1.1\r\n" + H + origin +
                                   b"\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n")
    assert status_of(preflight) == 403
    assert not [n for n in header_names(preflight) if n.startswith("access-control-")], preflight
    assert [s.method for s in recorder.seen] == ["GET"]  # the preflight never went upstream
    assert [e.decision.verdict for e in served.exchanges] == ["denied:origin", "denied:origin"]
    await assert_still_serving(served.url)


# ------------------------------------------------------------------ slow clients


async def test_request_head_trickled_past_the_header_timeout_gets_408_and_is_logged(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    started = time.monotonic()
    answer = asyncio.ensure_future(reader.read())
    writer.write(b"GET /api/x HTTP/1.1\r\nX-Slow: ")
    for _ in range(int((HEADER_TIMEOUT + 2) / 0.2)):  # a byte every 0.2 s: never idle, never done
        if answer.done():
            break
        with contextlib.suppress(ConnectionError):
            writer.write(b"X")
        await asyncio.sleep(0.2)
    response = await asyncio.wait_for(answer, 3)
    writer.close()
    assert status_of(response) == 408
    assert HEADER_TIMEOUT <= time.monotonic() - started < HEADER_TIMEOUT + 3
    assert "request head not complete" in caplog.text
    await assert_still_serving(served.url)


async def test_the_header_timeout_comes_from_the_config_and_a_reload_changes_it_for_new_connections(
        recorder: Recorder) -> None:
    served, runner = await serve_proxy(recorder.url, "limits:\n  header_timeout: 0.4\n", header_timeout=None)
    try:
        async def silent() -> float:
            started = time.monotonic()
            reply = await raw_exchange(served.port, b"", wait=5)
            assert status_of(reply) == 408 and reply.closed
            return time.monotonic() - started

        assert 0.3 < await silent() < 1.5
        runner.set_timeouts(1.6, 30)  # as Server._apply does with a reloaded config's limits
        assert 1.5 < await silent() < 4
    finally:
        await runner.cleanup()


async def test_silent_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    started = time.monotonic()
    response = await raw_exchange(served.port, b"", wait=HEADER_TIMEOUT + 3)
    assert status_of(response) == 408
    assert time.monotonic() - started < HEADER_TIMEOUT + 2


async def test_idle_keep_alive_connection_outlives_the_header_timeout(served: Served) -> None:
    # The header timeout starts at a request's first byte; an idle keep-alive connection
    # between requests is governed by the keep-alive timer, not by it.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    request = b"GET /api/x HTTP/1.1\r\n" + H + b"Origin: " + ALLOWED.encode() + b"\r\n\r\n"
    statuses = []
    for _ in range(2):
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        statuses.append(status_of(head))
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)
    writer.close()
    assert statuses == [200, 200]


async def test_slow_but_steady_body_is_not_cut_by_the_body_timeout(served: Served, recorder: Recorder) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nConnection: close\r\n\r\n")
    for byte in b"abcdef":  # 6 bytes over ~1.8 s, each gap well under the body timeout
        writer.write(bytes([byte]))
        await asyncio.sleep(BODY_TIMEOUT * 0.3)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_of(response) == 200
    assert [s.body for s in recorder.seen] == [b"abcdef"]


async def test_body_timeout_does_not_cut_a_slow_upstream_after_the_body_was_sent(served: Served,
                                                                                 recorder: Recorder) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{served.url}/slow?s={BODY_TIMEOUT * 2.5}", data=b"x" * 100_000,
                                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200
            assert (await resp.json())["size"] == 100_000


async def test_header_and_body_timeouts_do_not_cut_an_idle_websocket(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{served.url}/ws", headers={"Origin": ALLOWED}) as ws:
            for i in range(2):
                await asyncio.sleep(max(HEADER_TIMEOUT, BODY_TIMEOUT) * 1.5)
                await ws.send_str(f"m{i}")
                assert (await ws.receive_str(timeout=5)) == f"echo:m{i}"


async def test_chunked_body_that_stalls_gets_408_and_the_upstream_never_gets_it_whole(
        served: Served, recorder: Recorder) -> None:
    response = await raw_exchange(
        served.port, b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        wait=BODY_TIMEOUT + 4)
    assert status_of(response) == 408
    await asyncio.sleep(0.2)
    assert all(s.body is None for s in recorder.seen)
    await assert_still_serving(served.url)


async def slowloris(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection holding half a request head (written at once, so no timeout fires before it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def test_200_slowloris_connections_do_not_stop_a_normal_client_and_all_get_closed(served: Served) -> None:
    await assert_still_serving(served.url)  # warm: the proxy's pooled upstream connection is open
    before = open_fds()
    conns = await asyncio.gather(*(slowloris(served.port) for _ in range(200)))
    await asyncio.sleep(0.1)
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        await assert_still_serving(served.url)
        latencies.append(time.monotonic() - started)
    assert max(latencies) < 1.0, latencies
    # Every slowloris connection is answered 408 and closed by the header timeout.
    answers = await asyncio.gather(*(asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 5) for reader, _ in conns))
    assert [status_of(a) for a in answers] == [408] * 200
    for _, writer in conns:
        writer.close()
    assert await settle_fds("self", before) <= before
    await assert_still_serving(served.url)


async def test_corsproxy_serve_process_is_guarded_too(tmp_path: Path, recorder: Recorder) -> None:
    # The real CLI path (server.py's make_runner): HTTP/0.9 refused; 200 slowloris connections
    # neither block a normal client nor leave a descriptor behind once they go.
    with serve_subprocess(tmp_path, recorder.url) as (port, process):
        url = f"http://127.0.0.1:{port}"
        response = await raw_exchange(port, b"GET /api/x\r\n\r\n")
        assert status_of(response) == 400 and response.closed
        await assert_still_serving(url)
        await asyncio.sleep(0.3)  # the proxy has seen that client close
        before = open_fds(process.pid)
        conns = await asyncio.gather(*(slowloris(port) for _ in range(200)))
        for _ in range(50):  # they are all held open by the proxy (bounded wait for the accepts)
            if open_fds(process.pid) >= before + 200:
                break
            await asyncio.sleep(0.05)
        assert open_fds(process.pid) >= before + 200
        started = time.monotonic()
        await assert_still_serving(url)
        assert time.monotonic() - started < 1.0
        for _, writer in conns:
            writer.close()
        assert await settle_fds(process.pid, before) == before
    assert [s.path for s in recorder.seen] == ["/api/ok", "/api/ok"]
