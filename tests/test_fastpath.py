"""The connection-level answers (guard fast_answer + fastpath.py): answered preflights, bodiless GET/HEAD.

It must give exactly what the request/response path gives, keep pipelined answers in order, and
leave everything it does not answer to the normal path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from yarl import URL

from corsproxy import fastpath
from tests.conftest import MakeProxy, Proxy, Upstream

ORIGIN = "https://app.example.com"


@pytest.fixture
def proxy_path() -> str:
    """The connection-level path itself: these tests look at what it answers and what it leaves to aiohttp."""
    return "fast-path"

PREFLIGHT = (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n"
             b"Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type\r\n\r\n")
DENIED = (b"OPTIONS /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://evil.example.net\r\n"
          b"Access-Control-Request-Method: PUT\r\n\r\n")
GET = b"GET /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n"
POST = b"POST /api/x HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\nContent-Length: 2\r\n\r\nhi"


def _aiohttp_requests(proxy: Proxy) -> int:
    """Requests aiohttp's own loop has taken on (the fast path takes none)."""
    server = proxy.client.server.runner.server
    assert server is not None
    return server.requests_count


async def _exchange(url: str, data: bytes, answers: int) -> list[bytes]:
    """Write ``data`` at once on one keep-alive connection; read ``answers`` responses (heads)."""
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    heads = []
    try:
        writer.write(data)
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if not data.startswith(b"HEAD"):  # a HEAD answer has a Content-Length but no body
                await asyncio.wait_for(reader.readexactly(length), 5)
            heads.append(head)
    finally:
        writer.close()
        await writer.wait_closed()
    return heads


async def test_preflights_and_whole_requests_make_no_aiohttp_request_but_are_observed(make_proxy: MakeProxy,
                                                                                      upstream: Upstream) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.options("/api/x", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"})
    assert resp.status == 204
    resp = await proxy.client.get("/api/x", headers={"Origin": ORIGIN})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    resp = await proxy.client.post("/api/x", data=b"body", headers={"Origin": ORIGIN})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert (await resp.json())["body_len"] == 4
    assert _aiohttp_requests(proxy) == 0  # all three answered on the connection

    async def chunked() -> AsyncIterator[bytes]:
        yield b"bo"
        yield b"dy"

    resp = await proxy.client.post("/api/x", data=chunked(), headers={"Origin": ORIGIN})
    assert resp.status == 200 and _aiohttp_requests(proxy) == 1  # a chunked body takes aiohttp's path
    assert (await resp.json())["body_len"] == 4
    assert [(e.method, e.status, e.decision.verdict, e.bytes_in) for e in proxy.exchanges] == [
        ("OPTIONS", 204, "allowed", 0), ("GET", 200, "allowed", 0), ("POST", 200, "allowed", 4),
        ("POST", 200, "allowed", 4)]
    assert upstream.count("OPTIONS") == 0 and upstream.count("GET") == 1


@pytest.mark.parametrize(("extra", "request_bytes", "statuses"), [
    ("", POST.replace(b"Content-Length: 2", b"Expect: 100-continue\r\nContent-Length: 2"), [b"100", b"200"]),
    ("limits:\n  max_body_size: 1\n", POST, [b"413"]),
], ids=["expect-continue", "over-max-body-size"])
async def test_bodies_the_connection_path_leaves_to_aiohttp(make_proxy: MakeProxy, upstream: Upstream, extra: str,
                                                            request_bytes: bytes, statuses: list[bytes]) -> None:
    proxy = await make_proxy(extra=extra)
    heads = await _exchange(proxy.url, request_bytes, len(statuses))
    assert [head.split(b" ")[1] for head in heads] == statuses and _aiohttp_requests(proxy) == 1
    assert upstream.count("POST") == (statuses[-1] == b"200")


async def test_pipelined_requests_are_answered_in_order(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy()
    # fast, fast (relayed), normal (a body), fast, fast, normal, fast (relayed): one write, answers in order
    heads = await _exchange(proxy.url, PREFLIGHT + GET + POST + DENIED + PREFLIGHT + POST + GET.replace(
        b"/api/x", b"/api/slow?s=0.2"), 7)
    assert [h.split(b"\r\n")[0] for h in heads] == [
        b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden",
        b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b"Access-Control-Allow-Origin: https://app.example.com" in heads[0]
    assert b"Access-Control-Allow-Origin" not in heads[3]
    assert [r.method for r in upstream.seen] == ["GET", "POST", "POST", "GET"]


async def test_an_idle_connection_holds_no_aiohttp_loop_and_still_closes_at_its_keepalive_timeout(
        make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    server = proxy.client.server.runner.server
    server._kwargs["keepalive_timeout"] = 0.5  # (for connections made from now on)
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        for request in (PREFLIGHT, GET):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0]
            await asyncio.wait_for(reader.readexactly(int(length or 0)), 5)
        (conn,) = server.connections
        assert conn._task_handler is None and not conn._messages  # answered at the connection, nothing of aiohttp's
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the keep-alive timer, not before
        assert not server.connections
    finally:
        writer.close()


async def _until(condition: Callable[[], bool], what: object = None) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), what


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One response off ``reader``; its status line."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0]
    await asyncio.wait_for(reader.readexactly(int(length or 0)), 5)
    return head.split(b"\r\n")[0]


async def test_a_connection_keeps_its_parser_only_between_requests_that_come_close_together(
        make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "KEEP_PARSER", 0.3)
    proxy = await make_proxy()
    server = proxy.client.server.runner.server
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(PREFLIGHT)
        assert await _answer(reader) == b"HTTP/1.1 204 No Content"
        (conn,) = server.connections
        await _until(lambda: conn._parser is None)  # a first request: gone once it is answered
        writer.write(GET)
        assert await _answer(reader) == b"HTTP/1.1 200 OK"
        assert conn._parser is not None  # a second one soon after: kept for the next ...
        await _until(lambda: conn._parser is None)  # ... until the server's sweep finds it quiet for KEEP_PARSER
        await asyncio.sleep(0.3)
        writer.write(GET)
        assert await _answer(reader) == b"HTTP/1.1 200 OK"
        await _until(lambda: conn._parser is None)  # after a quiet spell: gone at once again
    finally:
        writer.close()


async def test_a_head_split_anywhere_after_an_answer_keeps_the_parser_until_it_is_whole(
        make_proxy: MakeProxy, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle connection drops its parser (fastpath.FastHandler); bytes of a next head behind an answered request
    must keep it, wherever they end, or that request would be parsed from its middle."""
    monkeypatch.setattr(fastpath, "KEEP_PARSER", 0.0)  # (dropped after every request, not only after quiet)
    proxy = await make_proxy()
    server = proxy.client.server.runner.server
    target = URL(proxy.url)
    second = GET.replace(b"/api/x", b"/api/second")
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        for cut in range(1, len(second)):
            writer.write(PREFLIGHT + second[:cut])
            assert await _answer(reader) == b"HTTP/1.1 204 No Content"
            (conn,) = server.connections
            assert conn._parser is not None, cut
            writer.write(second[cut:])
            assert await _answer(reader) == b"HTTP/1.1 200 OK", cut
            assert upstream.seen[-1].path.endswith("/api/second")
            if len(second) - cut >= 4:  # (a chunk that does not itself end in the blank line keeps it: guard._received)
                await _until(lambda: conn._parser is None, cut)
        assert len(upstream.seen) == len(second) - 1
    finally:
        writer.close()


async def test_a_message_left_for_aiohttp_starts_its_loop_after_the_answers_before_it(make_proxy: MakeProxy,
                                                                                     upstream: Upstream) -> None:
    proxy = await make_proxy()
    server = proxy.client.server.runner.server
    # a preflight and a relayed GET at the connection, then a chunked body aiohttp's loop reads (it closes after)
    chunked = b"POST /api/x HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    heads = await _exchange(proxy.url, PREFLIGHT + GET + chunked, 3)
    assert [h.split(b"\r\n")[0] for h in heads] == [b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK",
                                                     b"HTTP/1.1 200 OK"]
    assert [r.method for r in upstream.seen] == ["GET", "POST"] and server.requests_count == 1


@pytest.mark.parametrize("request_bytes", [DENIED, PREFLIGHT, GET, GET.replace(b"GET", b"HEAD"), POST],
                         ids=["denied-preflight", "preflight", "get", "head", "post"])
async def test_fast_and_normal_paths_give_the_same_headers(make_proxy: MakeProxy, request_bytes: bytes) -> None:
    proxy = await make_proxy(extra="debug:\n  decision_header: true\n")
    fast = (await _exchange(proxy.url, request_bytes, 1))[0]
    # HTTP/1.0 closes after the answer, so the fast path leaves it to aiohttp's request path.
    assert _aiohttp_requests(proxy) == 0
    slow = (await _exchange(proxy.url, request_bytes.replace(b"HTTP/1.1", b"HTTP/1.0"), 1))[0]
    assert _aiohttp_requests(proxy) == 1

    def lines(head: bytes) -> set[bytes]:
        skip = (b"date:", b"http/", b"connection:", b"keep-alive:", b"x-forwarded", b"via:")
        return {line for line in head.split(b"\r\n") if line and not line.lower().startswith(skip)}

    assert lines(fast) == lines(slow)
    assert b"CORS-Decision: rule=app; verdict=" in fast


async def test_a_large_body_then_a_get_on_one_connection(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = await make_proxy()
    big = b"z" * 100_000  # over aiohttp's read-pause mark: reading it resumes the paused connection
    post = POST.replace(b"Content-Length: 2\r\n\r\nhi", b"Content-Length: %d\r\n\r\n%b" % (len(big), big))
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(post + GET)
    answers = []
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append((head.split(b"\r\n")[0], await asyncio.wait_for(reader.readexactly(length), 5)))
    writer.close()
    assert [status for status, _ in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert json.loads(answers[0][1])["body_sha256"] == hashlib.sha256(big).hexdigest()
    assert [r.method for r in upstream.seen] == ["POST", "GET"]


async def test_an_http10_keep_alive_get_takes_aiohttp_path(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    request = GET.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
    head = (await _exchange(proxy.url, request, 1))[0]
    assert head.startswith(b"HTTP/1.0 200 OK") and b"Connection: keep-alive" in head
    assert _aiohttp_requests(proxy) == 1


async def test_a_remembered_answer_is_given_only_to_the_same_cors_inputs(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy()
    first = (await _exchange(proxy.url, PREFLIGHT, 1))[0]
    # Same path and method; each differs from PREFLIGHT in one CORS input, or only in what decide() ignores.
    variants = {
        b"Origin: https://evil.example.net": b"HTTP/1.1 403 Forbidden",
        b"Origin: https://app.example.com\r\nOrigin: https://app.example.com": b"HTTP/1.1 403 Forbidden",
        b"Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: x-secret": b"HTTP/1.1 403 Forbidden",
        b"Access-Control-Request-Method: TRACE": b"HTTP/1.1 403 Forbidden",
        b"Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Private-Network: true":
            b"HTTP/1.1 403 Forbidden",
        b"Host: other": b"HTTP/1.1 204 No Content",
    }
    for change, status in variants.items():
        name = change.split(b":")[0]
        lines = [line for line in PREFLIGHT.split(b"\r\n") if not line.startswith(name + b":")]
        request = b"\r\n".join([lines[0], change, *lines[1:]])
        head = (await _exchange(proxy.url, request, 1))[0]
        assert head.split(b"\r\n")[0] == status, change
    again = (await _exchange(proxy.url, PREFLIGHT.replace(b"/api/x", b"/api/x?q=1"), 1))[0]
    assert _without_date(again) == _without_date(first)
    assert [e.decision.verdict for e in proxy.exchanges] == [
        "allowed", "denied:origin", "denied:origin", "denied:header", "denied:method", "denied:private-network",
        "allowed", "allowed"]
    assert [e.path for e in proxy.exchanges][-1] == "/api/x?q=1"  # the log still has each request's own target


async def test_a_rejected_head_gets_the_length_of_the_403_but_no_body(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy("rules:\n  - name: app\n    paths: ['/api/**']\n"
                             "    allow_origins: ['https://app.example.com']\n    disallowed_origin: reject\n")
    head = GET.replace(b"GET", b"HEAD").replace(ORIGIN.encode(), b"https://evil.example.net")
    target = URL(proxy.url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(head + head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))  # fast, then aiohttp's
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    answers = data.split(b"\r\n\r\n")
    assert len(answers) == 3 and answers[2] == b""  # two heads, no body bytes after either
    assert [a.split(b"\r\n")[0] for a in answers[:2]] == [b"HTTP/1.1 403 Forbidden"] * 2
    assert b"Content-Length: 66" in answers[0] and b"Content-Length: 66" in answers[1]
    assert [(e.status, e.bytes_out) for e in proxy.exchanges] == [(403, 0), (403, 0)]


async def test_a_remembered_answer_gets_a_fresh_date(make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from corsproxy import fastpath

    proxy = await make_proxy()
    first = (await _exchange(proxy.url, PREFLIGHT, 1))[0]
    monkeypatch.setattr(fastpath, "rfc822_formatted_time", lambda: "Fri, 01 Jan 2100 00:00:00 GMT")
    second = (await _exchange(proxy.url, PREFLIGHT, 1))[0]
    assert b"\r\nDate: Fri, 01 Jan 2100 00:00:00 GMT\r\n" in second and second.count(b"Date:") == 1
    assert _without_date(first) == _without_date(second)


async def test_a_reload_forgets_remembered_answers(make_proxy: MakeProxy) -> None:
    from corsproxy import config as cfg
    from corsproxy.exchange import LIVE_KEY
    from corsproxy.snapshot import Snapshot

    proxy = await make_proxy()
    assert (await _exchange(proxy.url, PREFLIGHT, 1))[0].startswith(b"HTTP/1.1 204")
    live = proxy.client.server.app[LIVE_KEY]
    text = "upstream:\n  url: http://127.0.0.1:9\nrules:\n  - name: app\n    paths: ['/api/**']\n" \
           "    allow_origins: ['https://other.example.org']\n"
    live.current = Snapshot.build(cfg.parse(text, "reloaded.yaml", env={}))
    assert (await _exchange(proxy.url, PREFLIGHT, 1))[0].startswith(b"HTTP/1.1 403")


def test_the_memo_is_bounded() -> None:
    from aiohttp.http import HttpVersion11, RawRequestMessage
    from multidict import CIMultiDict, CIMultiDictProxy

    from corsproxy import config as cfg
    from corsproxy.fastpath import MAX_REMEMBERED, MAX_REMEMBERED_CHARS, Memo
    from corsproxy.snapshot import Snapshot

    text = "upstream:\n  url: http://127.0.0.1:9\nrules:\n  - name: all\n    paths: ['/**']\n" \
           "    allow_origins: ['*']\n"
    memo = Memo(Snapshot.build(cfg.parse(text, "t.yaml", env={})), {})

    def learn(path: str) -> None:
        headers = CIMultiDictProxy(CIMultiDict({"Origin": "https://a.example", "Access-Control-Request-Method": "GET"}))
        msg = RawRequestMessage("OPTIONS", path, HttpVersion11, headers, (), False, None, False, False, URL(path))
        assert memo.learn(("OPTIONS", path), msg) is not None

    for i in range(MAX_REMEMBERED):
        learn(f"/{i}")
    assert len(memo.known) == MAX_REMEMBERED
    learn("/one-more")
    assert list(memo.known) == [("OPTIONS", "/one-more")]
    learn("/" + "x" * MAX_REMEMBERED_CHARS)  # answered, not remembered
    assert list(memo.known) == [("OPTIONS", "/one-more")]


def _without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Date:"))


async def test_a_head_answered_before_is_answered_again_unparsed_and_still_observed(
        make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    answer = fastpath.Answerer.__call__

    def counting(self: fastpath.Answerer, msg, payload, handler):  # type: ignore[no-untyped-def]
        parsed.append(msg.path)
        return answer(self, msg, payload, handler)

    monkeypatch.setattr(fastpath.Answerer, "__call__", counting)
    proxy = await make_proxy(extra="debug:\n  decision_header: true\n")
    first = await _exchange(proxy.url, PREFLIGHT, 1)  # a new connection each: the memory is the proxy's
    again = await _exchange(proxy.url, PREFLIGHT + PREFLIGHT, 2)  # one chunk of two heads: parsed
    assert parsed == ["/api/x"] * 3
    for _ in range(2):
        again += await _exchange(proxy.url, PREFLIGHT, 1)  # those very bytes again: not parsed
    denied = await _exchange(proxy.url, DENIED, 1) + await _exchange(proxy.url, DENIED, 1)
    assert parsed == ["/api/x"] * 4
    assert {_without_date(h) for h in again} == {_without_date(first[0])}
    assert _without_date(denied[0]) == _without_date(denied[1]) and denied[0].startswith(b"HTTP/1.1 403")
    assert [e.decision.verdict for e in proxy.exchanges] == ["allowed"] * 5 + ["denied:origin"] * 2
    assert _aiohttp_requests(proxy) == 0
