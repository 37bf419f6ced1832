"""The private aiohttp members corsproxy uses (corsproxy/internals.py) exist on the aiohttp installed."""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp import web, web_protocol
from aiohttp.test_utils import make_mocked_request

from corsproxy import internals

ROOT = Path(__file__).resolve().parent.parent


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


async def test_every_private_aiohttp_member_corsproxy_uses_exists() -> None:
    server = web.Server(lambda request: None, loop=asyncio.get_running_loop())  # type: ignore[arg-type, return-value]
    missing = {
        "RequestHandler": _missing(web_protocol.RequestHandler, internals.REQUEST_HANDLER),
        "web_protocol": _missing(web_protocol, internals.WEB_PROTOCOL),
        "Server": _missing(server, internals.SERVER),
        "AppRunner": _missing(web.AppRunner, internals.RUNNER),
        "BaseSite": _missing(web.BaseSite, internals.SITE),
        "Application": _missing(web.Application(), internals.APPLICATION),
        "StreamResponse": _missing(web.StreamResponse(), internals.STREAM_RESPONSE),
        "BaseRequest": _missing(make_mocked_request("GET", "/"), internals.REQUEST),
    }
    assert {where: names for where, names in missing.items() if names} == {}


@pytest.mark.parametrize("module", ["guard", "fastpath", "proxy", "app", "server", "listener"])
def test_every_private_aiohttp_member_the_code_touches_is_listed(module: str) -> None:
    """A new private use must be added to internals.py (and so to the test above)."""
    listed = {name for value in vars(internals).values() if isinstance(value, tuple) for name in value}
    source = (ROOT / "corsproxy" / f"{module}.py").read_text()
    ours = "".join(path.read_text() for path in (ROOT / "corsproxy").glob("*.py"))  # (FastHandler's base is ours)
    own = set(re.findall(r"\bdef (_\w+)|self\.(_\w+) = ", ours))
    defined = {name for pair in own for name in pair if name}
    # Members of RequestHandler (self._x in guard), and of aiohttp objects reached by name.
    used = set(re.findall(r"(?:self|plain|resp|app|request|web_protocol|proxy_runner|handler|conn)\.(_[a-zA-Z]\w*)",
                          source))
    assert used - defined - listed - {"_guard"} == set()


async def test_a_parser_fastpath_remakes_is_made_as_aiohttps_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """FastHandler drops an idle connection's parser and makes another for the next request (_new_parser): with
    the arguments aiohttp's RequestHandler gives its own (a limit or option added there fails this)."""
    from corsproxy.fastpath import FastHandler

    made: list[tuple[tuple[object, ...], dict[str, object]]] = []

    class Recorder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            made.append((args, kwargs))

    monkeypatch.setattr(web_protocol, "HttpRequestParser", Recorder)
    server = web.Server(lambda request: None, loop=asyncio.get_running_loop())  # type: ignore[arg-type, return-value]
    handler = FastHandler(server, fast_answer=None,  # type: ignore[arg-type]
                          loop=asyncio.get_running_loop(), header_timeout=1,
                          body_timeout=1, max_field_size=16384, max_line_size=100, max_headers=7,
                          auto_decompress=False, read_bufsize=12345)
    handler._new_parser()
    (own_args, own_kwargs), (new_args, new_kwargs) = made
    assert own_args[0] is new_args[0] is handler
    assert (own_args[1:], own_kwargs) == (new_args[1:], new_kwargs)
    assert {"max_line_size": 100, "max_headers": 7, "auto_decompress": False}.items() <= new_kwargs.items()
    assert 12345 in new_args


def test_the_installed_aiohttp_is_within_the_minor_release_pyproject_pins() -> None:
    """The pin names one minor release (members move between them) from the oldest patch the suite ran on."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(dep for dep in deps if dep.startswith("aiohttp"))
    low, high = re.fullmatch(r"aiohttp>=([\d.]+),<([\d.]+)", pin).groups()  # type: ignore[union-attr]
    installed = tuple(int(part) for part in version("aiohttp").split(".")[:3])
    assert tuple(map(int, low.split("."))) <= installed < tuple(map(int, high.split(".")))
    assert high.split(".")[:2] == [low.split(".")[0], str(int(low.split(".")[1]) + 1)]


def test_aiohttp_uses_its_message_queue_only_as_fastpath_MessageQueue_provides() -> None:
    # FastHandler puts a list (MessageQueue: append, popleft, len) where aiohttp keeps a deque.
    used = set(re.findall(r"self\._messages\.(\w+)", inspect.getsource(web_protocol)))
    assert used <= {"append", "popleft"}, f"aiohttp now calls {used - {'append', 'popleft'}} on _messages"


def test_a_histogram_published_at_once_equals_one_observed_one_by_one() -> None:
    """metrics.Metrics adds its counted durations to the Histogram's private values (internals.HISTOGRAM)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from corsproxy.exchange import Exchange
    from corsproxy.metrics import DURATION_BUCKETS, Metrics
    from corsproxy.policy import Decision

    durations = [0.0, 0.0005, 0.001, 0.0011, 0.05, 0.7, 2.5, 59.0, 60.0, 61.0, 3600.0]
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert _missing(metrics.duration, internals.HISTOGRAM) == []
    assert tuple(metrics.duration._upper_bounds) == (*DURATION_BUCKETS, float("inf"))
    for duration in durations:
        metrics.observe(Exchange("GET", "/", "-", Decision("actual", "allowed", "test"), status=200,
                                 duration=duration))
    metrics.publish()
    metrics.publish()  # nothing new: adds nothing
    reference = Histogram("corsproxy_request_duration_seconds", "Time from request to last byte sent",
                          buckets=DURATION_BUCKETS, registry=(expected := CollectorRegistry()))
    for duration in durations:
        reference.observe(duration)

    def histogram(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines()
                if line.startswith("corsproxy_request_duration_seconds") and "_created" not in line]

    assert histogram(generate_latest(registry)) == histogram(generate_latest(expected))

