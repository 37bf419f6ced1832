"""``corsproxy check`` and ``corsproxy explain`` run as real subprocesses (design §2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corsproxy import __version__

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
PV = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

CONFIG = """\
upstream: {url: 'http://127.0.0.1:9000'}
rules:
  - name: public
    paths: ["/public/**"]
    allow_origins: ["*"]
  - name: app
    paths: ["/api/**"]
    allow_origins: ["https://app.example.com", "https://*.example.com"]
    allow_methods: [GET, POST, PATCH]
    allow_headers: [Content-Type, Authorization]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 600
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CORSPROXY_")}
    return subprocess.run([sys.executable, "-m", "corsproxy", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    return path


# ------------------------------------------------------------ check

BROKEN = [
    pytest.param("  - allow_origins: ['*']\n    allow_credentials: true\n", "4:5", "rules[0].allow_credentials",
                 id="credentials-with-star"),
    pytest.param("  - allow_origins: ['https://a.example/']\n", "3:21", "rules[0].allow_origins[0]",
                 id="origin-trailing-slash"),
    pytest.param("  - allow_origins: [{regex: '('}]\n", "3:21", "rules[0].allow_origins[0]", id="bad-regex"),
    pytest.param("  - allow_origins: ['*']\n    alow_methods: [GET]\n", "4:5", "rules[0].alow_methods",
                 id="misspelt-key"),
    pytest.param("  - allow_origins: []\n", "3:5", "rules[0].allow_origins", id="empty-origins"),
    pytest.param("  - allow_origins: ['*']\n    max_age: ten\n", "4:5", "rules[0].max_age", id="bad-max-age"),
    pytest.param("  - allow_origins: ['*'\n", "4:1", "YAML syntax", id="yaml-syntax"),
]


@pytest.mark.parametrize(("rules", "where", "field"), BROKEN)
def test_check_exits_2_naming_file_line_and_field(tmp_path: Path, rules: str, where: str, field: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n" + rules)
    result = run("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    first, summary = result.stderr.splitlines()
    assert first.startswith(f"{path}:{where}: {field}: ")
    assert summary == "1 error(s) in the config; fix them and run again"


def test_check_reports_every_error_at_once(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream: {url: '${NOPE}'}\nrules:\n  - allow_origins: []\n    bogus: 1\n")
    result = run("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert [line.split(": ")[0:2] for line in lines[:-1]] == [
        [f"{path}:1:12", "upstream.url"], [f"{path}:3:5", "rules[0].allow_origins"], [f"{path}:4:5", "rules[0].bogus"],
    ]
    assert lines[-1] == "3 error(s) in the config; fix them and run again"


def test_check_accepts_the_example_config(tmp_path: Path) -> None:
    result = run("check", "-c", str(EXAMPLE), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"{EXAMPLE}: OK, upstream http://127.0.0.1:9000, 2 rule(s)"
    assert result.stdout.splitlines()[1] == "  public: paths /public/**, /status; origins *; methods GET, HEAD, POST"


def test_check_json_prints_the_effective_config(tmp_path: Path, config_file: Path) -> None:
    result = run("check", "--json", "-c", str(config_file), cwd=tmp_path)
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["rules"]] == ["public", "app"]
    assert data["rules"][1]["allow_origins"] == ["https://app.example.com", "https://*.example.com"]
    assert data["rules"][0]["allow_methods"] == ["GET", "HEAD", "POST"]
    assert data["upstream"]["url"] == "http://127.0.0.1:9000"


def test_check_finds_the_config_through_the_environment_then_the_working_directory(
        tmp_path: Path, config_file: Path) -> None:
    by_env = run("check", cwd=tmp_path, env={"CORSPROXY_CONFIG": str(config_file)})
    assert (by_env.returncode, by_env.stdout.splitlines()[0]) == \
        (0, f"{config_file}: OK, upstream http://127.0.0.1:9000, 2 rule(s)")
    missing = run("check", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == ("config.yaml: cannot read the config file (No such file or directory); "
                                              "pass -c PATH or set $CORSPROXY_CONFIG")
    (tmp_path / "config.yaml").write_text(CONFIG)
    assert run("check", cwd=tmp_path).returncode == 0


# ------------------------------------------------------------ explain

def test_explain_allowed_preflight_prints_rule_verdict_and_exact_headers(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://x.example.com", "--method", "PATCH",
                 "--path", "/api/items", "--header", "Content-Type", "--header", "Authorization", "--preflight",
                 cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "request:  OPTIONS /api/items  Origin: https://x.example.com",
        f"rule:     app (rules[1], {config_file}:6)",
        "verdict:  allowed",
        "reason:   preflight allowed (rule 'app')",
        "response: 204 from the proxy (the upstream is not contacted)",
        "  Access-Control-Allow-Origin: https://x.example.com",
        "  Access-Control-Allow-Credentials: true",
        "  Access-Control-Allow-Methods: GET, POST, PATCH",
        "  Access-Control-Allow-Headers: Content-Type, Authorization",
        "  Access-Control-Max-Age: 600",
        f"  Vary: {PV}",
    ]


def test_explain_denied_preflight_exits_1_with_the_reason(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--method", "PATCH",
                 "--path", "/api/items", "--header", "X-Token", "--preflight", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "request:  OPTIONS /api/items  Origin: https://app.example.com",
        f"rule:     app (rules[1], {config_file}:6)",
        "verdict:  denied:header",
        "reason:   x-token not in allow_headers (rule 'app')",
        "response: 403 from the proxy (the upstream is not contacted)",
        f"  Vary: {PV}",
        "  Content-Type: text/plain; charset=utf-8",
        "  (body) x-token not in allow_headers (rule 'app')",
    ]


def test_explain_allowed_actual_request_prints_the_headers_added_to_the_response(
        tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--path", "/api/items",
                 cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[2:] == [
        "verdict:  allowed",
        "reason:   origin allowed (rule 'app')",
        "response: forwarded; the upstream's response gets these CORS headers:",
        "  Access-Control-Allow-Origin: https://app.example.com",
        "  Access-Control-Allow-Credentials: true",
        "  Access-Control-Expose-Headers: X-Request-Id",
        "  Vary: Origin",
    ]


def test_explain_denied_actual_request_exits_1_and_adds_only_vary(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://example.com", "--method", "POST",
                 "--path", "/api/items", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:] == [
        "verdict:  denied:origin",
        "reason:   origin https://example.com not in allow_origins (rule 'app')",
        "response: forwarded; the upstream's response gets these CORS headers:",
        "  Vary: Origin",
    ]


def test_explain_with_no_matching_rule_exits_0(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://evil.test", "--path", "/other",
                 cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "request:  GET /other  Origin: https://evil.test",
        "rule:     none matches; the request is forwarded untouched (no CORS headers added or removed)",
    ]


def test_explain_a_dot_segment_path_is_a_bad_request(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com",
                 "--path", "/public/..%2Fapi/x", cwd=tmp_path)
    assert result.returncode == 1
    assert "verdict:  bad request" in result.stdout.splitlines()


def test_explain_on_a_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n  - allow_origins: ['https://a/']\n")
    result = run("explain", "-c", str(path), "--origin", "https://a", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"{path}:3:21: rules[0].allow_origins[0]: ")


def test_explain_without_origin_is_a_usage_error(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: --origin" in result.stderr


# ------------------------------------------------------------ help and version

@pytest.mark.parametrize(("command", "words"), [
    pytest.param("serve", ["-c CONFIG, --config CONFIG", "--host HOST", "--port PORT", "--upstream URL",
                           "--workers WORKERS"], id="serve"),
    pytest.param("check", ["--strict", "--json", "-c CONFIG, --config CONFIG", "FILE:LINE:COL"], id="check"),
    pytest.param("explain", ["--origin ORIGIN", "--method METHOD", "--path PATH", "--header NAME", "--preflight",
                             "Exit 0 allowed (or no rule), 1 denied, 2 bad config."], id="explain"),
])
def test_subcommand_help(tmp_path: Path, command: str, words: list[str]) -> None:
    result = run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: corsproxy {command} ")
    flat = " ".join(result.stdout.split())
    assert [w for w in words if w not in flat] == []


def test_serve_with_a_bad_port_flag_exits_2_before_binding(tmp_path: Path, config_file: Path) -> None:
    result = run("serve", "-c", str(config_file), "--port", "70000", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["--port: expected a whole number from 0 to 65535, got 70000",
                                          "1 error(s) in the config; fix them and run again"]


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"corsproxy {__version__}\n")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: corsproxy ")
