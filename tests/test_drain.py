"""SIGTERM on a real `corsproxy serve` (alone and with two workers) under mixed load: every request in flight
finishes whole (slow bodiless GETs and downloads on the connection-level path, streamed uploads on aiohttp's),
a keep-alive connection closes after its response and never under it, and /readyz says 503 meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from corsproxy.testing import free_port, serve_process
from tests.conftest import Upstream

ORIGIN = "https://app.example.com"
CHUNK = bytes(range(256)) * 256  # what /v1/big repeats (tests/conftest.py)
MIB = 8
SLOW_GETS, DOWNLOADS, UPLOADS = 6, 3, 3
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"}


def config(port: int, admin: int, upstream: Upstream) -> str:
    return (f"listen: {{host: 127.0.0.1, port: {port}, drain_timeout: 20}}\n"
            f"upstream: {{url: '{upstream.url}/v1', read_timeout: 30}}\n"
            f"admin: {{host: 127.0.0.1, port: {admin}}}\n"
            "rules:\n  - name: app\n    paths: ['/**']\n"
            f"    allow_origins: ['{ORIGIN}']\n    allow_methods: [GET, POST, PUT]\n")


async def slow_get(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(url + "/slow?s=3", headers={"Origin": ORIGIN}) as resp:
        return resp.status == 200 and await resp.read() == b"slow"


async def download(session: aiohttp.ClientSession, url: str) -> bool:
    """8 MiB read at about 2.5 MiB/s, hashed."""
    digest, size = hashlib.sha256(), 0
    async with session.get(url + f"/big?mib={MIB}", headers={"Origin": ORIGIN}) as resp:
        while chunk := await resp.content.read(2**18):
            digest.update(chunk)
            size += len(chunk)
            await asyncio.sleep(0.1)
        return resp.status == 200 and size == MIB * 2**20 and \
            digest.hexdigest() == hashlib.sha256(CHUNK * MIB * 16).hexdigest()


async def upload(session: aiohttp.ClientSession, url: str, seed: int) -> bool:
    """8 MiB sent at about 2.5 MiB/s (chunked); the upstream's hash of what it got must be ours."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2**13  # 256 KiB
    want = hashlib.sha256(block * (MIB * 4)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(MIB * 4):
            yield block
            await asyncio.sleep(0.1)

    async with session.post(url + "/upload", data=body(), headers={"Origin": ORIGIN}) as resp:
        return resp.status == 200 and (await resp.json())["sha256"] == want


async def keepalive_get(url: str) -> tuple[bytes, bool]:
    """A keep-alive GET on a raw socket: everything up to EOF, and whether EOF came."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /slow?s=3 HTTP/1.1\r\nHost: p\r\nOrigin: https://app.example.com\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 15)  # to EOF: the proxy must close after the answer
        return data, True
    except TimeoutError:
        return b"", False
    finally:
        writer.close()


@pytest.mark.parametrize("workers", ["1", "2"], ids=["single-process", "two-workers"])
async def test_sigterm_drains_every_request_in_flight_on_both_paths_and_exits_0(
        tmp_path: Path, upstream: Upstream, workers: str) -> None:
    port, admin = free_port(), free_port()
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    with serve_process(config(port, admin, upstream), tmp_path, port, args=["--workers", workers]) as proc:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(20):  # keep-alive connections that have carried preflights (answered on the connection)
                async with session.options(url + "/x", headers=PREFLIGHT) as resp:
                    assert resp.status == 204
            async with session.get(admin_url + "/readyz") as resp:
                assert resp.status == 200
            tasks = [asyncio.ensure_future(slow_get(session, url)) for _ in range(SLOW_GETS)]
            tasks += [asyncio.ensure_future(download(session, url)) for _ in range(DOWNLOADS)]
            tasks += [asyncio.ensure_future(upload(session, url, i)) for i in range(UPLOADS)]
            raw = asyncio.ensure_future(keepalive_get(url))
            deadline = time.monotonic() + 10
            while upstream.count() < SLOW_GETS + DOWNLOADS + UPLOADS + 1:  # every one is in flight
                assert time.monotonic() < deadline, f"only {upstream.count()} requests reached the upstream"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            async with session.get(admin_url + "/readyz") as resp:
                assert resp.status == 503
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 25)
            data, closed = await raw
        assert results == [True] * len(tasks), (results, (tmp_path / "proxy.log").read_text()[-3000:])
        assert closed, "the keep-alive connection stayed open after its response while draining"
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 4" in head and body == b"slow"
        try:
            assert proc.wait(15) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError("corsproxy did not exit after draining") from None
