"""allow_origins from a file and from the environment (design §3): read, checked like inline entries,
every error at once as FILE:LINE:COL of the origins file, linted, counted by check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corsproxy import config as cfg
from corsproxy.cli import main
from corsproxy.config import ConfigError
from corsproxy.lint import lint

HEAD = "upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n"
ORIGINS = """# customers' custom domains
https://shop.customer-a.com

   https://portal.customer-b.io   # indented, with a comment
https://*.tenants.example.com
http://localhost:*
"""


def write(folder: Path, config: str, origins: str | None = ORIGINS, name: str = "origins.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if origins is not None:
        (folder / name).write_text(origins, encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def rule(origins: str, extra: str = "") -> str:
    return HEAD + f"  - name: app\n    allow_origins:\n{origins}{extra}"


def issues(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        cfg.load(path, env=env or {})
    return [issue.replace(str(path.parent) + os.sep, "") for issue in exc.value.issues]


def test_a_file_adds_its_entries_to_the_inline_ones_relative_to_the_config_folder(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    path = write(tmp_path / "etc", rule("      - https://app.example.com\n      - {file: origins.txt}\n"))
    monkeypatch.chdir(tmp_path)  # not the config's folder: the path is still found
    config = cfg.load(Path("etc/config.yaml"), env={})
    origins = config.rules[0].origins
    allowed = ["https://app.example.com", "https://shop.customer-a.com", "https://portal.customer-b.io",
               "https://x.tenants.example.com", "http://localhost:5173", "HTTPS://SHOP.customer-a.com:443"]
    denied = ["https://tenants.example.com", "https://customer-a.com", "https://evil.io", "null"]
    assert [o for o in allowed + denied if origins.allows(o)] == allowed
    assert config.origin_files == (os.path.join("etc", "origins.txt"),)
    source = config.rules[0].origin_sources[0]
    assert (source.index, source.kind, source.name, list(source.lines)) == (1, "file", "origins.txt", [2, 4, 5, 6])
    assert path.exists()


@pytest.mark.parametrize("value", ["https://a.example.com,https://b.example.com",
                                   " https://a.example.com \n\thttps://b.example.com ",
                                   "https://a.example.com, https://b.example.com,"], ids=["commas", "spaces", "both"])
def test_an_environment_variable_holds_entries_separated_by_commas_or_whitespace(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, rule("      - {env: CORS_ORIGINS}\n"), origins=None)
    config = cfg.load(path, env={"CORS_ORIGINS": value})
    assert config.rules[0].origins.exact == frozenset({"https://a.example.com", "https://b.example.com"})
    assert config.origin_files == ()


@pytest.mark.parametrize("env, state", [({}, "is not set"), ({"CORS_ORIGINS": " , "}, "is empty")],
                         ids=["unset", "empty"])
def test_an_unset_or_empty_variable_is_an_error_naming_it(tmp_path: Path, env: dict[str, str], state: str) -> None:
    path = write(tmp_path, rule("      - {env: CORS_ORIGINS}\n"), origins=None)
    assert issues(path, env) == [
        f"config.yaml:5:9: rules[0].allow_origins[0]: environment variable $CORS_ORIGINS {state}; export it with the "
        "allowed origins, separated by commas or spaces (e.g. 'https://a.example.com,https://b.example.com')"]


def test_every_bad_line_of_an_origins_file_is_reported_at_its_own_line_and_column(tmp_path: Path) -> None:
    bad = ("https://ok.example.com\n  https://a.example.com/   # trailing slash\nhttps://a.com https://b.com\n"
           "{regex: '^https://x$'}\nhttps://*.example.com:99999\nsmtp://*.example.com\n")
    path = write(tmp_path, rule("      - {file: origins.txt}\n      - https://inline.example.com/\n"), bad)
    assert issues(path) == [
        "origins.txt:2:3: rules[0].allow_origins[0]: 'https://a.example.com/' has a path, query or trailing '/'; "
        "an origin is scheme://host[:port]: write 'https://a.example.com'",
        "origins.txt:3:15: rules[0].allow_origins[0]: 'https://a.com https://b.com' holds more than one entry; "
        "write one origin a line",
        "origins.txt:4:9: rules[0].allow_origins[0]: \"{regex: '^https://x$'}\" holds more than one entry; "
        "write one origin a line",
        "origins.txt:5:1: rules[0].allow_origins[0]: 'https://*.example.com:99999': port 99999 is out of range 1-65535",
        "origins.txt:6:1: rules[0].allow_origins[0]: 'smtp://*.example.com': wildcards are for http/https origins "
        "only; list smtp:// origins exactly",
        "config.yaml:6:9: rules[0].allow_origins[1]: 'https://inline.example.com/' has a path, query or trailing "
        "'/'; an origin is scheme://host[:port]: write 'https://inline.example.com'",
    ]


def test_a_regex_in_a_file_is_refused_with_where_to_write_it(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: origins.txt}\n"), "^https://pr-[0-9]+\\.example\\.dev$\n")
    assert issues(path) == [
        "origins.txt:1:1: rules[0].allow_origins[0]: '^https://pr-[0-9]+\\\\.example\\\\.dev$': a file or variable "
        "holds origins, not patterns; write {regex: '...'} in the config's allow_origins instead"]


def test_a_missing_file_is_an_error_and_is_still_listed_so_a_reload_watches_for_it(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: missing.txt}\n"), origins=None)
    with pytest.raises(ConfigError) as exc:
        cfg.load(path, env={})
    assert exc.value.issues == [
        f"{path}:5:9: rules[0].allow_origins[0]: cannot read origins file '{tmp_path / 'missing.txt'}' (No such file "
        "or directory); the path is relative to the config file's folder"]
    assert exc.value.files == (str(tmp_path / "missing.txt"),)


@pytest.mark.parametrize("entry, message", [
    ("{file: a.txt, env: B}", "write {file: customer-origins.txt} or {env: CORS_ORIGINS}: one key, a non-empty name"),
    ("{file: ''}", "write {file: customer-origins.txt} or {env: CORS_ORIGINS}: one key, a non-empty name"),
], ids=["two-keys", "empty-name"])
def test_a_malformed_source_entry_says_how_to_write_it(tmp_path: Path, entry: str, message: str) -> None:
    path = write(tmp_path, rule(f"      - {entry}\n"), origins=None)
    assert issues(path) == [f"config.yaml:5:9: rules[0].allow_origins[0]: {message}"]


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: origins.txt}\n"), "# nobody yet\n\n")
    assert issues(path) == [f"config.yaml:5:9: rules[0].allow_origins[0]: origins file '{path.parent}/origins.txt' "
                            "lists no origin; add one a line, or remove the entry".replace(f"{path.parent}/", "")]


def test_a_star_in_a_file_with_credentials_is_the_same_error_as_inline(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: origins.txt}\n", "    allow_credentials: true\n"), "*\n")
    assert issues(path) == [
        "config.yaml:6:5: rules[0].allow_credentials: allow_credentials: true with allow_origins \"*\" would let every "
        "site read its users' authenticated responses; list the allowed origins instead of \"*\""]


def test_a_file_of_mostly_bad_lines_reports_fifty_and_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: origins.txt}\n"), "".join(f"host{i}.example.com\n" for i in range(80)))
    found = issues(path)
    assert len(found) == 51
    assert found[0].startswith("origins.txt:1:1: rules[0].allow_origins[0]: 'host0.example.com' has no scheme")
    assert found[-1] == ("origins.txt: rules[0].allow_origins[0]: 30 more bad lines not shown; is this the right "
                         "file?")


def test_defaults_may_take_origins_from_a_file(tmp_path: Path) -> None:
    text = ("upstream: {url: 'http://127.0.0.1:9000'}\ndefaults:\n  allow_origins: [{file: origins.txt}]\n"
            "rules:\n  - paths: ['/a/**']\n  - paths: ['/b/**']\n")
    config = cfg.load(write(tmp_path, text), env={})
    assert [r.origins.allows("https://shop.customer-a.com") for r in config.rules] == [True, True]
    assert [len(r.origin_sources) for r in config.rules] == [1, 1]


def test_the_config_digest_changes_with_the_origins_file(tmp_path: Path) -> None:
    path = write(tmp_path, rule("      - {file: origins.txt}\n"))
    before = cfg.load(path, env={}).sha256
    (tmp_path / "origins.txt").write_text(ORIGINS + "https://new.example.com\n")
    assert cfg.load(path, env={}).sha256 != before


def test_lint_checks_file_and_variable_entries_naming_the_file_and_line(tmp_path: Path) -> None:
    risky = "https://fine.example.com\nnull\nhttp://shop.example.net\nhttps://*.co.uk\n"
    path = write(tmp_path, rule("      - {file: origins.txt}\n      - {env: MORE}\n",
                                "    allow_credentials: true\n"), risky)
    config = cfg.load(path, env={"MORE": "https://ok.example.com null"})
    origins = str(tmp_path / "origins.txt")
    assert lint(config) == [
        f"{origins}:2: warning: rules[0].allow_origins[0]: 'null' is the origin of sandboxed frames and file: pages, "
        "which any site can create; allow it only if you must",
        f"{origins}:3: warning: rules[0].allow_origins[0]: 'http://shop.example.net' is plain http:// with "
        "allow_credentials: anyone on the network path can impersonate it and read users' authenticated responses; "
        "use https:// (only localhost is exempt)",
        f"{origins}:4: warning: rules[0].allow_origins[0]: 'https://*.co.uk' admits every site under a public suffix: "
        "anyone can register one and read your API from it; name your own domain, e.g. 'https://*.example.com'",
        f"{path}:6: warning: rules[0].allow_origins[1] ($MORE entry 2): 'null' is the origin of sandboxed frames and "
        "file: pages, which any site can create; allow it only if you must",
    ]


def test_check_prints_a_count_of_the_file_not_every_entry(tmp_path: Path, capsys) -> None:
    many = "".join(f"https://c{i}.example.com\n" for i in range(5000))
    path = write(tmp_path, rule("      - https://app.example.com\n      - {file: origins.txt}\n"), many)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "origins https://app.example.com, file origins.txt (5000 origins); methods GET, HEAD, POST" in out
    assert len(out.splitlines()) == 2


def test_the_wildcard_index_admits_exactly_what_trying_each_wildcard_would() -> None:
    from corsproxy.origins import compile_origins

    entries = ["https://*.example.com:8443", "https://*.example.com", "http://localhost:*", "https://*.a.b.example.org",
               *(f"https://*.t{i}.saas.net" for i in range(1000))]
    origins = compile_origins(entries)
    probes = {"https://x.example.com": True, "https://x.example.com:8443": True, "https://x.example.com:9": False,
              "https://example.com": False, "https://evil-example.com": False, "http://localhost:3000": True,
              "http://localhost": True, "https://localhost": False, "https://c.a.b.example.org": True,
              "https://a.b.example.org": False, "https://z.t999.saas.net": True, "https://t999.saas.net": False,
              "https://x.example.com.evil.com": False, "http://x.example.com": False}
    assert {origin: origins.allows(origin) for origin in probes} == probes
    assert {origin: any(w.matches(parse) for w in origins.wildcards) if (parse := _parse(origin)) else False
            for origin in probes} == probes


def _parse(origin: str):
    from corsproxy.origins import parse_origin

    return parse_origin(origin)
