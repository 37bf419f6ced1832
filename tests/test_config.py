"""config: YAML written to tmp_path, loaded, and every error asserted as its exact line (design §2, §3)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from corsproxy import config as cfg
from corsproxy.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HEAD = "upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n"
CREDS_STAR = ('allow_credentials: true with allow_origins "*" would let every site read its users\' authenticated '
              'responses; list the allowed origins instead of "*"')
RULE_KEYS = ("name, paths, allow_origins, allow_methods, allow_headers, expose_headers, allow_credentials, max_age, "
             "allow_private_network, timing_allow_origin, cross_origin_resource_policy, disallowed_origin, mode, "
             "upstream_cors, denied_preflight")
TOP_KEYS = "listen, upstream, limits, admin, logging, debug, defaults, rules"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        cfg.load(path, env={} if env is None else env)
    assert str(exc.value) == "\n".join(exc.value.issues)
    return [issue.replace(str(path), "FILE") for issue in exc.value.issues]


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> cfg.Config:
    return cfg.load(write(tmp_path, text), env={} if env is None else env)


BROKEN = [
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_credentials: true\n",
                 [f"FILE:4:5: rules[0].allow_credentials: {CREDS_STAR}"], id="credentials-with-star"),
    pytest.param(HEAD + "  - allow_origins:\n      - https://app.example.com/api\n",
                 ["FILE:4:9: rules[0].allow_origins[0]: 'https://app.example.com/api' has a path, query or trailing "
                  "'/'; an origin is scheme://host[:port]: write 'https://app.example.com'"], id="origin-with-path"),
    pytest.param(HEAD + "  - allow_origins: ['https://app.example.com/']\n",
                 ["FILE:3:21: rules[0].allow_origins[0]: 'https://app.example.com/' has a path, query or trailing '/'; "
                  "an origin is scheme://host[:port]: write 'https://app.example.com'"], id="origin-trailing-slash"),
    pytest.param(HEAD + "  - allow_origins:\n      - regex: '^https://(a|b\\.example\\.com$'\n",
                 ["FILE:4:9: rules[0].allow_origins[0]: regex '^https://(a|b\\\\.example\\\\.com$' does not compile: "
                  "missing ), unterminated subpattern at position 9; fix the pattern (Python re syntax)"],
                 id="bad-regex"),
    pytest.param(HEAD + "  - paths: ['/api/**']\n    alow_origins: ['https://app.example.com']\n",
                 ["FILE:3:5: rules[0]: 'allow_origins' is required (here or under defaults:), e.g. allow_origins: "
                  "[\"https://app.example.com\"]",
                  f"FILE:4:5: rules[0].alow_origins: unknown key 'alow_origins' (did you mean 'allow_origins'?); "
                  f"allowed: {RULE_KEYS}"], id="misspelt-key-did-you-mean"),
    pytest.param("upstream:\n  host_header: upstream\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:1: upstream.url: 'url' is required; add url: http://127.0.0.1:9000 (the API behind the "
                  "proxy)"], id="missing-upstream-url"),
    pytest.param("rules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:1: upstream: 'upstream' is required: add upstream: {url: http://127.0.0.1:9000} (or pass "
                  "--upstream URL)"],
                 id="missing-upstream"),
    pytest.param("upstream:\n  url: ${UPSTREAM_URL}\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:2:3: upstream.url: environment variable ${UPSTREAM_URL} is not set; export it or write "
                  "${UPSTREAM_URL:-default}"], id="unset-variable"),
    pytest.param("upstream:\n  url: ${SCHEME}://${HOST}:9000\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:2:3: upstream.url: environment variable ${SCHEME}, ${HOST} is not set; export it or write "
                  "${SCHEME:-default}"], id="two-unset-variables-in-one-value"),
    pytest.param(HEAD + "  - name: api\n    allow_origins: []\n",
                 ["FILE:4:5: rules[0].allow_origins: an empty list allows nothing; list origins (e.g. "
                  "[\"https://app.example.com\"]) or remove the rule"], id="empty-allow-origins"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_methods: []\n",
                 ["FILE:4:5: rules[0].allow_methods: an empty list allows no method; list them (e.g. [GET, POST]) or "
                  "leave the field out for the default [GET, HEAD, POST]"], id="empty-allow-methods"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\nlimits:\n  max_body_size: 10MB\nrules:\n"
                 "  - allow_origins: ['*']\n",
                 ["FILE:3:3: limits.max_body_size: expected bytes as a whole number or with KiB/MiB/GiB (e.g. 10MiB), "
                  "got '10MB'"], id="bad-max-body-size"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\nlimits:\n  header_timeout: 0\nrules:\n"
                 "  - allow_origins: ['*']\n",
                 ["FILE:3:3: limits.header_timeout: expected a number of seconds >= 0.1, got 0"],
                 id="zero-header-timeout"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\nlimits:\n  min_data_rate: fast\nrules:\n"
                 "  - allow_origins: ['*']\n",
                 ["FILE:3:3: limits.min_data_rate: expected bytes per second >= 1 (e.g. 240), or null for no "
                  "minimum, got 'fast'"], id="bad-min-data-rate"),
    pytest.param(HEAD + "  - allow_origins:\n      - https://a.example\n      - null\n",
                 ["FILE:5:9: rules[0].allow_origins[1]: expected an origin string or {regex: '...'}, got None (an "
                  "unquoted null is YAML's empty value: write 'null' in quotes)"], id="unquoted-null-origin"),
    pytest.param(HEAD + "  - allow_origins: ['https://app.*.example.com']\n",
                 ["FILE:3:21: rules[0].allow_origins[0]: 'https://app.*.example.com': '*' may only stand as whole "
                  "leading labels ('https://*.example.com') or as the port ('http://localhost:*'); for anything else "
                  "use {regex: '...'}"], id="wildcard-in-the-wrong-place"),
    pytest.param(HEAD + "  - allow_origins: ['*']\nloging:\n  level: debug\n",
                 [f"FILE:4:1: loging: unknown key 'loging' (did you mean 'logging'?); allowed: {TOP_KEYS}"],
                 id="unknown-top-level-key"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    max_age: 10\n    max_age: 20\n",
                 ["FILE:5:5: rules[0].max_age: 'max_age' is given twice; keep one"], id="duplicate-key"),
    pytest.param(HEAD + "  - allow_origins: ['*'\n    max_age: 10\n",
                 ["FILE:3:24: YAML syntax: expected ',' or ']', but got '<scalar>' (while parsing a flow sequence "
                  "opened at line 3, column 20); check indentation and quoting there"], id="yaml-syntax-error"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\nrules:\n  - name: 'x\n",
                 ["FILE:3:13: YAML syntax: found unexpected end of stream (while scanning a quoted scalar opened at "
                  "line 3, column 11); check indentation and quoting there"], id="yaml-unclosed-quote"),
    pytest.param("rules:\n  - name: x\n   bad: 1\n",
                 ["FILE:3:4: YAML syntax: expected <block end>, but found '<block mapping start>'; check indentation "
                  "and quoting there"], id="yaml-bad-indentation-stays-on-its-line"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_methods: [GET, delete]\n",
                 ["FILE:4:26: rules[0].allow_methods[1]: browsers always send DELETE in uppercase; write 'DELETE'"],
                 id="lowercase-standard-method"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_methods: [put, GET, 'PO ST', 5]\n",
                 ["FILE:4:21: rules[0].allow_methods[0]: browsers always send PUT in uppercase; write 'PUT'",
                  "FILE:4:31: rules[0].allow_methods[2]: 'PO ST' is not a valid method name (letters, digits, "
                  "-_!#$%&'*+.^`|~)",
                  "FILE:4:40: rules[0].allow_methods[3]: 5 is not a valid method name (letters, digits, "
                  "-_!#$%&'*+.^`|~)"], id="every-bad-method-at-once"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_methods: [GET, '*']\n",
                 ["FILE:4:26: rules[0].allow_methods[1]: '*' cannot be mixed with names; write methods: \"*\" alone"],
                 id="star-mixed-with-methods"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    allow_headers: [Content-Type, 'X Bad']\n",
                 ["FILE:4:35: rules[0].allow_headers[1]: 'X Bad' is not a valid header name (letters, digits, "
                  "-_!#$%&'*+.^`|~)"], id="bad-header-name"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    disallowed_origin: rejct\n",
                 ["FILE:4:5: rules[0].disallowed_origin: expected one of forward, reject, got 'rejct' (did you mean "
                  "'reject'?)"], id="bad-choice-did-you-mean"),
    pytest.param("listen:\n  port: 70000\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:3: listen.port: expected a whole number from 0 to 65535, got 70000"], id="port-out-of-range"),
    pytest.param("listen:\n  port: !!int eighty\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:3: listen.port: cannot read 'eighty' as tag:yaml.org,2002:int; drop the '!!' tag or fix "
                  "the value"], id="bad-explicit-tag"),
    pytest.param("listen:\n  port: !!python/name:os.system x\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:3: listen.port: cannot read 'x' as tag:yaml.org,2002:python/name:os.system; drop the '!!' "
                  "tag or fix the value"], id="python-tag-is-never-run"),
    pytest.param("upstream: {url: 'ftp://127.0.0.1'}\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:12: upstream.url: 'ftp://127.0.0.1' must be an http:// or https:// URL with a host, e.g. "
                  "http://127.0.0.1:9000"], id="upstream-not-http"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000/v1?x=1'}\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:12: upstream.url: 'http://127.0.0.1:9000/v1?x=1' may carry a base path but no query or "
                  "fragment; drop from '?' or '#' on"], id="upstream-with-query"),
    pytest.param("upstream: {url: 'http://bob:s3cret@127.0.0.1:9000/v1'}\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:12: upstream.url: 'http://bob:***@127.0.0.1:9000/v1' carries a user name and password; "
                  "corsproxy does not authenticate to the upstream and would never send them: remove 'bob:...@' (let "
                  "the upstream trust the proxy's network, or have the client send its own Authorization header)"],
                 id="upstream-with-password"),
    pytest.param("upstream: {url: 'https://bob:p@ss@api?x=1'}\nrules:\n  - allow_origins: ['*']\n",
                 ["FILE:1:12: upstream.url: 'https://bob:***@api?x=1' carries a user name and password; corsproxy "
                  "does not authenticate to the upstream and would never send them: remove 'bob:...@' (let the "
                  "upstream trust the proxy's network, or have the client send its own Authorization header)"],
                 id="upstream-with-password-and-other-faults"),
    pytest.param(HEAD + "  - allow_origins: ['*']\n    paths: [api/**]\n",
                 ["FILE:4:13: rules[0].paths[0]: path pattern 'api/**' must start with '/': write '/api/**'"],
                 id="path-without-slash"),
    pytest.param(HEAD + "  - {name: api, allow_origins: ['*'], paths: ['/a']}\n"
                 "  - {name: api, allow_origins: ['*'], paths: ['/b']}\n",
                 ["FILE:4:6: rules[1].name: rule name 'api' is already used by rules[0]; names must differ"],
                 id="duplicate-rule-name"),
    pytest.param(HEAD + "  - {name: api, allow_origins: ['https://a/'], paths: ['/a']}\n"
                 "  - {name: api, allow_origins: ['*'], alow_methods: [GET]}\n",
                 ["FILE:3:33: rules[0].allow_origins[0]: 'https://a/' has a path, query or trailing '/'; an origin is "
                  "scheme://host[:port]: write 'https://a'",
                  "FILE:4:6: rules[1].name: rule name 'api' is already used by rules[0]; names must differ",
                  "FILE:4:39: rules[1].alow_methods: unknown key 'alow_methods' (did you mean 'allow_methods'?); "
                  f"allowed: {RULE_KEYS}"],
                 id="duplicate-rule-name-with-the-other-errors-at-once"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\n",
                 ["FILE:1:1: rules: expected a non-empty list of rules, e.g. - {paths: ['/**'], allow_origins: "
                  "[...]}"], id="no-rules"),
    pytest.param("", ["FILE:1:1: upstream: 'upstream' is required: add upstream: {url: http://127.0.0.1:9000} (or pass "
                  "--upstream URL)",
                      "FILE:1:1: rules: expected a non-empty list of rules, e.g. - {paths: ['/**'], allow_origins: "
                      "[...]}"], id="empty-file"),
    pytest.param("- a\n", ["FILE:1:1: (top level): the config must be a mapping with upstream: and rules: (see "
                           "config.example.yaml)"], id="not-a-mapping"),
    pytest.param("upstream: {url: 'http://127.0.0.1:9000'}\ndefaults:\n  allow_origins: ['*']\n"
                 "  allow_credentials: true\nrules:\n  - paths: ['/a/**']\n  - paths: ['/b/**']\n",
                 [f"FILE:4:3: defaults.allow_credentials: {CREDS_STAR}"], id="credentials-with-star-in-defaults-once"),
    pytest.param("listen:\n  tls: {cert: /nonexistent/cert.pem}\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:3: listen.tls.key: 'key' is required; add key: key.pem (the PEM private key)",
                  "FILE:2:9: listen.tls.cert: cannot read file '/nonexistent/cert.pem'; give a path that exists and "
                  "is readable (a relative path is taken from the config file's folder)"], id="tls-half-given"),
    pytest.param("listen:\n  trusted_proxies: [10.0.0.0/8, 10, 300.1.1.1]\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:33: listen.trusted_proxies[1]: 10 is not an address; write addresses or CIDRs such as "
                  "10.0.0.0/8",
                  "FILE:2:37: listen.trusted_proxies[2]: '300.1.1.1' does not appear to be an IPv4 or IPv6 network; "
                  "write addresses or CIDRs such as 10.0.0.0/8"], id="bad-trusted-proxies"),
    pytest.param("listen: {port: 8080}\nadmin: {port: 8080}\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:2:9: admin.port: the admin listener cannot share port 8080 with listen.port; give it another "
                  "port (default 9901) or admin: null"], id="admin-port-clash"),
    pytest.param(HEAD + "  - &x\n    allow_origins: ['*']\n    paths: [*x]\n",
                 ["FILE:3:5: rules[0].paths[0]: this alias refers to a list or mapping that contains it; write the "
                  "values out"], id="alias-loop"),
    pytest.param(HEAD + "  - &x\n    allow_origins: ['*']\n    <<: *x\n",
                 ["FILE:3:5: rules[0]: '<<' merges a mapping that contains it; write the values out"],
                 id="merge-loop"),
    pytest.param(HEAD + "  - {name: 'app; verdict=allowed', allow_origins: ['*']}\n",
                 ["FILE:3:6: rules[0].name: 'app; verdict=allowed': a rule name is printable ASCII without \" , ; = \\ "
                  "(it appears in headers and logs), e.g. 'app-v2'"], id="rule-name-that-would-forge-a-header"),
    pytest.param("? [a, b]\n: 1\n" + HEAD + "  - allow_origins: ['*']\n",
                 ["FILE:1:3: (top level): a key must be a plain name such as 'allow_origins'"], id="non-scalar-key"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_config_reports_the_exact_error_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert errors(tmp_path, text) == expected


def test_every_error_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = (
        "listen:\n"                                     # 1
        "  port: http\n"                                # 2
        "upstream:\n"                                   # 3
        "  url: ${UP}\n"                                # 4
        "rules:\n"                                      # 5
        "  - name: app\n"                               # 6
        "    alow_origins: [x]\n"                       # 7
        "    allow_origins:\n"                          # 8
        "      - https://app.example.com/\n"            # 9
        "      - https://*.example.com\n"               # 10
        "      - {regex: '['}\n"                        # 11
        "    allow_methods: []\n"                       # 12
        "    max_age: -1\n"                             # 13
        "  - allow_origins: ['*']\n"                    # 14
        "    allow_credentials: true\n"                 # 15
        "extra: 1\n"                                    # 16
    )
    assert errors(tmp_path, text) == [
        "FILE:2:3: listen.port: expected a whole number from 0 to 65535, got 'http'",
        "FILE:4:3: upstream.url: environment variable ${UP} is not set; export it or write ${UP:-default}",
        f"FILE:7:5: rules[0].alow_origins: unknown key 'alow_origins' (did you mean 'allow_origins'?); "
        f"allowed: {RULE_KEYS}",
        "FILE:9:9: rules[0].allow_origins[0]: 'https://app.example.com/' has a path, query or trailing '/'; an origin "
        "is scheme://host[:port]: write 'https://app.example.com'",
        "FILE:11:9: rules[0].allow_origins[2]: regex '[' does not compile: unterminated character set at position 0; "
        "fix the pattern (Python re syntax)",
        "FILE:12:5: rules[0].allow_methods: an empty list allows no method; list them (e.g. [GET, POST]) or leave the "
        "field out for the default [GET, HEAD, POST]",
        "FILE:13:5: rules[0].max_age: expected a whole number from 0 to 2147483647, got -1",
        f"FILE:15:5: rules[1].allow_credentials: {CREDS_STAR}",
        f"FILE:16:1: extra: unknown key 'extra'; allowed: {TOP_KEYS}",
    ]


def test_unreadable_file_names_the_way_to_point_at_another(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        cfg.load(missing, env={})
    assert exc.value.issues == [f"{missing}: cannot read the config file (No such file or directory); pass -c PATH "
                                "or set $CORSPROXY_CONFIG"]


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + b"  - allow_origins: ['https://caf\xe9.example']\n")
    with pytest.raises(ConfigError) as exc:
        cfg.load(path, env={})
    assert exc.value.issues == [f"{path}: the config file is not UTF-8 text; save it as UTF-8"]


# ------------------------------------------------------------ ${VAR} expansion and typing

ENV_TEXT = (
    "listen:\n"
    "  host: ${HOST}\n"
    "  port: ${PORT:-8080}\n"
    "  drain_timeout: ${DRAIN:-2.5}\n"
    "upstream:\n"
    "  url: ${UP_SCHEME:-http}://${UP_HOST}:9000/v1\n"
    "  tls_verify: ${VERIFY:-false}\n"
    "limits:\n"
    "  max_body_size: ${MAX:-1KiB}\n"
    "rules:\n"
    "  - name: '${NAME:-8080}'\n"
    "    allow_origins: ['${ORIGIN}']\n"
    "    max_age: ${MAX_AGE:-null}\n"
)


def test_variables_and_defaults_expand_and_plain_scalars_are_typed_after(tmp_path: Path) -> None:
    config = load(tmp_path, ENV_TEXT, {"HOST": "0.0.0.0", "UP_HOST": "10.0.0.1", "ORIGIN": "https://a.example"})
    assert (config.listen.host, config.listen.port, config.listen.drain_timeout) == ("0.0.0.0", 8080, 2.5)
    assert (config.upstream.url, config.upstream.tls_verify) == ("http://10.0.0.1:9000/v1", False)
    assert config.limits.max_body_size == 1024
    rule = config.rules[0]
    # a quoted scalar stays a string even when it looks like a number
    assert (rule.name, rule.allow_origins, rule.max_age) == ("8080", ("https://a.example",), None)


def test_set_variables_win_over_defaults(tmp_path: Path) -> None:
    env = {"HOST": "::", "PORT": "9090", "UP_HOST": "u", "UP_SCHEME": "https", "ORIGIN": "null", "MAX_AGE": "60",
           "NAME": "api", "VERIFY": "true", "MAX": "2MiB", "DRAIN": "1"}
    config = load(tmp_path, ENV_TEXT, env)
    assert (config.listen.host, config.listen.port, config.listen.drain_timeout) == ("::", 9090, 1.0)
    assert (config.upstream.url, config.upstream.tls_verify) == ("https://u:9000/v1", True)
    assert config.limits.max_body_size == 2 * 1024**2
    assert (config.rules[0].name, config.rules[0].allow_origins, config.rules[0].max_age) == ("api", ("null",), 60)


def test_a_variable_holding_yaml_syntax_stays_one_plain_string(tmp_path: Path) -> None:
    config = load(tmp_path, "listen:\n  host: ${H}\n" + HEAD + "  - allow_origins: ['*']\n", {"H": "[a, {b: c}]"})
    assert config.listen.host == "[a, {b: c}]"


def test_a_quoted_variable_for_a_number_field_is_a_string_error(tmp_path: Path) -> None:
    text = "listen:\n  port: '${PORT:-8080}'\n" + HEAD + "  - allow_origins: ['*']\n"
    assert errors(tmp_path, text) == ["FILE:2:3: listen.port: expected a whole number from 0 to 65535, got '8080'"]


def test_an_unset_variable_is_reported_once_not_again_as_a_bad_value(tmp_path: Path) -> None:
    text = "listen:\n  host: ${H}\n  port: ${P}\n" + HEAD + "  - allow_origins: ['${O}', '${O}']\n"
    assert errors(tmp_path, text) == [
        "FILE:2:3: listen.host: environment variable ${H} is not set; export it or write ${H:-default}",
        "FILE:3:3: listen.port: environment variable ${P} is not set; export it or write ${P:-default}",
        "FILE:6:21: rules[0].allow_origins[0]: environment variable ${O} is not set; export it or write ${O:-default}",
        "FILE:6:29: rules[0].allow_origins[1]: environment variable ${O} is not set; export it or write ${O:-default}",
    ]


# ------------------------------------------------------------ defaults, hosts, overrides, describe

def test_rule_fields_have_the_documented_defaults(tmp_path: Path) -> None:
    rule = load(tmp_path, HEAD + "  - allow_origins: ['https://a.example']\n").rules[0]
    assert (rule.name, rule.index, rule.paths.patterns) == ("rules[0]", 0, ("/**",))
    assert (rule.allow_methods, rule.allow_headers, rule.expose_headers) == (("GET", "HEAD", "POST"), (), ())
    assert (rule.allow_credentials, rule.max_age, rule.allow_private_network, rule.timing_allow_origin) == \
        (False, 600, False, False)
    assert (rule.disallowed_origin, rule.mode, rule.upstream_cors, rule.denied_preflight) == \
        ("forward", "enforce", "replace", "reject")


def test_rules_inherit_defaults_unless_they_set_the_field(tmp_path: Path) -> None:
    text = (
        "upstream: {url: 'http://127.0.0.1:9000'}\n"
        "defaults:\n"
        "  allow_origins: ['https://app.example.com']\n"
        "  allow_methods: [GET, PUT]\n"
        "  allow_credentials: true\n"
        "  max_age: 30\n"
        "rules:\n"
        "  - paths: ['/a/**']\n"
        "  - paths: ['/b/**']\n"
        "    name: b\n"
        "    allow_origins: ['https://b.example.com']\n"
        "    allow_methods: '*'\n"
        "    max_age: null\n"
    )
    a, b = load(tmp_path, text).rules
    assert (a.name, a.allow_origins, a.allow_methods, a.allow_credentials, a.max_age) == \
        ("rules[0]", ("https://app.example.com",), ("GET", "PUT"), True, 30)
    assert a.origins.allows("https://app.example.com") and not a.origins.allows("https://b.example.com")
    assert (b.name, b.allow_origins, b.allow_methods, b.allow_credentials, b.max_age) == \
        ("b", ("https://b.example.com",), ("*",), True, None)
    assert b.origins.allows("https://b.example.com") and not b.origins.allows("https://app.example.com")


def test_listen_and_admin_hosts_default_to_the_environment_then_loopback(tmp_path: Path) -> None:
    text = HEAD + "  - allow_origins: ['*']\n"
    plain = load(tmp_path, text)
    assert (plain.listen.host, plain.admin) == ("127.0.0.1", cfg.AdminConfig("127.0.0.1", 9901))
    docker = load(tmp_path, text, {"CORSPROXY_HOST": "0.0.0.0", "CORSPROXY_ADMIN_HOST": "0.0.0.0"})
    assert (docker.listen.host, docker.admin) == ("0.0.0.0", cfg.AdminConfig("0.0.0.0", 9901))
    written = load(tmp_path, "listen: {host: 10.1.1.1}\n" + text, {"CORSPROXY_HOST": "0.0.0.0"})
    assert written.listen.host == "10.1.1.1"


def test_admin_null_disables_the_admin_listener(tmp_path: Path) -> None:
    assert load(tmp_path, "admin: null\n" + HEAD + "  - allow_origins: ['*']\n").admin is None


def test_admin_may_share_a_port_number_on_another_address(tmp_path: Path) -> None:
    text = "listen: {host: 10.0.0.1, port: 8080}\nadmin: {host: 127.0.0.1, port: 8080}\n"
    config = load(tmp_path, text + HEAD + "  - allow_origins: ['*']\n")
    assert config.admin is not None and (config.listen.port, config.admin.port) == (8080, 8080)


def test_with_overrides_replaces_only_what_is_given(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "  - allow_origins: ['*']\n")
    same = cfg.with_overrides(config)
    assert same == config
    changed = cfg.with_overrides(config, host="0.0.0.0", port=9999, upstream="https://api.internal/v2/")
    assert (changed.listen.host, changed.listen.port, changed.upstream.url) == \
        ("0.0.0.0", 9999, "https://api.internal/v2")
    assert changed.rules == config.rules and changed.upstream.connect_timeout == config.upstream.connect_timeout
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)  # the original is untouched


def test_with_overrides_rejects_a_bad_upstream_flag(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "  - allow_origins: ['*']\n")
    with pytest.raises(ConfigError) as exc:
        cfg.with_overrides(config, upstream="ftp://x")
    assert exc.value.issues == ["--upstream: 'ftp://x' must be an http:// or https:// URL with a host, e.g. "
                                "http://127.0.0.1:9000"]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "  - allow_origins: ['*']\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen.port = 1  # type: ignore[misc]


def test_the_example_config_loads_with_its_documented_values() -> None:
    config = cfg.load(ROOT / "config.example.yaml", env={})
    assert [r.name for r in config.rules] == ["public", "app"]
    assert (config.upstream.url, config.listen.host, config.limits.max_body_size) == \
        ("http://127.0.0.1:9000", "127.0.0.1", 10 * 1024**2)
    assert len(config.sha256) == 64


def test_describe_is_json_with_the_effective_rules(tmp_path: Path) -> None:
    text = (
        "listen: {trusted_proxies: [10.0.0.0/8]}\n" + HEAD +
        "  - name: app\n    paths: ['/api/**']\n    allow_origins: [https://a.example, {regex: 'https://b\\.example'}]\n"
        "    allow_headers: '*'\n"
    )
    described = cfg.describe(load(tmp_path, text))
    assert json.loads(json.dumps(described)) == described
    assert described["listen"]["trusted_proxies"] == ["10.0.0.0/8"]
    assert described["upstream"]["url"] == "http://127.0.0.1:9000"
    assert described["admin"] == {"host": "127.0.0.1", "port": 9901}
    assert described["limits"] == {"max_body_size": 10 * 1024**2, "header_timeout": 20.0, "body_timeout": 30.0,
                                   "min_data_rate": 240.0}
    assert described["rules"] == [{
        "name": "app", "paths": ["/api/**"], "allow_origins": ["https://a.example", {"regex": "https://b\\.example"}],
        "allow_methods": ["GET", "HEAD", "POST"], "allow_headers": ["*"], "expose_headers": [],
        "allow_credentials": False, "max_age": 600, "allow_private_network": False, "timing_allow_origin": False,
        "cross_origin_resource_policy": None,
        "disallowed_origin": "forward", "mode": "enforce", "upstream_cors": "replace", "denied_preflight": "reject",
    }]
    assert "marks" not in described


def test_default_config_path_prefers_the_environment() -> None:
    assert cfg.default_config_path({}) == "config.yaml"
    assert cfg.default_config_path({"CORSPROXY_CONFIG": "/etc/cp.yaml"}) == "/etc/cp.yaml"


def test_yaml_merge_keys_reuse_a_rule_and_own_keys_win(tmp_path: Path) -> None:
    text = (
        HEAD +
        "  - &one {name: one, allow_origins: ['https://a.example'], max_age: 1, paths: ['/1']}\n"
        "  - &two {name: two, allow_origins: ['https://b.example'], max_age: 2, allow_credentials: true, "
        "paths: ['/2']}\n"
        "  - <<: [*one, *two]\n"
        "    name: three\n"
        "    paths: ['/3']\n"
    )
    three = load(tmp_path, text).rules[2]
    # earlier merge sources win over later ones; keys a source lacks come from the next
    assert (three.name, three.paths.patterns, three.allow_origins, three.max_age, three.allow_credentials) == \
        ("three", ("/3",), ("https://a.example",), 1, True)


def test_a_merge_of_something_else_than_a_mapping_is_an_error(tmp_path: Path) -> None:
    text = HEAD + "  - <<: 5\n    allow_origins: ['*']\n"
    assert errors(tmp_path, text) == ["FILE:3:9: rules[0]: '<<' merges a mapping (<<: *rule) or a list of them "
                                      "(<<: [*a, *b])"]


def test_with_overrides_checks_flags_like_file_values(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "  - allow_origins: ['*']\n")
    with pytest.raises(ConfigError) as exc:
        cfg.with_overrides(config, host="", port=70000, upstream="http://a/?q")
    assert exc.value.issues == [
        "--host: expected a non-empty string, got ''",
        "--port: expected a whole number from 0 to 65535, got 70000",
        "--upstream: 'http://a/?q' may carry a base path but no query or fragment; drop from '?' or '#' on",
    ]


def test_file_paths_are_relative_to_the_config_files_folder_not_the_working_directory(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    folder = tmp_path / "etc" / "corsproxy"
    folder.mkdir(parents=True)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (folder / name).write_text("x")
    path = folder / "config.yaml"
    path.write_text("listen:\n  tls: {cert: cert.pem, key: ./key.pem}\nupstream:\n  url: https://api\n"
                    "  ca_file: ca.pem\nrules:\n  - allow_origins: ['*']\n")
    monkeypatch.chdir(tmp_path)  # where cert.pem is not
    config = cfg.load(path.relative_to(tmp_path), env={})
    assert config.listen.tls == cfg.TLSConfig(str(Path("etc/corsproxy/cert.pem")), str(Path("etc/corsproxy/key.pem")))
    assert config.upstream.ca_file == str(Path("etc/corsproxy/ca.pem"))
    (folder / "ca.pem").unlink()
    with pytest.raises(ConfigError) as caught:
        cfg.load(path, env={})
    assert caught.value.issues == [f"{path}:5:3: upstream.ca_file: cannot read file '{folder / 'ca.pem'}'; give a "
                                   "path that exists and is readable (a relative path is taken from the config "
                                   "file's folder)"]
