"""YAML config -> frozen, typed objects, with every check in one place.

Errors: everything wrong with a file is collected and raised at once as one
:class:`ConfigError`, each line ``FILE:LINE:COL: field.path: what is wrong and how to
fix it``; positions come from the YAML nodes (``yaml.compose``).

Strings may use ``${VAR}`` and ``${VAR:-default}``; an unset variable without a
default is an error naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from yarl import URL

from .config_sources import merge_sources, read_source
from .headers import TOKEN_RE
from .origin_sources import OriginSource, is_source
from .origins import IndexedError, OriginSet, compile_origins
from .paths import PathSet, compile_paths

HostHeader = Literal["upstream", "preserve"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
DisallowedOrigin = Literal["forward", "reject"]
Mode = Literal["enforce", "report-only"]
UpstreamCors = Literal["replace", "keep"]
DeniedPreflight = Literal["reject", "forward"]
ResourcePolicy = Literal["same-site", "same-origin", "cross-origin"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")

DEFAULT_CONFIG_PATH = "config.yaml"
# Read once at start (the listeners): a reload that changes them waits for a restart (README "Reload").
RESTART_ONLY = ("listen.host", "listen.port", "listen.tls", "admin")
# Methods a browser uppercases whatever the page wrote (Fetch "normalize a method").
NORMALIZED_METHODS = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})
ANY = ("*",)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NAME_FORBIDDEN = frozenset('";,=\\')
_ANY_HOSTS = frozenset({"0.0.0.0", "::", ""})  # bind every address, so any port clash is real
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*(B|KiB|MiB|GiB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_USERINFO_RE = re.compile(r"[a-z][a-z0-9+.\-]*://([^/?#]*)@", re.IGNORECASE)


class ConfigError(Exception):
    """A config that cannot be used; ``issues`` holds one ``FILE:LINE:COL: field: message`` each."""

    files: tuple[str, ...] = ()  # the origin files the failed load read: a reload watches them too

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    tls: TLSConfig | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    drain_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str
    host_header: HostHeader = "upstream"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_connections: int = 100
    tls_verify: bool = True
    ca_file: str | None = None
    forwarded_headers: bool = True
    rewrite_location: bool = True


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_body_size: int | None = 10 * 1024**2
    header_timeout: float = 20.0  # seconds for a request head (nginx client_header_timeout)
    body_timeout: float = 30.0  # seconds without a byte of a request body (nginx client_body_timeout)
    # bytes/s a client must keep up sending a body or taking a response, after a 5 s grace (Kestrel); None: off
    min_data_rate: float | None = 240.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class DebugConfig:
    decision_header: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """One CORS rule, as written (for display) and compiled (for matching)."""

    name: str
    index: int
    paths: PathSet
    origins: OriginSet
    allow_origins: tuple[str | Mapping[str, str], ...]
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST")  # ANY for "*"
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int | None = 600
    allow_private_network: bool = False
    timing_allow_origin: bool = False
    cross_origin_resource_policy: ResourcePolicy | None = None
    disallowed_origin: DisallowedOrigin = "forward"
    mode: Mode = "enforce"
    upstream_cors: UpstreamCors = "replace"
    denied_preflight: DeniedPreflight = "reject"
    origin_sources: tuple[OriginSource, ...] = ()  # its {file:} and {env:} entries, read


@dataclass(frozen=True, slots=True)
class Config:
    upstream: UpstreamConfig
    rules: tuple[Rule, ...]
    listen: ListenConfig = ListenConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig | None = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    debug: DebugConfig = DebugConfig()
    source: str = "<string>"
    sha256: str = ""
    # "rules[1].allow_origins[0]" -> (line, column), 1-based; for lint warnings.
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    origin_files: tuple[str, ...] = ()  # the {file:} origin lists it read, watched for changes like the config


# --------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, upstream: str | None = None) -> Config:
    """Read and check a config file; raises :class:`ConfigError` listing every problem.

    ``upstream`` (``--upstream``) stands in for an ``upstream.url`` the file does not have."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"{path}: cannot read the config file ({exc.strerror}); pass -c PATH or set $CORSPROXY_CONFIG"]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text; save it as UTF-8"]) from None
    return parse(text, str(path), os.environ if env is None else env, upstream=upstream)


def parse(text: str, source: str = "<string>", env: Mapping[str, str] | None = None, *,
          upstream: str | None = None) -> Config:
    """Check a config given as YAML text; ``source`` names it in messages."""
    reader = _Reader(source, os.environ if env is None else env)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_error(exc, text, source)]) from None
    data = reader.value(node, "") if node is not None else {}
    if upstream is not None and isinstance(data, dict):
        try:
            _stand_in(data, _upstream_url(upstream))
        except ValueError as exc:  # the flag's own error, before the file's (with_overrides words it the same)
            reader.issues.append(((0, 0), f"--upstream: {exc}"))
    config = reader.build(data)
    if reader.issues:
        error = ConfigError([text for _, text in sorted(reader.issues, key=lambda issue: issue[0])])
        error.files = tuple(reader.files)
        raise error
    assert config is not None
    digest = hashlib.sha256(text.encode())
    for data_read in reader.files.values():  # an edit of an origin file is a new config too
        digest.update(b"\0" + data_read)
    return dataclasses.replace(config, sha256=digest.hexdigest(), origin_files=tuple(reader.files))


def _syntax_error(exc: yaml.YAMLError, text: str, source: str) -> str:
    """``FILE:LINE:COL: YAML syntax: ...`` where the mistake is. An unclosed ``[``, ``{`` or quote is noticed at
    the next token, often the next line: then the end of the line before it is where the closer is missing."""
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context", None) or ""
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"{source}: YAML syntax: {problem}; check indentation and quoting"
    line, column = mark.line, mark.column
    lines = text.splitlines()
    before = lines[line][:column] if line < len(lines) else ""
    opened = getattr(exc, "context_mark", None)
    if ("flow" in context or "quoted" in context) and not before.strip() and opened is not None:
        previous = next((i for i in range(line - 1, opened.line - 1, -1) if lines[i].strip()), None)
        if previous is not None:
            line, column = previous, len(lines[previous].rstrip())
            problem += f" ({context} opened at line {opened.line + 1}, column {opened.column + 1})"
    return f"{source}:{line + 1}:{column + 1}: YAML syntax: {problem}; check indentation and quoting there"


def _stand_in(data: dict[str, Any], upstream: str) -> None:
    """``--upstream`` for a file without ``upstream.url`` (applied over one it has by :func:`with_overrides`)."""
    section = data.setdefault("upstream", {})
    if section is None:
        section = data["upstream"] = {}
    if isinstance(section, dict):
        section.setdefault("url", upstream)


def with_overrides(config: Config, *, host: str | None = None, port: int | None = None,
                   upstream: str | None = None) -> Config:
    """Apply command-line flags (which win over the file)."""
    issues: list[str] = []
    host = _flag("--host", host, _str, issues)
    port = _flag("--port", port, _int(0, 65535), issues)
    upstream = _flag("--upstream", upstream, _upstream_url, issues)
    if issues:
        raise ConfigError(issues)
    listen, up = config.listen, config.upstream
    if host is not None:
        listen = dataclasses.replace(listen, host=host)
    if port is not None:
        listen = dataclasses.replace(listen, port=port)
    if upstream is not None:
        up = dataclasses.replace(up, url=upstream)
    return dataclasses.replace(config, listen=listen, upstream=up)


def _flag(flag: str, value: object, check: Callable[[Any], _T], issues: list[str]) -> _T | None:
    if value is None:
        return None
    try:
        return check(value)
    except ValueError as exc:  # checked like the file's own value, so serve never binds a bad one
        issues.append(f"{flag}: {exc}")
        return None


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    return (os.environ if env is None else env).get("CORSPROXY_CONFIG") or DEFAULT_CONFIG_PATH


# ------------------------------------------------------------ field parsers
# Each takes the plain value and returns the typed one, or raises ValueError(fix).

Parser = Callable[[Any], Any]


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _number(minimum: float = 0.0) -> Parser:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
            raise ValueError(f"expected a number of seconds >= {minimum:g}, got {v!r}")
        return float(v)

    return parse


def _int(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            raise ValueError(f"expected a whole number from {minimum} to {maximum}, got {v!r}")
        return v

    return parse


def _rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 1:
        raise ValueError(f"expected bytes per second >= 1 (e.g. 240), or null for no minimum, got {v!r}")
    return float(v)


def _optional(parse: Parser) -> Parser:
    return lambda v: None if v is None else parse(v)


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def _rule_name(v: Any) -> str:
    name = _str(v)
    # shown in the CORS-Decision header (rule=NAME; verdict=...) and in log lines
    if not all(" " <= c <= "~" for c in name) or set(name) & _NAME_FORBIDDEN:
        raise ValueError(f"{name!r}: a rule name is printable ASCII without {' '.join(sorted(_NAME_FORBIDDEN))} "
                         "(it appears in headers and logs), e.g. 'app-v2'")
    return name


def _choice(*choices: str) -> Parser:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}{_did_you_mean(v, choices)}")
        return v

    return parse


def _size(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    m = _SIZE_RE.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError(f"expected bytes as a whole number or with KiB/MiB/GiB (e.g. 10MiB), got {v!r}")
    return int(m[1]) * _SIZE_UNITS[(m[2] or "b").lower()]


def _file(v: Any) -> str:
    path = _str(v)
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read file {path!r}; give a path that exists and is readable (a relative path is "
                         "taken from the config file's folder)")
    return path


def _upstream_url(v: Any) -> str:
    text = _str(v)
    if m := _USERINFO_RE.match(text):
        # SECURITY: the message never repeats the password (it goes to stderr and to the log on reload).
        user = m[1].partition(":")[0]
        shown = f"{text[:m.start(1)]}{user}{':***' if ':' in m[1] else ''}@{text[m.end():]}"
        raise ValueError(f"{shown!r} carries a user name and password; corsproxy does not authenticate to the "
                         f"upstream and would never send them: remove '{user}:...@' (let the upstream trust the "
                         "proxy's network, or have the client send its own Authorization header)")
    try:
        url = URL(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL ({exc}); write e.g. http://127.0.0.1:9000") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{text!r} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
    if url.raw_query_string or url.raw_fragment:
        raise ValueError(f"{text!r} may carry a base path but no query or fragment; drop from '?' or '#' on")
    return str(url).rstrip("/")


class _BadItems(Exception):
    """Every bad item of a list, from :func:`_items`. Not an ExceptionGroup, whose members may be nested
    groups rather than IndexedError; not a ValueError, so that only :meth:`_Reader.field` catches it."""

    def __init__(self, errors: list[IndexedError]) -> None:
        super().__init__("bad list items")
        self.errors = errors


def _items(v: list[Any], check: Parser) -> tuple[Any, ...]:
    """Check every item of a list; the bad ones are raised together, so all are reported at once."""
    out: list[Any] = []
    bad: list[IndexedError] = []
    for i, item in enumerate(v):
        try:
            out.append(check(item))
        except ValueError as exc:
            bad.append(IndexedError(i, str(exc)))
    if bad:
        raise _BadItems(bad)
    return tuple(out)


def _network(item: Any) -> IPNetwork:
    if not isinstance(item, str):  # ip_network(10) would quietly mean 0.0.0.10/32
        raise ValueError(f"{item!r} is not an address; write addresses or CIDRs such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError as exc:
        raise ValueError(f"{exc}; write addresses or CIDRs such as 10.0.0.0/8") from None


def _networks(v: Any) -> tuple[IPNetwork, ...]:
    if not isinstance(v, list):
        raise ValueError("expected a list of CIDRs, e.g. [10.0.0.0/8, 127.0.0.1/32]")
    return _items(v, _network)


def _tokens(kind: str, example: str) -> Parser:
    """A list of HTTP tokens (methods, header names), or ``"*"``."""

    def token(item: Any) -> str:
        if item == "*":
            raise ValueError(f"'*' cannot be mixed with names; write {kind}s: \"*\" alone")
        if not isinstance(item, str) or not TOKEN_RE.fullmatch(item):
            raise ValueError(f"{item!r} is not a valid {kind} name (letters, digits, -_!#$%&'*+.^`|~)")
        if kind == "method" and item != item.upper() and item.upper() in NORMALIZED_METHODS:
            # fetch() sends "delete" as "DELETE" (Fetch "normalize a method"), so a lowercase
            # entry would never match and silently deny; "patch" is sent as written.
            raise ValueError(f"browsers always send {item.upper()} in uppercase; write {item.upper()!r}")
        return item

    def parse(v: Any) -> tuple[str, ...]:
        if v == "*" or v == ["*"]:
            return ANY
        if isinstance(v, str):
            raise ValueError(f"expected a list, e.g. [{example}], or \"*\"")
        if not isinstance(v, list):
            raise ValueError(f"expected a list of {kind}s, e.g. [{example}], or \"*\"")
        return _items(v, token)

    return parse


def _did_you_mean(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class _Field:
    parse: Parser
    default: Any = None
    required: bool = False
    example: str = ""  # for a required field's message
    path: bool = False  # a file path: relative to the config file's folder (design §2)


def _env_default(env: Mapping[str, str], name: str) -> str:
    return env.get(name) or "127.0.0.1"


_LISTEN = {
    "host": _Field(_str),
    "port": _Field(_int(0, 65535), 8080),
    "tls": _Field(lambda v: v),  # checked as a section below
    "trusted_proxies": _Field(_networks, ()),
    "drain_timeout": _Field(_number(), 10.0),
}
_TLS = {"cert": _Field(_file, required=True, example="cert.pem (the PEM certificate chain)", path=True),
        "key": _Field(_file, required=True, example="key.pem (the PEM private key)", path=True)}
_UPSTREAM = {
    "url": _Field(_upstream_url, required=True, example="http://127.0.0.1:9000 (the API behind the proxy)"),
    "host_header": _Field(_choice("upstream", "preserve"), "upstream"),
    "connect_timeout": _Field(_number(0.001), 5.0),
    "read_timeout": _Field(_number(0.001), 60.0),
    "max_connections": _Field(_int(1, 100_000), 100),
    "tls_verify": _Field(_bool, True),
    "ca_file": _Field(_optional(_file), path=True),
    "forwarded_headers": _Field(_bool, True),
    "rewrite_location": _Field(_bool, True),
}
_LIMITS = {
    "max_body_size": _Field(_size, 10 * 1024**2),
    "header_timeout": _Field(_number(0.1), 20.0),
    "body_timeout": _Field(_number(0.1), 30.0),
    "min_data_rate": _Field(_optional(_rate), 240.0),
}
_ADMIN = {"host": _Field(_str), "port": _Field(_int(0, 65535), 9901)}
_LOGGING = {
    "level": _Field(_choice("debug", "info", "warning", "error"), "info"),
    "format": _Field(_choice("text", "json"), "text"),
    "access_log": _Field(_bool, True),
}
_DEBUG = {"decision_header": _Field(_bool, False)}
_RULE_FIELDS = {
    "allow_origins": _Field(lambda v: v),  # checked in _Reader.rule
    "allow_methods": _Field(_tokens("method", "GET, POST"), ("GET", "HEAD", "POST")),
    "allow_headers": _Field(_tokens("header", "Content-Type, Authorization"), ()),
    "expose_headers": _Field(_tokens("header", "X-Request-Id"), ()),
    "allow_credentials": _Field(_bool, False),
    "max_age": _Field(_optional(_int(0, 2**31 - 1)), 600),
    "allow_private_network": _Field(_bool, False),
    "timing_allow_origin": _Field(_bool, False),
    "cross_origin_resource_policy": _Field(_optional(_choice("same-site", "same-origin", "cross-origin"))),
    "disallowed_origin": _Field(_choice("forward", "reject"), "forward"),
    "mode": _Field(_choice("enforce", "report-only"), "enforce"),
    "upstream_cors": _Field(_choice("replace", "keep"), "replace"),
    "denied_preflight": _Field(_choice("reject", "forward"), "reject"),
}
_RULE = {"name": _Field(_rule_name), "paths": _Field(lambda v: v), **_RULE_FIELDS}
_TOP = ("listen", "upstream", "limits", "admin", "logging", "debug", "defaults", "rules")
_EMPTY_HINTS = {
    "allow_origins": 'an empty list allows nothing; list origins (e.g. ["https://app.example.com"]) or remove the rule',
    "allow_methods": "an empty list allows no method; list them (e.g. [GET, POST]) or leave the field out for "
    "the default [GET, HEAD, POST]",
}


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Bad:
    """Marks a value that already produced an error."""


_BAD = _Bad()


class _Reader:
    """Turns composed YAML into plain values (remembering each one's position) and checks them."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        # (line, column), text: sorted when raised; an origin file's issue adds its own line and column
        self.issues: list[tuple[tuple[int, ...], str]] = []
        self.marks: dict[str, tuple[int, int]] = {}
        self._failed: set[str] = set()
        self._open: set[int] = set()  # ids of the lists and mappings being read, to stop alias loops
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()
        self.files: dict[str, bytes] = {}  # origin file -> its content, in the order first read
        self.sources: dict[str, tuple[OriginSource, ...]] = {}  # "rules[1].allow_origins" -> its sources

    def relative(self, value: Any) -> Any:
        """A file path from the config, taken from the config file's folder unless absolute."""
        if not isinstance(value, str) or not value or os.path.isabs(value) or self.source.startswith("<"):
            return value
        return os.path.normpath(os.path.join(os.path.dirname(self.source), value))

    # -- positions and messages

    def error(self, path: str, message: str) -> None:
        if path in self._failed:  # one message a field: the first names the real cause
            return
        self._failed.add(path)
        self.add(self.mark(path), path, message)

    def add(self, where: tuple[int, int], path: str, message: str) -> None:
        self.issues.append((where, f"{self.source}:{where[0]}:{where[1]}: {path or '(top level)'}: {message}"))

    def mark(self, path: str) -> tuple[int, int]:
        while path not in self.marks and path:
            # drop the last step; a top-level key that is absent from the file falls back to 1:1
            path = re.sub(r"(\.[^.\[]+|\[\d+\]|^[^.\[]+)$", "", path)
        return self.marks.get(path, (1, 1))

    # -- YAML nodes to plain values

    def value(self, node: yaml.Node, path: str) -> Any:
        self.marks.setdefault(path, _position(node))
        if isinstance(node, yaml.CollectionNode):
            if id(node) in self._open:  # "a: &x [*x]" would recurse forever
                self.error(path, "this alias refers to a list or mapping that contains it; write the values out")
                return _BAD
            self._open.add(id(node))
            try:
                return self.collection(node, path)
            finally:
                self._open.discard(id(node))
        assert isinstance(node, yaml.ScalarNode)  # yaml.compose makes no other kind of node
        return self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        if "${" in node.value:
            text = self.expand(node.value, path)
            # a plain scalar is typed after expansion (port: ${PORT:-8080} is an int); a quoted one stays str
            tag = self._resolver.resolve(yaml.ScalarNode, text, (True, False)) if node.style is None else node.tag
            node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError):  # "!!python/name:x", "!!int abc": never run, never crash
            self.error(path, f"cannot read {node.value!r} as {node.tag}; drop the '!!' tag or fix the value")
            return _BAD

    def collection(self, node: yaml.CollectionNode, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in self.merged(node, path):
                if not isinstance(key_node, yaml.ScalarNode):
                    self.add(_position(key_node), path, "a key must be a plain name such as 'allow_origins'")
                    continue
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                if key in out:
                    self.add(_position(key_node), sub, f"'{key}' is given twice; keep one")
                self.marks[sub] = _position(key_node)  # point at the key, not its value
                out[key] = self.value(value_node, sub)
            return out
        return [self.value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]

    def merged(self, node: yaml.MappingNode, path: str) -> list[tuple[yaml.Node, yaml.Node]]:
        """The pairs of a mapping with YAML merge keys (``<<: *rule``) applied: its own keys win, then
        earlier merge sources over later ones (yaml.org/type/merge)."""
        if not any(key.tag == _MERGE_TAG for key, _ in node.value):
            return node.value
        own: list[tuple[yaml.Node, yaml.Node]] = []
        sources: list[yaml.MappingNode] = []
        for key, value in node.value:
            if key.tag != _MERGE_TAG:
                own.append((key, value))
                continue
            subs = value.value if isinstance(value, yaml.SequenceNode) else [value]
            if all(isinstance(sub, yaml.MappingNode) for sub in subs):
                sources.extend(subs)
            else:
                self.add(_position(value), path, "'<<' merges a mapping (<<: *rule) or a list of them (<<: [*a, *b])")
        pairs: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for sub in sources:
            if id(sub) in self._open:  # "&x {<<: *x}"
                self.error(path, "'<<' merges a mapping that contains it; write the values out")
                continue
            self._open.add(id(sub))
            try:
                merged = self.merged(sub, path)
            finally:
                self._open.discard(id(sub))
            for key, value in merged:
                pairs.setdefault(key.value if isinstance(key, yaml.ScalarNode) else id(key), (key, value))
        names = {key.value for key, _ in own if isinstance(key, yaml.ScalarNode)}
        return [pair for name, pair in pairs.items() if name not in names] + own

    def expand(self, text: str, path: str) -> str:
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            name, default = m[1], m[2]
            if name in self.env:
                return self.env[name]
            if default is None:
                missing.append(name)
            return default or ""

        text = _ENV_RE.sub(sub, text)
        if missing:  # all of them in one message, so one run of check names every variable to export
            names = ", ".join(f"${{{name}}}" for name in dict.fromkeys(missing))
            self.error(path, f"environment variable {names} is not set; export it or write ${{{missing[0]}:-default}}")
        return text

    # -- sections

    def section(self, data: Any, path: str, schema: Mapping[str, _Field],
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(path, f"expected a mapping of {', '.join(schema)}, got {type(data).__name__}")
            return None
        for key in data:
            if key not in schema:
                self.error(f"{path}.{key}" if path else key,
                           f"unknown key '{key}'{_did_you_mean(key, schema)}; allowed: {', '.join(schema)}")
        out: dict[str, Any] = {}
        for key, spec in schema.items():
            sub = f"{path}.{key}" if path else key
            if key in data:
                out[key] = self.field(spec, self.relative(data[key]) if spec.path else data[key], sub)
            elif defaults is not None and key in defaults:
                out[key] = defaults[key]
            elif spec.required:
                self.error(sub, f"'{key}' is required; add {key}: {spec.example}")
                out[key] = _BAD
            else:
                out[key] = spec.default
        return out

    def field(self, spec: _Field, value: Any, path: str) -> Any:
        try:
            return spec.parse(value)
        except _BadItems as bad:
            for item in bad.errors:
                self.error(f"{path}[{item.index}]", str(item))
        except ValueError as exc:
            self.error(path, str(exc))
        return _BAD

    # -- the whole file

    def build(self, data: Any) -> Config | None:
        if not isinstance(data, dict):
            self.error("", "the config must be a mapping with upstream: and rules: (see config.example.yaml)")
            return None
        for key in data:
            if key not in _TOP:
                self.error(key, f"unknown key '{key}'{_did_you_mean(key, _TOP)}; allowed: {', '.join(_TOP)}")
        if "upstream" not in data:
            self.error("upstream", "'upstream' is required: add upstream: {url: http://127.0.0.1:9000} "
                                   "(or pass --upstream URL)")
        listen = self.listen(data.get("listen"))
        upstream = self.section(data.get("upstream"), "upstream", _UPSTREAM) if "upstream" in data else None
        limits = self.section(data.get("limits"), "limits", _LIMITS)
        admin = self.admin(data)
        log = self.section(data.get("logging"), "logging", _LOGGING)
        debug = self.section(data.get("debug"), "debug", _DEBUG)
        rules = self.rules(data)
        self.check_ports(listen, admin)
        # A None section was reported, so self.issues covers it; spelled out to narrow the types.
        if self.issues or listen is None or upstream is None or limits is None or log is None or debug is None:
            return None
        return Config(
            listen=ListenConfig(**listen),
            upstream=UpstreamConfig(**upstream),
            limits=LimitsConfig(**limits),
            admin=AdminConfig(**admin) if admin is not None else None,
            logging=LoggingConfig(**log),
            debug=DebugConfig(**debug),
            rules=rules,
            source=self.source,
            marks=self.marks,
        )

    def check_ports(self, listen: dict[str, Any] | None, admin: dict[str, Any] | None) -> None:
        if not listen or not admin or listen["port"] != admin["port"] or listen["port"] in (0, _BAD):
            return
        if listen["host"] == admin["host"] or {listen["host"], admin["host"]} & _ANY_HOSTS:
            self.error("admin.port", f"the admin listener cannot share port {admin['port']} with listen.port; "
                                     "give it another port (default 9901) or admin: null")

    def listen(self, data: Any) -> dict[str, Any] | None:
        out = self.section(data, "listen", _LISTEN)
        if out is None:
            return None
        out["host"] = out["host"] or _env_default(self.env, "CORSPROXY_HOST")
        if out["tls"] is not None:
            tls = self.section(out["tls"], "listen.tls", _TLS)
            out["tls"] = TLSConfig(**tls) if tls and _BAD not in tls.values() else _BAD
        return out

    def admin(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if "admin" in data and data["admin"] is None:
            return None
        out = self.section(data.get("admin"), "admin", _ADMIN)
        if out is not None:
            out["host"] = out["host"] or _env_default(self.env, "CORSPROXY_ADMIN_HOST")
        return out

    def rules(self, data: dict[str, Any]) -> tuple[Rule, ...]:
        defaults = self.section(data.get("defaults"), "defaults", _RULE_FIELDS) or {}
        given_defaults = {k: v for k, v in defaults.items() if k in (data.get("defaults") or {})}
        if "allow_origins" in given_defaults:
            given_defaults["allow_origins"] = self.origins(given_defaults["allow_origins"], "defaults.allow_origins")
        for key in ("allow_methods",):
            if given_defaults.get(key) == ():
                self.error(f"defaults.{key}", _EMPTY_HINTS[key])
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            self.error("rules", "expected a non-empty list of rules, e.g. - {paths: ['/**'], allow_origins: [...]}")
            return ()
        built = [self.rule(r, i, given_defaults) for i, r in enumerate(rules)]
        names: dict[str, int] = {}
        # From the file, not from the rules that built: a duplicate is reported along with every other error.
        for index, raw in enumerate(rules):
            name = raw.get("name") if isinstance(raw, dict) else None
            name = name if isinstance(name, str) else f"rules[{index}]"
            if names.setdefault(name, index) != index:
                self.error(f"rules[{index}].name",
                           f"rule name '{name}' is already used by rules[{names[name]}]; names must differ")
        return tuple(r for r in built if r is not None)

    def rule(self, data: Any, index: int, defaults: Mapping[str, Any]) -> Rule | None:
        path = f"rules[{index}]"
        out = self.section(data, path, _RULE, defaults)
        if out is None:
            return None
        if "allow_origins" in (data or {}):
            out["allow_origins"] = self.origins(out["allow_origins"], f"{path}.allow_origins")
        elif "allow_origins" not in defaults:
            self.error(path, "'allow_origins' is required (here or under defaults:), e.g. "
                             "allow_origins: [\"https://app.example.com\"]")
            return None
        if out["allow_methods"] == ():
            self.error(f"{path}.allow_methods", _EMPTY_HINTS["allow_methods"])
        paths = self.paths(out["paths"], f"{path}.paths")
        # () stands in only where origin_set is None, and then no Rule is built
        origins_raw, origin_set = out["allow_origins"] if out["allow_origins"] is not _BAD else ((), None)
        if origin_set is not None and origin_set.allow_all and out["allow_credentials"] is True:
            where = next((f"{path}.{k}" for k in ("allow_credentials", "allow_origins") if k in (data or {})),
                         "defaults.allow_credentials")  # both inherited: one message, at the defaults
            self.error(where, 'allow_credentials: true with allow_origins "*" would let every site read its users\' '
                              "authenticated responses; list the allowed origins instead of \"*\"")
        if _BAD in out.values() or paths is None or origin_set is None:
            return None
        fields = {k: v for k, v in out.items() if k not in ("name", "paths", "allow_origins")}
        sources = self.sources.get(f"{path}.allow_origins", self.sources.get("defaults.allow_origins", ()))
        return Rule(name=out["name"] or path, index=index, paths=paths, origins=origin_set,
                    allow_origins=origins_raw, origin_sources=sources, **fields)

    def paths(self, value: Any, path: str) -> PathSet | None:
        if value is None:
            value = ["/**"]
        if not isinstance(value, list) or not value:
            self.error(path, "expected a non-empty list of path patterns, e.g. [\"/api/**\"]")
            return None
        ok = True
        for i, item in enumerate(value):
            try:
                compile_paths([_str(item)])
            except ValueError as exc:
                self.error(f"{path}[{i}]", str(exc))
                ok = False
        return compile_paths(value) if ok else None

    def origins(self, value: Any, path: str) -> tuple[tuple[Any, ...], OriginSet] | _Bad:
        if value == "*":
            value = ["*"]
        if not isinstance(value, list):
            self.error(path, 'expected a list of origins, e.g. ["https://app.example.com"], or ["*"]')
            return _BAD
        if not value:
            self.error(path, _EMPTY_HINTS["allow_origins"])
            return _BAD
        ok = True
        sources: list[OriginSource] = []
        for i, item in enumerate(value):
            if is_source(item):
                source = read_source(self, item, f"{path}[{i}]", i)
                ok = ok and source is not None
                sources.extend([source] if source is not None else [])
                continue
            try:
                if not isinstance(item, str | dict):
                    hint = " (an unquoted null is YAML's empty value: write 'null' in quotes)" if item is None else ""
                    raise ValueError(f"expected an origin string or {{regex: '...'}}, got {item!r}{hint}")
                compile_origins([item])
            except ValueError as exc:
                self.error(f"{path}[{i}]", str(exc))
                ok = False
        if not ok:
            return _BAD
        if not sources:
            return tuple(value), compile_origins(value)
        self.sources[path] = tuple(sources)
        inline = compile_origins([item for item in value if not is_source(item)])
        return tuple(value), merge_sources(inline, sources)


def describe(config: Config) -> dict[str, Any]:
    """The effective config as plain JSON-able data (for ``check``, ``/config``)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, Rule):
            skip = {"paths", "origins", "index", "origin_sources"}
            out = {"name": obj.name, "paths": list(obj.paths.patterns)}
            out.update({f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip
                        and f.name != "name"})
            return out
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "marks"}
        if isinstance(obj, tuple | list):
            return ["*"] if obj == ANY else [plain(x) for x in obj]
        if isinstance(obj, Mapping):
            return dict(obj)
        if isinstance(obj, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return str(obj)
        return obj

    return plain(config)
