"""An origins file is watched like the config (design §3): `corsproxy serve` as a subprocess, its
origins file in a Kubernetes-style ConfigMap folder whose ``..data`` symlink is swapped on update."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from tests.test_server import Setup, rule, spawn, until_up  # noqa: F401  (spawn is a fixture)

NEW = "https://new-customer.example.com"


class ConfigMap:
    """A folder as the kubelet writes a mounted ConfigMap: timestamped dirs, ``..data`` -> the current one,
    and each key a symlink through ``..data``; an update writes a new dir and renames a new ``..data`` over."""

    def __init__(self, root: Path) -> None:
        self.root, self.version = root, 0
        root.mkdir()

    def publish(self, files: dict[str, str]) -> None:
        self.version += 1
        folder = self.root / f"..2026_12_02_00_00_0{self.version}.{self.version}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap every file is read through
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")


async def test_a_configmap_swap_of_the_origins_file_reloads_it_and_a_bad_one_keeps_the_running_config(
        spawn, tmp_path, upstream):  # noqa: F811
    cm = ConfigMap(tmp_path / "cm")
    setup = Setup(cm.root / "config.yaml", upstream.url)
    config = setup.text(rule("saas", origins="[{file: origins.txt}]"))
    cm.publish({"config.yaml": config, "origins.txt": "https://first.example.com\n"})
    proc = spawn("-c", str(setup.path))

    async def allow_origin(session: aiohttp.ClientSession, origin: str) -> str | None:
        async with session.get(setup.url + "/x", headers={"Origin": origin}) as resp:
            assert resp.status == 200
            return resp.headers.get("Access-Control-Allow-Origin")

    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        assert await allow_origin(session, NEW) is None
        cm.publish({"config.yaml": config, "origins.txt": f"https://first.example.com\n{NEW}\n"})
        await proc.wait_line(lambda line: "config reloaded (file changed)" in line, timeout=5)
        assert await allow_origin(session, NEW) == NEW

        mark = len(proc.lines)
        cm.publish({"config.yaml": config, "origins.txt": "https://first.example.com\nhttps://typo.example.com/\n"})
        line = await proc.wait_line(lambda line: "reload (file changed) failed" in line, timeout=5, start=mark)
        assert "origins.txt:2:1: rules[0].allow_origins[0]: 'https://typo.example.com/' has a path" in line
        assert await allow_origin(session, NEW) == NEW  # the running config stays

        mark = len(proc.lines)
        cm.publish({"config.yaml": config, "origins.txt": "https://first.example.com\n"})
        await proc.wait_line(lambda line: "config reloaded (file changed)" in line, timeout=5, start=mark)
        assert await allow_origin(session, NEW) is None


async def test_an_origins_file_added_by_a_failed_reload_is_watched_so_creating_it_reloads(
        spawn, tmp_path, upstream):  # noqa: F811
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("first"))
    proc = spawn("-c", str(setup.path))
    async with aiohttp.ClientSession() as session:
        await until_up(session, setup)
        setup.write(rule("saas", origins="[{file: later.txt}]"))
        await proc.wait_line(lambda line: "reload (file changed) failed" in line, timeout=5)
        mark = len(proc.lines)
        (tmp_path / "later.txt").write_text(f"{NEW}\n")
        await proc.wait_line(lambda line: "config reloaded (file changed)" in line, timeout=5, start=mark)
        async with session.get(setup.url + "/x", headers={"Origin": NEW}) as resp:
            assert resp.headers.get("Access-Control-Allow-Origin") == NEW


async def test_a_reload_of_100000_origins_under_load_loses_no_request(spawn, tmp_path, upstream):  # noqa: F811
    customers = [f"https://shop{i}.customer{i % 977}.com" for i in range(100_000)]
    origins = tmp_path / "origins.txt"
    origins.write_text("\n".join(customers) + "\n")
    setup = Setup(tmp_path / "config.yaml", upstream.url)
    setup.write(rule("saas", origins="[{file: origins.txt}]"))
    proc = spawn("-c", str(setup.path))
    results: list[tuple[int, str | None, str]] = []
    stop = False

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not stop:
            origin = customers[(n * 7919 + i * 104729) % len(customers)]
            async with session.get(setup.url + "/x", headers={"Origin": origin},
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
                results.append((resp.status, resp.headers.get("Access-Control-Allow-Origin"), origin))
            i += 1

    async with aiohttp.ClientSession() as session:
        await until_up(session, setup, timeout=30)
        clients = [asyncio.ensure_future(client(session, n)) for n in range(4)]
        for generation in range(3):
            mark = len(proc.lines)
            origins.write_text("\n".join(customers) + f"\nhttps://gen{generation}.example.com\n")
            await proc.wait_line(lambda line: "config reloaded (file changed)" in line, timeout=15, start=mark)
        stop = True
        await asyncio.gather(*clients)
    assert len(results) > 50
    assert [r for r in results if r[:2] != (200, r[2])] == []
