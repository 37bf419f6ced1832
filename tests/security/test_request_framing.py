"""The hostile-framing corpus: request shapes an attacker sends to smuggle a request past the proxy.

Each shape is sent on a keep-alive connection through the proxy (on both request paths) to a strict
recording upstream. Either the proxy refuses it (4xx) and the upstream saw nothing, or the upstream saw
exactly the requests the client meant, body byte for byte, framed by the proxy itself. Then a normal
request on the same connection (when it is still open) and on a new one is answered correctly.

A new shape is one line in a table. Shapes come from PortSwigger's request-smuggling research, the HTTP
Garden's and defparam/smuggler's mutation lists, and RFC 9112 §6.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .conftest import APP, Conn, StrictUpstream, connect, get, serve_edge

H = b"Host: proxy\r\n"
O = b"Origin: " + APP.encode() + b"\r\n"  # noqa: E741
# A request that would get past the proxy's checks if it were smuggled: a dot segment the proxy answers 400.
SMUG = b"GET /public/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n"
SECOND = b"GET /api/second HTTP/1.1\r\nHost: proxy\r\n\r\n"


@dataclass(frozen=True)
class Meant:
    """A request the upstream must see exactly so; ``absent``: bytes that must not reach the upstream at all."""

    method: str
    target: str
    body: bytes = b""
    absent: tuple[bytes, ...] = ()


REFUSED = "refused"  # a 4xx, and nothing reaches the upstream
ANSWERED = "answered"  # the proxy answers it itself (a preflight): a 2xx, and nothing reaches the upstream
Expected = tuple[Meant, ...] | str


def post(*headers: bytes, body: bytes = b"", target: bytes = b"/api/x", version: bytes = b"1.1") -> bytes:
    return b"POST " + target + b" HTTP/" + version + b"\r\n" + H + O + b"".join(h + b"\r\n" for h in headers) + \
        b"\r\n" + body


def cl(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


CHUNKED = b"Transfer-Encoding: chunked"
ABC = b"3\r\nabc\r\n0\r\n\r\n"


def _connection_names_framing() -> list[tuple[str, bytes, Expected]]:
    """``Connection`` naming a framing header or Host, in every spelling and position: always 400."""
    forms = [b"%s", b"close, %s", b"%s, close", b"keep-alive, %s", b" %s ", b",%s,", b"Upgrade,%s"]
    shapes = []
    for name in (b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding",
                 b"transfer-encoding", b"Host", b"HOST"):
        framed = (CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUG), SMUG)) if b"transfer" in name.lower() \
            else (cl(SMUG), SMUG)
        for form in forms:
            shapes.append((f"Connection: {(form % name).decode()}",
                           post(b"Connection: " + form % name, framed[0], body=framed[1]), REFUSED))
        shapes.append((f"second Connection header names {name.decode()}",
                       post(b"Connection: keep-alive", b"Connection: " + name, framed[0], body=framed[1]), REFUSED))
        shapes.append((f"HTTP/1.0 keep-alive, Connection names {name.decode()}",
                       post(b"Connection: keep-alive, " + name, cl(SMUG), body=SMUG, version=b"1.0"), REFUSED))
    return shapes


def _connection_names_forwarding() -> list[tuple[str, bytes, Expected]]:
    """``Connection`` naming a header the proxy sets itself: the client's value is dropped, the proxy's set."""
    spoofed = {b"X-Forwarded-For": b"6.6.6.6", b"X-Forwarded-Host": b"evil.example",
               b"X-Forwarded-Proto": b"gopher", b"Via": b"1.1 evil.example"}
    shapes = []
    for name, value in spoofed.items():
        for form in (b"%s", b"close, %s", b"%s, keep-alive"):
            raw = get("/api/x", f"{name.decode()}: {value.decode()}", f"Connection: {(form % name).decode()}")
            shapes.append((f"Connection: {(form % name).decode()} with a spoofed value", raw,
                           (Meant("GET", "/api/x", absent=(value,)),)))
    for name in (b"Cookie", b"Authorization", b"X-Custom"):
        raw = get("/api/x", f"{name.decode()}: secret-value", f"Connection: {name.decode()}")
        shapes.append((f"Connection: {name.decode()} drops it", raw,
                       (Meant("GET", "/api/x", absent=(b"secret-value",)),)))
    return shapes


# (id, value) of a Transfer-Encoding obfuscation (PortSwigger "TE.TE", smuggler's mutations).
TE_OBFUSCATIONS = [
    ("xchunked", b"Transfer-Encoding: xchunked"),
    ("chunked-x", b"Transfer-Encoding: chunkedx"),
    ("space before colon", b"Transfer-Encoding : chunked"),
    ("tab value", b"Transfer-Encoding:\tchunked\t"),
    ("vertical tab", b"Transfer-Encoding:\x0bchunked"),
    ("form feed", b"Transfer-Encoding:\x0cchunked"),
    ("obs-fold value", b"Transfer-Encoding:\r\n chunked"),
    ("leading space name", b" Transfer-Encoding: chunked"),
    ("underscore", b"Transfer_Encoding: chunked"),  # not a framing header: a header like any other
    ("chunked, identity", b"Transfer-Encoding: chunked, identity"),
    ("identity, chunked", b"Transfer-Encoding: identity, chunked"),
    ("gzip, chunked", b"Transfer-Encoding: gzip, chunked"),
    ("chunked, gzip", b"Transfer-Encoding: chunked, gzip"),
    ("comma chunked", b"Transfer-Encoding: ,chunked"),
    ("chunked comma", b"Transfer-Encoding: chunked,"),
    ("quoted", b'Transfer-Encoding: "chunked"'),
    ("chunked semicolon", b"Transfer-Encoding: chunked;"),
    ("split chu nked", b"Transfer-Encoding: chu nked"),
    ("two TE, second bogus", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow"),
    ("two TE, first bogus", b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked"),
    ("two TE chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
    ("bare LF inside", b"X: y\nTransfer-Encoding: chunked"),
    ("bare CR inside", b"X: y\rTransfer-Encoding: chunked"),
    ("NUL in value", b"Transfer-Encoding: chunked\x00"),
    ("non-ASCII k", b"Transfer-Encoding: chun\xe2\x84\xaaed"),
    ("Content-Encoding instead", b"Content-Encoding: chunked"),
]

TE_BODY = b"0\r\n\r\n" + SMUG  # a chunked end, then a request, as a TE.CL attack sends it


def _te_te() -> list[tuple[str, bytes, Expected]]:
    """Each obfuscation with a Content-Length too (TE.CL / CL.TE): framing two parsers may disagree on."""
    return [(f"TE.TE {name} with Content-Length", post(te, cl(TE_BODY), body=TE_BODY),
             (Meant("POST", "/api/x", TE_BODY),) if name in NOT_TE else REFUSED) for name, te in TE_OBFUSCATIONS]


NOT_TE = ("underscore", "Content-Encoding instead")  # other headers: the Content-Length frames the body


# Obfuscations without a Content-Length: refused, or (where the value is plainly chunked after all) the body
# exactly as a strict parser reads it.
TE_ALONE = [
    ("xchunked", REFUSED), ("chunked-x", REFUSED), ("space before colon", REFUSED), ("tab value", REFUSED),
    ("vertical tab", REFUSED), ("form feed", REFUSED), ("obs-fold value", REFUSED), ("leading space name", REFUSED),
    ("chunked, identity", REFUSED), ("identity, chunked", REFUSED), ("gzip, chunked", REFUSED),
    ("chunked, gzip", REFUSED), ("chunked comma", REFUSED), ("quoted", REFUSED),
    # An empty list item (RFC 9110 §5.6.1): chunked, and so the GET after it goes unanswered (guard.py).
    ("comma chunked", (Meant("POST", "/api/x", b"abc"),)),
    ("chunked semicolon", REFUSED), ("split chu nked", REFUSED), ("two TE, second bogus", REFUSED),
    ("two TE, first bogus", REFUSED), ("two TE chunked", REFUSED), ("bare LF inside", REFUSED),
    ("bare CR inside", REFUSED), ("NUL in value", REFUSED), ("non-ASCII k", REFUSED),
]


def _te_alone() -> list[tuple[str, bytes, Expected]]:
    table = dict(TE_OBFUSCATIONS)
    return [(f"TE {name} alone", post(table[name], body=ABC + SECOND), meant) for name, meant in TE_ALONE]


CL_TE = [
    ("CL.TE", post(cl(TE_BODY), CHUNKED, body=TE_BODY), REFUSED),
    ("TE.CL", post(CHUNKED, cl(TE_BODY), body=TE_BODY), REFUSED),
    ("CL 0 then TE", post(b"Content-Length: 0", CHUNKED, body=TE_BODY), REFUSED),
    ("TE then CL 0", post(CHUNKED, b"Content-Length: 0", body=TE_BODY), REFUSED),
    ("TE with CL larger than the body", post(CHUNKED, b"Content-Length: 400", body=TE_BODY), REFUSED),
    ("CL.TE lowercase names", post(b"content-length: %d" % len(TE_BODY), b"transfer-encoding: chunked",
                                   body=TE_BODY), REFUSED),
    ("TE in HTTP/1.0", post(CHUNKED, body=ABC, version=b"1.0"), REFUSED),
    ("TE and CL in HTTP/1.0", post(CHUNKED, cl(ABC), body=ABC, version=b"1.0"), REFUSED),
]

# Content-Length values: odd ones refused, whitespace around a plain number allowed (RFC 9110 §5.5 OWS).
CL_VALUES = [
    ("CL two equal headers", post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), REFUSED),
    ("CL two different headers", post(b"Content-Length: 3", b"Content-Length: 5", body=b"abcde"), REFUSED),
    ("CL list 3, 3", post(b"Content-Length: 3, 3", body=b"abc"), REFUSED),
    ("CL list 3, 5", post(b"Content-Length: 3, 5", body=b"abcde"), REFUSED),
    ("CL plus sign", post(b"Content-Length: +3", body=b"abc"), REFUSED),
    ("CL negative", post(b"Content-Length: -1", body=b"abc"), REFUSED),
    ("CL hex", post(b"Content-Length: 0x3", body=b"abc"), REFUSED),
    ("CL decimal point", post(b"Content-Length: 3.0", body=b"abc"), REFUSED),
    ("CL exponent", post(b"Content-Length: 3e0", body=b"abc"), REFUSED),
    ("CL overflow", post(b"Content-Length: 99999999999999999999999", body=b"abc"), REFUSED),
    ("CL empty", post(b"Content-Length: ", body=b"abc"), REFUSED),
    ("CL NUL", post(b"Content-Length: 3\x00", body=b"abc"), REFUSED),
    ("CL fullwidth digit", post(b"Content-Length: \xef\xbc\x93", body=b"abc"), REFUSED),
    ("CL two numbers", post(b"Content-Length: 3 3", body=b"abc"), REFUSED),
    ("CL space before colon", post(b"Content-Length : 3", body=b"abc"), REFUSED),
    ("CL obs-fold", post(b"Content-Length:\r\n 3", body=b"abc"), REFUSED),
    ("CL leading whitespace", post(b"Content-Length:   3", body=b"abc"), (Meant("POST", "/api/x", b"abc"),)),
    ("CL trailing whitespace", post(b"Content-Length: 3  ", body=b"abc"), (Meant("POST", "/api/x", b"abc"),)),
    ("CL leading zeros", post(b"Content-Length: 0003", body=b"abc"), (Meant("POST", "/api/x", b"abc"),)),
    ("CL 0 body-less POST", post(b"Content-Length: 0"), (Meant("POST", "/api/x"),)),
]

# CL.0, 0.CL and bodies where a proxy might not expect one: the body is forwarded as a body, framed by us.
BODIES = [
    ("CL.0 GET with a request for body", get("/api/x", f"Content-Length: {len(SMUG)}")[:-2] + b"\r\n" + SMUG,
     (Meant("GET", "/api/x", SMUG),)),
    ("CL.0 DELETE with a body", b"DELETE /api/x HTTP/1.1\r\n" + H + O + cl(SMUG) + b"\r\n\r\n" + SMUG,
     REFUSED),  # DELETE is not in the app rule's allow_methods, which rejects: 403, never forwarded
    ("CL.0 PUT with a request for body", b"PUT /api/x HTTP/1.1\r\n" + H + O + cl(SMUG) + b"\r\n\r\n" + SMUG,
     (Meant("PUT", "/api/x", SMUG),)),
    ("0.CL POST without length, then a request", post() + SECOND,
     (Meant("POST", "/api/x"), Meant("GET", "/api/second"))),
    ("CL 0 then a pipelined request", post(b"Content-Length: 0") + SECOND,
     (Meant("POST", "/api/x"), Meant("GET", "/api/second"))),
    ("CL body then a pipelined request", post(cl(b"abc"), body=b"abc") + SECOND,
     (Meant("POST", "/api/x", b"abc"), Meant("GET", "/api/second"))),
    ("CL body is a full request", post(cl(SECOND), body=SECOND), (Meant("POST", "/api/x", SECOND),)),
    ("CL body ends in half a request", post(cl(b"GET /x HTTP/1.1\r\nX: "), body=b"GET /x HTTP/1.1\r\nX: "),
     (Meant("POST", "/api/x", b"GET /x HTTP/1.1\r\nX: "),)),
    ("no-Origin POST with a request for body", b"POST /api/x HTTP/1.1\r\n" + H + cl(SMUG) + b"\r\n\r\n" + SMUG,
     (Meant("POST", "/api/x", SMUG),)),
    ("disallowed Origin POST with a request for body (reject rule)",
     b"POST /api/x HTTP/1.1\r\n" + H + b"Origin: https://evil.example\r\n" + cl(SMUG) + b"\r\n\r\n" + SMUG, REFUSED),
    ("OPTIONS preflight with a request for body",
     b"OPTIONS /api/x HTTP/1.1\r\n" + H + O + b"Access-Control-Request-Method: PUT\r\n" + cl(SMUG) + b"\r\n\r\n"
     + SMUG, ANSWERED),
]

CHUNKS = [
    ("chunk size overflow", post(CHUNKED, body=b"10000000000000003\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size 20 hex digits", post(CHUNKED, body=b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size 0x", post(CHUNKED, body=b"0x3\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size negative", post(CHUNKED, body=b"-3\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size plus", post(CHUNKED, body=b"+3\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size empty", post(CHUNKED, body=b"\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size with space", post(CHUNKED, body=b"3 \r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk size bare LF", post(CHUNKED, body=b"3\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk data bare LF", post(CHUNKED, body=b"3\r\nabc\n0\r\n\r\n"), REFUSED),
    ("chunk data no CRLF", post(CHUNKED, body=b"3\r\nabc0\r\n\r\n"), REFUSED),
    ("chunk longer than its size", post(CHUNKED, body=b"3\r\nabcdef\r\n0\r\n\r\n"), REFUSED),
    ("last chunk bare LF", post(CHUNKED, body=b"3\r\nabc\r\n0\n\n"), REFUSED),
    ("chunk extension", post(CHUNKED, body=b"3;name=value\r\nabc\r\n0\r\n\r\n"), (Meant("POST", "/api/x", b"abc"),)),
    ("chunk extension quoted", post(CHUNKED, body=b'3;name="v a l"\r\nabc\r\n0\r\n\r\n'),
     (Meant("POST", "/api/x", b"abc"),)),
    ("chunk extension bare CR", post(CHUNKED, body=b"3;a\rb\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("chunk extension bare LF", post(CHUNKED, body=b"3;a\nb\r\nabc\r\n0\r\n\r\n"), REFUSED),
    ("uppercase hex size", post(CHUNKED, body=b"A\r\n0123456789\r\n0\r\n\r\n"),
     (Meant("POST", "/api/x", b"0123456789"),)),
    ("many one-byte chunks", post(CHUNKED, body=b"1\r\na\r\n" * 500 + b"0\r\n\r\n"),
     (Meant("POST", "/api/x", b"a" * 500),)),
    ("trailer carrying Content-Length", post(CHUNKED, body=b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n"), REFUSED),
    ("trailer carrying Transfer-Encoding", post(CHUNKED, body=b"3\r\nabc\r\n0\r\nTransfer-Encoding: cow\r\n\r\n"),
     REFUSED),
    ("trailer carrying a header into the next request",
     post(CHUNKED, body=b"3\r\nabc\r\n0\r\nX-Injected: from-trailer\r\n\r\n") + SECOND,
     (Meant("POST", "/api/x", b"abc", absent=(b"X-Injected",)),)),
    ("trailer carrying Host", post(CHUNKED, body=b"3\r\nabc\r\n0\r\nHost: evil.example\r\n\r\n"),
     (Meant("POST", "/api/x", b"abc", absent=(b"evil.example",)),)),
    ("trailer obs-fold", post(CHUNKED, body=b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n"), REFUSED),
    ("chunked then a pipelined request", post(CHUNKED, body=ABC) + SECOND,
     (Meant("POST", "/api/x", b"abc"),)),  # closed after a chunked request (guard.py): the GET goes unanswered
    ("chunked body that is a request", post(CHUNKED, body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUG), SMUG)),
     (Meant("POST", "/api/x", SMUG),)),
    ("empty chunked body", post(CHUNKED, body=b"0\r\n\r\n"), (Meant("POST", "/api/x"),)),
]

LINES = [
    ("bare LF line ends", b"GET /api/x HTTP/1.1\nHost: proxy\nOrigin: " + APP.encode() + b"\n\n", REFUSED),
    ("bare LF after one header", b"GET /api/x HTTP/1.1\r\nHost: proxy\nX: y\r\n\r\n", REFUSED),
    ("bare CR in a header", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX: a\rb\r\n\r\n", REFUSED),
    ("bare CR ends the head", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\n\r\r\n", REFUSED),
    ("CR in the request line", b"GET /api/x\r HTTP/1.1\r\nHost: proxy\r\n\r\n", REFUSED),
    ("obs-fold header", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX-A: a\r\n b\r\n\r\n", REFUSED),
    ("obs-fold first header", b"GET /api/x HTTP/1.1\r\n Host: proxy\r\n\r\n", REFUSED),
    ("space in a header name", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX Y: z\r\n\r\n", REFUSED),
    ("NUL in a header", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX: a\x00b\r\n\r\n", REFUSED),
    ("colon-less header line", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nXY\r\n\r\n", REFUSED),
    ("empty header name", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\n: v\r\n\r\n", REFUSED),
    ("DEL in a header value", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX: a\x7fb\r\n\r\n", REFUSED),
    ("leading empty line", b"\r\nGET /api/x HTTP/1.1\r\nHost: proxy\r\n\r\n", (Meant("GET", "/api/x"),)),
    ("header value with tab", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX: a\tb\r\n\r\n", (Meant("GET", "/api/x"),)),
    ("header value obs-text", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nX: caf\xc3\xa9\r\n\r\n",
     (Meant("GET", "/api/x"),)),
]

REQUEST_LINES = [
    # RFC 9112 §3: a recipient may split the request line on whitespace; the proxy writes its own line.
    ("two spaces after the method", b"GET  /api/x HTTP/1.1\r\n" + H + b"\r\n", (Meant("GET", "/api/x"),)),
    ("two spaces before the version", b"GET /api/x  HTTP/1.1\r\n" + H + b"\r\n", (Meant("GET", "/api/x"),)),
    ("space after the version", b"GET /api/x HTTP/1.1 \r\n" + H + b"\r\n", REFUSED),
    ("tab separators", b"GET\t/api/x\tHTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("lowercase version", b"GET /api/x http/1.1\r\n" + H + b"\r\n", REFUSED),
    ("HTTP/1.2", b"GET /api/x HTTP/1.2\r\n" + H + b"\r\n", REFUSED),
    ("HTTP/2.0 request line", b"GET /api/x HTTP/2.0\r\n" + H + b"\r\n", REFUSED),
    ("HTTP/0.9", b"GET /api/x\r\n\r\n", REFUSED),
    ("method with a bracket", b"G(ET /api/x HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("NUL in the target", b"GET /api/x\x00 HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("space in the target", b"GET /api/x y HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("asterisk-form GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("asterisk-form OPTIONS", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("authority-form CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("dot segment", b"GET /public/../admin HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("encoded dot segment", b"GET /public/%2e%2e/admin HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("encoded slash and dots", b"GET /public/..%2Fadmin HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("request line of 9000 bytes", b"GET /api/" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("no Host in HTTP/1.1", b"GET /api/x HTTP/1.1\r\nOrigin: " + APP.encode() + b"\r\n\r\n", REFUSED),
    ("two Host headers", b"GET /api/x HTTP/1.1\r\nHost: proxy\r\nHost: evil.example\r\n\r\n", REFUSED),
    ("query string", b"GET /api/x?a=1&b=%20 HTTP/1.1\r\n" + H + b"\r\n", (Meant("GET", "/api/x?a=1&b=%20"),)),
    ("lowercase method", b"get /api/x HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("extension method", b"PROPFIND /api/x HTTP/1.1\r\n" + H + b"\r\n", (Meant("PROPFIND", "/api/x"),)),
    ("HTTP/1.0 keep-alive", b"GET /api/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", (Meant("GET", "/api/x"),)),
    ("double slash target", b"GET //evil.example/x HTTP/1.1\r\n" + H + b"\r\n", (Meant("GET", "//evil.example/x"),)),
]

ABSOLUTE = [
    ("absolute-form elsewhere", b"GET http://evil.example/admin HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("absolute-form at the proxy", b"GET http://proxy/api/x HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("absolute-form https", b"GET https://proxy/api/x HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("absolute-form with userinfo", b"GET http://a@evil.example/ HTTP/1.1\r\n" + H + b"\r\n", REFUSED),
    ("absolute-form POST with a body", b"POST http://evil.example/x HTTP/1.1\r\n" + H + cl(SMUG) + b"\r\n\r\n"
     + SMUG, REFUSED),
]

UPGRADES = [
    ("h2c upgrade", get("/api/x", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                        "Connection: Upgrade, HTTP2-Settings"),
     (Meant("GET", "/api/x", absent=(b"h2c", b"HTTP2-Settings")),)),
    ("h2c upgrade on a POST", post(b"Upgrade: h2c", b"Connection: Upgrade", cl(b"abc"), body=b"abc"),
     (Meant("POST", "/api/x", b"abc", absent=(b"h2c",)),)),
    ("h2c upgrade without Connection", get("/api/x", "Upgrade: h2c"), (Meant("GET", "/api/x", absent=(b"h2c",)),)),
    ("unknown upgrade", get("/api/x", "Upgrade: foo/2", "Connection: upgrade"),
     (Meant("GET", "/api/x", absent=(b"foo/2",)),)),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", REFUSED),
    ("TE trailers and Keep-Alive", get("/api/x", "TE: trailers", "Keep-Alive: timeout=5", "Proxy-Connection: x"),
     (Meant("GET", "/api/x", absent=(b"trailers", b"timeout=5", b"Proxy-Connection")),)),
]

PIPELINES = [
    ("three GETs in one write", get("/api/a") + get("/api/b") + get("/api/c"),
     (Meant("GET", "/api/a"), Meant("GET", "/api/b"), Meant("GET", "/api/c"))),
    ("GET, chunked POST, GET", get("/api/a") + post(CHUNKED, body=ABC) + get("/api/c"),
     (Meant("GET", "/api/a"), Meant("POST", "/api/x", b"abc"))),  # nothing after a chunked request (guard.py)
    ("sized POST split from its body", post(cl(b"abcdef"), body=b"abc") + b"def" + get("/api/c"),
     (Meant("POST", "/api/x", b"abcdef"), Meant("GET", "/api/c"))),
]

SHAPES = (_connection_names_framing() + _connection_names_forwarding() + _te_te() + _te_alone() + CL_TE
          + CL_VALUES + BODIES + CHUNKS + LINES + REQUEST_LINES + ABSOLUTE + UPGRADES + PIPELINES)


def test_the_corpus_has_at_least_150_distinct_shapes() -> None:
    ids = [shape_id for shape_id, _, _ in SHAPES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150


# Before the shape, on its connection: nothing, or a preflight the proxy answers and a GET it relays (after which
# the connection-level path has dropped its parser and parses the shape with a new one: fastpath.FastHandler).
BEFORE = {"fresh": b"", "after-answers": get("/api/before", "Access-Control-Request-Method: PUT", method="OPTIONS")
          + get("/api/before")}


@pytest.mark.parametrize("before", BEFORE)
@pytest.mark.parametrize(("data", "meant"), [(d, m) for _, d, m in SHAPES], ids=[i for i, _, _ in SHAPES])
async def test_hostile_request_is_refused_or_forwarded_exactly_as_meant(
        strict_upstream: StrictUpstream, request_path: str, data: bytes, meant: Expected, before: str) -> None:
    async with serve_edge(strict_upstream.url, request_path) as edge:
        async with connect(edge.port) as conn:
            if BEFORE[before]:
                await conn.send(BEFORE[before])
                assert [a.status for a in await conn.responses(2)] == [204, 200]
                assert [m.target for m in strict_upstream.messages] == ["/api/before"]
                del strict_upstream.messages[:]
            await conn.send(data)
            answers = await conn.responses(len(meant) if isinstance(meant, tuple) else 1, idle=3.0)
            assert answers, f"no answer (received {conn.received[:200]!r})"
            if isinstance(meant, str):
                low, high = (400, 500) if meant == REFUSED else (200, 300)
                assert [low <= a.status < high for a in answers] == [True], answers
                assert strict_upstream.messages == []
            else:
                assert [a.status for a in answers] == [200] * len(meant)
                assert [(m.method, m.target, m.body) for m in strict_upstream.messages] == \
                    [(m.method, m.target, m.body) for m in meant]
            assert await conn.quiet() == b""  # one answer a request, and no more
            _assert_framed_by_the_proxy(strict_upstream, meant)
            if not conn.closed:
                await _assert_answered(conn, strict_upstream, "/api/same-connection")
        async with connect(edge.port) as fresh:
            await _assert_answered(fresh, strict_upstream, "/api/new-connection")
    assert strict_upstream.errors == []


def _assert_framed_by_the_proxy(up: StrictUpstream, meant: Expected) -> None:
    raw = b"".join(up.raw.values())
    for message in up.messages:
        lengths, encodings = message.header("Content-Length"), message.header("Transfer-Encoding")
        assert len(lengths) + len(encodings) <= 1 and encodings in ([], ["chunked"]), message.headers
        assert message.header("Via")[-1:] == ["1.1 corsproxy"] or message.header("Via")[-1].endswith("1.1 corsproxy")
    for m in meant if isinstance(meant, tuple) else ():
        for forbidden in m.absent:
            assert forbidden not in raw, f"{forbidden!r} reached the upstream"


async def _assert_answered(conn: Conn, up: StrictUpstream, path: str) -> None:
    before = len(up.messages)
    await conn.send(get(path))
    answers = await conn.responses(1)
    assert [(a.status, a.json()["target"]) for a in answers] == [(200, path)]
    assert [m.target for m in up.messages[before:]] == [path]
