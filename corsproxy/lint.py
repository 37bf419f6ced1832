"""Risky-rule warnings for ``corsproxy check`` (design §5): legal configs that likely admit
more than their author meant. Each warning is ``FILE:LINE: warning: field: why``.

The regex check proves its point: it builds an origin the pattern was meant to admit, mutates
it where the pattern has an unescaped ``.`` (one character becomes ``X``) or a ``.*``/``.+``
(extra labels go there), and reports the mutant only when ``re.fullmatch`` admits it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import re._parser as sre  # the stdlib's own regex parser (sre_parse warns on import since 3.11)
from collections.abc import Callable, Iterator

from .config import ANY, Config, Rule
from .origins import parse_origin, parse_wildcard, public_suffix_wildcard

CHROMIUM_MAX_AGE = 7200  # Chromium caps Access-Control-Max-Age at 2 hours, Firefox at 24 h, Safari at 10 min
# (WebKit CrossOriginPreflightResultCache.cpp); each browser caches per URL, so each path preflights on its own.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
PRIVATE_SEGMENTS = frozenset({"admin", "internal", "private", "debug", "actuator", "management", "manage",
                              "console", "ops", "_internal", "superuser", "backoffice"})
_HTTP_HOST_RE = re.compile(r"http://(?:\*\.)?([^:/]+)", re.I)
_MAX_PATH_SAMPLES = 64

Warning_ = tuple[str, str]  # (field path as in config errors, why)


def lint(config: Config) -> list[str]:
    """Every warning for ``config``, in file order."""
    found = [(_line(config, path), path, why) for rule in config.rules for path, why in _rule_warnings(config, rule)]
    found.sort(key=lambda item: item[0])
    return [f"{config.source}:{line}: warning: {path}: {why}" for line, path, why in found] + _source_warnings(config)


def _source_warnings(config: Config) -> list[str]:
    """The origin checks on {file:} and {env:} entries, each naming the file and line (or the variable)."""
    out = []
    for rule in config.rules:
        field = _field(config, rule, "allow_origins")
        for source in rule.origin_sources:
            as_listed = dataclasses.replace(rule, allow_origins=source.entries)
            for where, why in _origins(config, as_listed):
                i = int(where[where.rindex("[") + 1:-1])
                line = _line(config, f"{field}[{source.index}]")
                place = source.where(i) if source.kind == "file" else f"{config.source}:{line}"
                detail = "" if source.kind == "file" else f" (${source.path} entry {source.lines[i]})"
                out.append(f"{place}: warning: {field}[{source.index}]{detail}: {why}")
    return out


def _line(config: Config, path: str) -> int:
    while path not in config.marks and path:
        path = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", path)
    return config.marks.get(path, (1, 1))[0]


def _field(config: Config, rule: Rule, name: str) -> str:
    """Where a rule's field is written: in the rule, else under defaults: (inherited)."""
    own = f"rules[{rule.index}].{name}"
    if own in config.marks or f"defaults.{name}" not in config.marks:
        return own
    return f"defaults.{name}"


def _rule_warnings(config: Config, rule: Rule) -> Iterator[Warning_]:
    checks: tuple[Callable[[Config, Rule], Iterator[Warning_]], ...] = (
        _origins, _max_age, _private_network, _star_with_credentials, _shadowed, _star_on_private_paths)
    for check in checks:
        yield from check(config, rule)


# ---------------------------------------------------------------------- origins


def _origins(config: Config, rule: Rule) -> Iterator[Warning_]:
    base = _field(config, rule, "allow_origins")
    for i, entry in enumerate(rule.allow_origins):
        where = f"{base}[{i}]"
        if entry == "null":
            yield where, ("'null' is the origin of sandboxed frames and file: pages, which any site can create; "
                          "allow it only if you must")
        elif isinstance(entry, str) and rule.allow_credentials and _is_remote_http(entry):
            yield where, (f"{entry!r} is plain http:// with allow_credentials: anyone on the network path can "
                          "impersonate it and read users' authenticated responses; use https:// (only localhost "
                          "is exempt)")
        elif isinstance(entry, str) and "*." in entry and _public_suffix_wildcard(entry):
            yield where, (f"{entry!r} admits every site under a public suffix: anyone can register one and read "
                          "your API from it; name your own domain, e.g. 'https://*.example.com'")
        elif isinstance(entry, dict) and "regex" in entry:
            why = regex_overreach(entry["regex"])
            if why:
                yield where, why


def _public_suffix_wildcard(entry: str) -> bool:
    """``https://*.com``, ``https://*.co.uk``, ``https://*.github.io``: a label wildcard over a public suffix."""
    return public_suffix_wildcard(parse_wildcard(entry).suffix.lstrip("."))


def _is_remote_http(entry: str) -> bool:
    m = _HTTP_HOST_RE.match(entry)
    return m is not None and m[1].lower() not in LOCAL_HOSTS and not m[1].lower().endswith(".localhost")


def regex_overreach(pattern: str) -> str | None:
    """Why an origin regex admits more than meant, naming an origin it wrongly admits; None if none found."""
    try:
        compiled, tree = re.compile(pattern), sre.parse(pattern)
    except re.error:
        return None
    base = _sample(tree, {})
    intended = parse_origin(base) if compiled.fullmatch(base) else None
    if intended is None:
        return None  # no sample origin to reason from; say nothing rather than guess
    kinds: list[str] = []
    _walk_sites(tree, kinds.append)
    for site, kind in enumerate(kinds):
        for text in _MUTANTS[kind]:
            mutant = _sample(tree, {site: text})
            origin = parse_origin(mutant)
            if origin is None or origin.host == intended.host or not compiled.fullmatch(mutant):
                continue
            tail = re.split(r"[:/]", _sample(tree, {site: "\x00"}).split("\x00", 1)[1], maxsplit=1)[0].lower()
            if kind == "span" and tail.startswith(".") and origin.host.endswith(tail):
                if not public_suffix_wildcard(tail.lstrip(".")):
                    continue  # more labels under one fixed parent domain: what a label wildcard means
                return (f"regex '{pattern}' also admits '{mutant}': {tail.lstrip('.')} is a public suffix, where "
                        "anyone can get a subdomain; match your own names under it")
            return f"regex '{pattern}' also admits '{mutant}': {_WHY[kind]}"
    return None


# A lone '.' becomes "X"; a '.*'/'.+' gets labels of another domain, or glues onto the next label.
_MUTANTS = {"dot": ("X",), "span": (".evil.com", "evil", "a.evil.com")}
_WHY = {
    "dot": "an unescaped '.' in the host matches any character; write \\. for a literal dot",
    "span": "a '.*' or '.+' in the host matches across labels, into other domains; "
            "match one label with [a-z0-9-]+",
}


def _walk_sites(tree: sre.SubPattern | list, visit: Callable[[str], None]) -> None:
    """Visit each '.' site in the order :func:`_sample` numbers them: "dot" (a lone '.') or "span" ('.*')."""
    for op, av in tree:
        if op is sre.ANY:
            visit("dot")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            lo, hi, body = av
            if len(body) == 1 and body[0][0] is sre.ANY:
                visit("span")
            elif hi >= 1:
                for _ in range(max(lo, 1)):
                    _walk_sites(body, visit)
        elif op is sre.SUBPATTERN:
            _walk_sites(av[-1], visit)
        elif op is sre.BRANCH:
            _walk_sites(av[1][0], visit)


def _sample(tree: sre.SubPattern | list, overrides: dict[int, str], counter: list[int] | None = None) -> str:
    """One string the pattern admits: the first branch, the first class member, each repeat
    at least once; '.' sites as the author most likely meant ('.' and 'a'), unless overridden."""
    counter = [0] if counter is None else counter
    out: list[str] = []
    for op, av in tree:
        if op is sre.LITERAL:
            out.append(chr(av))
        elif op is sre.ANY:
            out.append(overrides.get(counter[0], "."))
            counter[0] += 1
        elif op is sre.NOT_LITERAL:
            out.append("a" if av != ord("a") else "b")
        elif op is sre.IN:
            out.append(_class_member(av))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            lo, hi, body = av
            if len(body) == 1 and body[0][0] is sre.ANY:
                out.append(overrides.get(counter[0], "a"))
                counter[0] += 1
            elif hi >= 1:
                out.append("".join(_sample(body, overrides, counter) for _ in range(max(lo, 1))))
        elif op is sre.SUBPATTERN:
            out.append(_sample(av[-1], overrides, counter))
        elif op is sre.BRANCH:
            out.append(_sample(av[1][0], overrides, counter))
    return "".join(out)


def _class_member(items: list) -> str:
    if items and items[0][0] is sre.NEGATE:
        return "a"
    op, av = items[0]
    if op is sre.LITERAL:
        return chr(av)
    if op is sre.RANGE:
        return chr(av[0])
    if op is sre.CATEGORY:
        return "0" if av is sre.CATEGORY_DIGIT else "a"
    return "a"


# ---------------------------------------------------------------------- other fields


def _max_age(config: Config, rule: Rule) -> Iterator[Warning_]:
    if rule.max_age is not None and rule.max_age > CHROMIUM_MAX_AGE:
        yield _field(config, rule, "max_age"), (
            f"{rule.max_age} seconds is over {CHROMIUM_MAX_AGE}; browsers cap a cached preflight (Chromium at "
            f"{CHROMIUM_MAX_AGE} s, Firefox at 86400 s, Safari at 600 s, each per URL), so the extra time does "
            f"nothing in most of them; write {CHROMIUM_MAX_AGE} or less")


def _private_network(config: Config, rule: Rule) -> Iterator[Warning_]:
    if rule.allow_private_network:
        yield _field(config, rule, "allow_private_network"), (
            "allow_private_network is deprecated: Chrome never enforced Private Network Access preflights and "
            "replaced them (Chrome 142) with Local Network Access, a permission prompt no response header can skip; "
            "the key only answers the old preflight header. See the README, 'Local Network Access'")


def _star_with_credentials(config: Config, rule: Rule) -> Iterator[Warning_]:
    if not rule.allow_credentials:
        return
    for name, what in (("allow_headers", "header"), ("allow_methods", "method")):
        if getattr(rule, name) == ANY:
            yield _field(config, rule, name), (
                f'"*" with allow_credentials echoes whatever {what} a page asks for, so every allowed site may '
                f"send any {what} along with your users' cookies; list the {what}s the API needs")


def _star_on_private_paths(config: Config, rule: Rule) -> Iterator[Warning_]:
    if "*" not in rule.allow_origins:
        return
    private = [p for p in rule.paths.patterns if {s.lower() for s in p.split("/")} & PRIVATE_SEGMENTS]
    if private:
        where = f"{_field(config, rule, 'allow_origins')}[{rule.allow_origins.index('*')}]"
        yield where, (f'allow_origins "*" lets every website read {", ".join(private)}, which looks private; '
                      "list the origins that need it")


# ---------------------------------------------------------------------- shadowed rules


def _shadowed(config: Config, rule: Rule) -> Iterator[Warning_]:
    earlier = config.rules[: list(config.rules).index(rule)]
    covering: list[Rule] = []
    for pattern in rule.paths.patterns:
        by = next((r for r in earlier if _covers(r, pattern)), None)
        if by is None:
            return
        if by not in covering:
            covering.append(by)
    names = " and ".join(f"rules[{r.index}] ({r.name!r}, paths {list(r.paths.patterns)})" for r in covering)
    verbs = "comes first and covers" if len(covering) == 1 else "come first and cover"
    yield f"rules[{rule.index}].paths", (f"this rule never matches: {names} {verbs} every path it lists (the first "
                                         "matching rule wins); move it above, or narrow the earlier paths")


def _covers(rule: Rule, pattern: str) -> bool:
    """Whether ``rule``'s globs match every path ``pattern`` does, judged on samples of its wildcards."""
    samples = _path_samples(pattern)
    return samples is not None and all(rule.paths.matches(path) for path in samples)


def _path_samples(pattern: str) -> list[str] | None:
    """Paths that exercise each wildcard of a glob at its extremes (none, one, several segments)."""
    pieces = re.split(r"(/\*\*(?=/|$)|\*)", pattern)
    choices: list[tuple[str, ...]] = []
    for i, piece in enumerate(pieces):
        if piece == "/**":
            choices.append(("", "/", "/~s1", "/~s1/~s2"))
        elif piece == "*":
            whole = pieces[i - 1].endswith("/") and (i + 1 == len(pieces) or pieces[i + 1][:1] in ("", "/"))
            choices.append(("~w~", "~w") if whole else ("", "~w~"))
        else:
            choices.append((piece,))
    combos = list(itertools.islice(itertools.product(*choices), _MAX_PATH_SAMPLES + 1))
    if len(combos) > _MAX_PATH_SAMPLES:
        return None
    return ["".join(c) or "/" for c in combos]
