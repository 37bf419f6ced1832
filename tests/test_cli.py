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
    pytest.param("  - allow_origins: ['*'\n", "3:24", "YAML syntax", id="yaml-syntax"),
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

def test_explain_allowed_preflight_prints_both_steps_and_exact_headers(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://x.example.com", "--method", "PATCH",
                 "--path", "/api/items", "--header", "Content-Type", "--header", "Authorization", "--preflight",
                 cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "request:  PATCH /api/items  Origin: https://x.example.com",
        "browser:  sends a preflight first: PATCH is not GET, HEAD or POST; authorization is not a CORS-safelisted "
        "header; content-type is not a CORS-safelisted header",
        "1. preflight: OPTIONS /api/items",
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
        "2. actual: PATCH /api/items",
        f"rule:     app (rules[1], {config_file}:6)",
        "verdict:  allowed",
        "reason:   origin allowed (rule 'app')",
        "response: forwarded; the upstream's response gets these CORS headers:",
        "  Access-Control-Allow-Origin: https://x.example.com",
        "  Access-Control-Allow-Credentials: true",
        "  Access-Control-Expose-Headers: X-Request-Id",
        "  Vary: Origin",
    ]


DENIED_DELETE = [
    "request:  DELETE /api/items/7  Origin: https://app.example.com",
    "browser:  sends a preflight first: DELETE is not GET, HEAD or POST",
    "1. preflight: OPTIONS /api/items/7",
    "rule:     app (rules[1], {config}:6)",
    "verdict:  denied:method",
    "reason:   method DELETE not in allow_methods (rule 'app')",
    "response: 403 from the proxy (the upstream is not contacted)",
    f"  Vary: {PV}",
    "  Content-Type: text/plain; charset=utf-8",
    "  (body) method DELETE not in allow_methods (rule 'app')",
    "2. actual: DELETE /api/items/7 is never sent: the browser stops at a failed preflight",
]


def test_explain_a_delete_is_preflighted_without_being_told_and_the_denial_exits_1(
        tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--method", "DELETE",
                 "--path", "/api/items/7", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [line.format(config=config_file) for line in DENIED_DELETE]


def test_explain_a_header_counts_without_preflight_flag(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--method", "POST",
                 "--path", "/api/items", "--header", "X-Trace", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:6] == [
        "request:  POST /api/items  Origin: https://app.example.com",
        "browser:  sends a preflight first: x-trace is not a CORS-safelisted header",
        "1. preflight: OPTIONS /api/items",
        f"rule:     app (rules[1], {config_file}:6)",
        "verdict:  denied:header",
        "reason:   x-trace not in allow_headers (rule 'app')",
    ]


@pytest.mark.parametrize(("header", "preflighted"), [
    pytest.param("Content-Type: text/plain;charset=UTF-8", False, id="text-plain-is-safelisted"),
    pytest.param("Content-Type: application/x-www-form-urlencoded", False, id="form-is-safelisted"),
    pytest.param("Content-Type: application/json", True, id="json-is-not"),
    pytest.param("Accept: application/json", False, id="accept"),
    pytest.param("Accept-Language: de-CH, de;q=0.9", False, id="accept-language"),
    pytest.param("Accept-Language: de(CH)", True, id="accept-language-with-unsafe-bytes"),
    pytest.param("Range: bytes=0-99", False, id="a-simple-range-is-safelisted"),
    pytest.param("Range: bytes=0-99,200-", True, id="a-multi-range-is-not"),
])
def test_explain_decides_preflights_from_the_fetch_safelists(tmp_path: Path, config_file: Path, header: str,
                                                             preflighted: bool) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--method", "POST",
                 "--path", "/api/items", "--header", header, cwd=tmp_path)
    second = result.stdout.splitlines()[1]
    assert second.startswith("browser:  sends a preflight first") == preflighted, second


def test_explain_takes_a_pasted_url_as_path_or_url(tmp_path: Path, config_file: Path) -> None:
    for flag in ("--path", "--url"):
        result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", flag,
                     "https://api.example.com/api/items?page=2", cwd=tmp_path)
        assert result.returncode == 0
        assert result.stdout.splitlines()[:3] == [
            "request:  GET /api/items?page=2  Origin: https://app.example.com",
            "browser:  no preflight: a simple request (GET, HEAD or POST with CORS-safelisted headers only)",
            f"rule:     app (rules[1], {config_file}:6)",
        ]


CURL = ["curl", "https://api.example.com/api/items/7", "-X", "DELETE", "-H", "accept: */*",
        "-H", "accept-language: en-US,en;q=0.9", "-H", "origin: https://app.example.com", "-H", "priority: u=1, i",
        "-H", "referer: https://app.example.com/", "-H", 'sec-ch-ua: "Chromium";v="142"', "-H", "sec-fetch-mode: cors",
        "-H", "user-agent: Mozilla/5.0", "--compressed"]


@pytest.mark.parametrize("argv", [
    pytest.param(CURL, id="split-by-the-shell"),
    pytest.param([" ".join(f"'{a}'" if " " in a or "*" in a else a for a in CURL)], id="one-quoted-argument"),
    pytest.param(["curl", "https://api.example.com/api/items/7", "-X", "OPTIONS", "-H", "origin: https://app.example.com",
                  "-H", "access-control-request-method: DELETE"], id="the-copied-preflight"),
])
def test_explain_reads_the_request_a_browser_copies_as_curl(tmp_path: Path, config_file: Path,
                                                            argv: list[str]) -> None:
    result = run("explain", "-c", str(config_file), "--", *argv, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [line.format(config=config_file) for line in DENIED_DELETE]


def test_explain_curl_with_a_body_is_a_post_and_its_content_type_counts(tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--", "curl", "https://api.example.com/api/items", "-H",
                 "Origin: https://app.example.com", "-H", "Content-Type: application/json", "--data-raw", '{"a":1}',
                 cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[:2] == [
        "request:  POST /api/items  Origin: https://app.example.com",
        "browser:  sends a preflight first: content-type: application/json is not a CORS-safelisted header",
    ]


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--", "curl", "https://api.example.com/x", "--proxy-insecure"],
                 "corsproxy explain: curl option --proxy-insecure is not one explain reads (it reads the URL, -X, -H, "
                 "--data*, -F and --compressed); drop it", id="unknown-curl-option"),
    pytest.param(["--", "curl", "https://api.example.com/x"],
                 "corsproxy explain: no Origin: give --origin ORIGIN (the page's origin, e.g. "
                 "https://app.example.com), or a copied request with an Origin header; without one it is not a CORS "
                 "request", id="no-origin"),
    pytest.param(["--origin", "https://a.example", "--url", "/x"],
                 "corsproxy explain: '/x' is not a whole URL; write e.g. https://api.example.com/api/items?id=7",
                 id="url-that-is-a-path"),
])
def test_explain_says_what_it_cannot_read_and_exits_2(tmp_path: Path, config_file: Path, args: list[str],
                                                      message: str) -> None:
    result = run("explain", "-c", str(config_file), *args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [message])


def test_explain_a_denied_preflight_passed_on_leaves_the_actual_request_to_the_upstream(tmp_path: Path) -> None:
    path = tmp_path / "forward.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n  - name: legacy\n"
                    "    allow_origins: ['https://a.example']\n    denied_preflight: forward\n")
    result = run("explain", "-c", str(path), "--origin", "https://a.example", "--method", "DELETE", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-3:] == [
        "response: forwarded; the upstream's response gets these CORS headers:",
        f"  Vary: {PV}",
        "2. actual: DELETE / is sent only if the upstream's own answer to the preflight allows it (denied_preflight: "
        "forward)"]


def test_explain_says_what_keep_does_with_the_upstreams_headers(tmp_path: Path) -> None:
    path = tmp_path / "keep.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n  - name: legacy\n"
                    "    allow_origins: ['*']\n    upstream_cors: keep\n")
    result = run("explain", "-c", str(path), "--origin", "https://a.example", cwd=tmp_path)
    assert result.stdout.splitlines()[-1] == (
        "upstream: upstream_cors: keep: the upstream's CORS headers are kept as sent when its "
        "Access-Control-Allow-Origin is * or https://a.example and it sends no Access-Control-Allow-Credentials "
        "(the rule allows none); otherwise replaced by these")


def test_explain_allowed_actual_request_prints_the_headers_added_to_the_response(
        tmp_path: Path, config_file: Path) -> None:
    result = run("explain", "-c", str(config_file), "--origin", "https://app.example.com", "--path", "/api/items",
                 cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[3:] == [
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
    assert result.stdout.splitlines()[3:] == [
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
    assert "no Origin: give --origin ORIGIN" in result.stderr


# ------------------------------------------------------------ help and version

@pytest.mark.parametrize(("command", "words"), [
    pytest.param("serve", ["-c CONFIG, --config CONFIG", "--host HOST", "--port PORT", "--upstream URL",
                           "--workers WORKERS"], id="serve"),
    pytest.param("check", ["--strict", "--json", "-c CONFIG, --config CONFIG", "FILE:LINE:COL"], id="check"),
    pytest.param("check", ["--host HOST", "--port PORT", "--upstream URL"], id="check-overrides"),
    pytest.param("explain", ["--origin ORIGIN", "--method METHOD", "--path PATH", "--url URL", "--header NAME",
                             "--preflight", "--upstream URL", "-- curl 'URL' -H 'Origin: ...'",
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


@pytest.mark.parametrize("argv", [pytest.param([], id="bare"), pytest.param(["help"], id="help")])
def test_bare_corsproxy_and_help_print_the_help(tmp_path: Path, argv: list[str]) -> None:
    result = run(*argv, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "usage: corsproxy [-h] [--version] COMMAND ..."
    commands = [line.split()[0] for line in lines if line.startswith("    ")]
    assert commands == ["serve", "check", "explain", "suggest", "demo", "init"]


def test_help_with_a_command_prints_that_commands_help(tmp_path: Path) -> None:
    result = run("help", "check", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: corsproxy check ")


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run("serv", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'serv'" in result.stderr


# ------------------------------------------------------------ overriding flags and init

def test_check_and_explain_take_upstream_for_a_file_without_one(tmp_path: Path) -> None:
    path = tmp_path / "no-upstream.yaml"
    path.write_text("rules:\n  - name: app\n    allow_origins: [https://app.example.com]\n")
    checked = run("check", "-c", str(path), "--upstream", "http://127.0.0.1:9001/v1", "--port", "8181",
                  "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    effective = json.loads(checked.stdout)
    assert (effective["upstream"]["url"], effective["listen"]["port"]) == ("http://127.0.0.1:9001/v1", 8181)
    explained = run("explain", "-c", str(path), "--upstream", "http://127.0.0.1:9001", "--origin",
                    "https://app.example.com", cwd=tmp_path)
    assert explained.returncode == 0 and "verdict:  allowed" in explained.stdout.splitlines()
    missing = run("check", "-c", str(path), cwd=tmp_path)
    assert missing.stderr.splitlines() == [
        f"{path}:1:1: upstream: 'upstream' is required: add upstream: {{url: http://127.0.0.1:9000}} (or pass "
        "--upstream URL)", "1 error(s) in the config; fix them and run again"]


def test_a_bad_upstream_flag_is_reported_as_the_flags_error(tmp_path: Path, config_file: Path) -> None:
    result = run("check", "-c", str(config_file), "--upstream", "ftp://x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("--upstream: 'ftp://x' must be an http:// or https:// URL with a host, "
                                             "e.g. http://127.0.0.1:9000")


@pytest.mark.parametrize("preset", ["spa-dev", "public-api", "saas", "legacy"])
def test_every_init_preset_passes_check_strict(tmp_path: Path, preset: str) -> None:
    printed = run("init", "--preset", preset, cwd=tmp_path)
    assert printed.returncode == 0
    assert printed.stdout.startswith(f'# corsproxy preset "{preset}": ')
    path = tmp_path / "config.yaml"
    path.write_text(printed.stdout)
    checked = run("check", "--strict", "-c", str(path), cwd=tmp_path)
    assert (checked.returncode, checked.stderr) == (0, "")


def test_init_without_a_preset_prints_the_spa_dev_one_and_a_wrong_name_lists_them(tmp_path: Path) -> None:
    assert run("init", cwd=tmp_path).stdout == run("init", "--preset", "spa-dev", cwd=tmp_path).stdout
    wrong = run("init", "--preset", "spa", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "invalid choice: 'spa' (choose from 'spa-dev', 'public-api', 'saas', 'legacy')" in wrong.stderr
