"""``corsproxy suggest``: the smallest rule change that would allow what the proxy denied (design §2).

Input: what the proxy saw, as JSON access-log lines or a ``/decisions`` JSON document, turned into
:class:`Seen` records. :func:`plan` judges them against the config: each becomes a :class:`Change`
(origins, methods, headers, ``expose_headers`` to add to one rule) or a :class:`Note` (a denial that
no rule change fixes, or a change that is not safe to make), and :func:`edit` makes the changes as
text edits at the YAML nodes' marks, so comments and layout stay; :func:`unified_diff` shows them.

Safety (the point of the command):

- never ``"*"``: origins, methods and headers are added by name;
- never an origin that is not a valid serialized origin, nor ``null`` (any site can create it);
- a wildcard ``https://*.example.com`` only as an alternative, printed beside the diff, when at
  least three subdomains of one registrable domain were denied, and never over a public suffix
  (Public Suffix List, offline, from the ``publicsuffixlist`` package);
- the edited config must load: it is parsed before it is shown.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .config import ANY, Config, Rule, parse
from .headers import TOKEN_RE
from .origins import parse_origin, public_suffix_wildcard, registrable_domain

FIELDS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers")
MIN_SUBDOMAINS = 3  # design §2: a wildcard is offered after three distinct subdomains of one domain
_METHOD_RE = re.compile(r"\bmethod (\S+) not in allow_methods")
_HEADERS_RE = re.compile(r"^(.*?) not in allow_headers")
_RULE_SUFFIX_RE = re.compile(r" \(rule '[^']*'\)$")
_PLAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~+/:\-]*")
_YAML_WORDS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"})


@dataclass(frozen=True, slots=True)
class Seen:
    """One decision the proxy logged (``count`` of them, when the source counted)."""

    rule: str  # the rule's name; "-" when no rule matched
    verdict: str  # allowed, denied:origin, denied:method, denied:header, denied:private-network, none
    origin: str  # "" when there was none, or it was not one valid origin
    method: str
    path: str
    reason: str = ""
    unexposed: tuple[str, ...] = ()
    count: int = 1


@dataclass(frozen=True, slots=True)
class Change:
    """Add ``values`` to one field of one rule."""

    rule: Rule
    field: str
    values: tuple[str, ...]
    counts: tuple[int, ...]  # how often each value was denied


@dataclass(frozen=True, slots=True)
class Note:
    """Something seen that the diff does not change, and why."""

    text: str
    count: int
    kind: str = "unfixable"  # unfixable | not-suggested | alternative | rare | allowed-now


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


# ---------------------------------------------------------------------- reading what was seen


def from_log_lines(lines: Iterable[str]) -> Iterator[Seen]:
    """The access-log records among JSON log lines (``logging.format: json``); other lines are skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("logger", "corsproxy.access") == "corsproxy.access" \
                and "verdict" in record and "rule" in record:
            yield _seen(record, record.get("origin", "-"))


def from_decisions(data: Mapping[str, Any]) -> Iterator[Seen]:
    """The entries of a ``/decisions`` JSON document, and its counts of unreadable response headers."""
    for entry in data.get("entries", []):
        yield _seen(entry, entry.get("origin", ""))
    for item in data.get("unexposed", []):
        yield Seen(item["rule"], "allowed", "", "GET", "", unexposed=(item["header"],), count=int(item["count"]))


def _seen(record: Mapping[str, Any], origin: str) -> Seen:
    verdict = str(record.get("verdict", "")).removesuffix(" (report-only)")
    return Seen(str(record.get("rule", "-")), verdict, "" if origin in ("-", None) else str(origin),
                str(record.get("method", "")), str(record.get("path", "")), str(record.get("reason", "")),
                tuple(record.get("unexposed") or ()))


# ---------------------------------------------------------------------- judging


def plan(config: Config, seen: Iterable[Seen], min_count: int = 1) -> Plan:
    """The changes and notes for everything seen, grouped by rule, in the config's rule order."""
    rules = {rule.name: rule for rule in config.rules}
    wanted: dict[tuple[int, str], dict[str, int]] = {}
    notes: dict[tuple[str, str], int] = {}
    for item in seen:
        for fix in _fixes(rules, item):
            if isinstance(fix, Note):
                notes[(fix.kind, fix.text)] = notes.get((fix.kind, fix.text), 0) + item.count
            else:
                rule, name, value = fix
                bucket = wanted.setdefault((rule.index, name), {})
                bucket[value] = bucket.get(value, 0) + item.count
    out = Plan()
    by_index = {rule.index: rule for rule in config.rules}
    rare = 0
    for (index, name), values in sorted(wanted.items(), key=lambda kv: (kv[0][0], FIELDS.index(kv[0][1]))):
        kept = {v: n for v, n in values.items() if n >= min_count}
        rare += sum(n for v, n in values.items() if n < min_count)
        if kept:
            out.changes.append(Change(by_index[index], name, tuple(kept), tuple(kept.values())))
    out.notes = [Note(text, n, kind) for (kind, text), n in notes.items() if n >= min_count]
    alternatives = (_alternative(change) for change in out.changes if change.field == "allow_origins")
    out.notes += [note for note in alternatives if note is not None]
    if rare:
        out.notes.append(Note(f"ignored: seen fewer than --min-count {min_count} times", rare, "rare"))
    return out


Fix = Note | tuple[Rule, str, str]


def _fixes(rules: Mapping[str, Rule], seen: Seen) -> Iterator[Fix]:
    rule = rules.get(seen.rule)
    if seen.rule == "-" or seen.verdict == "none":
        if seen.origin:
            yield Note(f"{seen.method} {seen.path} from {seen.origin}: no rule matches this path, so the request is "
                       "forwarded untouched; no rule change fixes it (add a rule whose paths cover it)", 1)
        return
    if rule is None:
        yield Note(f"rule {seen.rule!r} is not in the config any more; nothing to change", 1, "not-suggested")
        return
    if seen.verdict == "denied:origin":
        yield from _origin_fix(rule, seen)
    elif seen.verdict == "denied:method":
        yield from _method_fix(rule, seen)
    elif seen.verdict == "denied:header":
        yield from _header_fix(rule, seen)
    elif seen.verdict == "denied:private-network":
        yield Note(f"{_label(rule)}: a private-network preflight from {seen.origin}; allow_private_network is "
                   "legacy (Chrome asks the user instead, see the README), so it is not suggested", 1, "not-suggested")
    if seen.unexposed and rule.expose_headers != ANY:
        have = {h.lower() for h in rule.expose_headers}
        for name in seen.unexposed:
            if name.lower() not in have and TOKEN_RE.fullmatch(name):
                yield rule, "expose_headers", name


def _origin_fix(rule: Rule, seen: Seen) -> Iterator[Fix]:
    reason = _RULE_SUFFIX_RE.sub("", seen.reason)
    parsed = parse_origin(seen.origin) if seen.origin and seen.origin != "null" else None
    if seen.origin == "null":
        yield Note(f"{_label(rule)}: the 'null' origin (sandboxed frames, file: pages) was denied; any site can "
                   "send it, so it is not suggested: add 'null' by hand only if you must", 1, "not-suggested")
    elif parsed is None:
        # SECURITY: an invalid or repeated Origin is never allowed, so no rule change can fix it.
        why = reason or f"Origin {seen.origin!r} is not a valid origin"
        yield Note(f"{seen.method} {seen.path} ({_label(rule)}): {why}; no rule change fixes this (the browser, "
                   "or whatever sent the request, must send one valid Origin)", 1)
    elif rule.origins.allows(str(parsed)):
        yield Note(f"{_label(rule)}: {parsed} is allowed by the config now", 1, "allowed-now")
    else:
        yield rule, "allow_origins", str(parsed)


def _method_fix(rule: Rule, seen: Seen) -> Iterator[Fix]:
    m = _METHOD_RE.search(seen.reason)
    method = m[1] if m else (seen.method if seen.method != "OPTIONS" else "")
    if not method or not TOKEN_RE.fullmatch(method):
        yield Note(f"{_label(rule)}: {seen.reason or 'an invalid method'}; no rule change fixes this", 1)
    elif rule.allow_methods != ANY and method not in rule.allow_methods:
        yield rule, "allow_methods", method
    else:
        yield Note(f"{_label(rule)}: method {method} is allowed by the config now", 1, "allowed-now")


def _header_fix(rule: Rule, seen: Seen) -> Iterator[Fix]:
    m = _HEADERS_RE.match(seen.reason)
    names = [n.strip() for n in m[1].split(",")] if m else []
    have = {h.lower() for h in rule.allow_headers} if rule.allow_headers != ANY else None
    for name in names:
        if not TOKEN_RE.fullmatch(name) or not name.isascii():
            yield Note(f"{_label(rule)}: request header {name!r} is not a valid header name; not suggested", 1,
                       "not-suggested")
        elif have is not None and name.lower() not in have:
            yield rule, "allow_headers", _title(name)


def _title(name: str) -> str:
    """``x-request-id`` (browsers send lowercase) as ``X-Request-Id``, as configs are usually written."""
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def _label(rule: Rule) -> str:
    return f"rules[{rule.index}] ({rule.name})" if rule.name != f"rules[{rule.index}]" else rule.name


# ---------------------------------------------------------------------- wildcards, never over a public suffix


def _alternative(change: Change) -> Note | None:
    groups: dict[tuple[str, int | None, str], list[str]] = {}
    public: dict[str, list[str]] = {}
    for value in change.values:
        origin = parse_origin(value)
        assert origin is not None
        domain = registrable_domain(origin.host)
        if domain is None:
            continue
        if origin.host != domain:
            groups.setdefault((origin.scheme, origin.port, domain), []).append(origin.host)
            continue
        parent = domain.split(".", 1)[1]
        if "." in parent:  # ann.github.io, bob.github.io: each its own site under a public suffix
            public.setdefault(parent, []).append(value)
    for (scheme, port, domain), hosts in groups.items():
        hosts = sorted(set(hosts))
        if len(hosts) < MIN_SUBDOMAINS:
            continue
        parent = _common_parent(hosts, domain)
        # SECURITY: the parent is the registrable domain or under it, never a public suffix.
        if public_suffix_wildcard(parent):
            continue
        wildcard = f"{scheme}://*.{parent}" + (f":{port}" if port is not None else "")
        return Note(f"{_label(change.rule)}.allow_origins: instead of the {len(hosts)} origins under {parent}, "
                    f"'{wildcard}' would allow every subdomain of {parent}, now and later (not in the diff: "
                    "write it by hand if every one of them is yours)", sum(change.counts), "alternative")
    for suffix, values in public.items():
        if len(values) >= MIN_SUBDOMAINS:
            return Note(f"{_label(change.rule)}.allow_origins: no wildcard is offered for the {len(values)} origins "
                        f"under {suffix}: it is a public suffix, where anyone can register a site", 0, "alternative")
    return None


def _common_parent(hosts: list[str], domain: str) -> str:
    labels = [h.split(".")[::-1] for h in hosts]
    common: list[str] = []
    for parts in zip(*labels, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    parent = ".".join(common[::-1])
    # a host that is the parent itself is not a subdomain of it: go one label up, to the domain at most
    if parent in hosts or not parent.endswith(domain):
        parent = parent.split(".", 1)[1] if parent != domain and "." in parent else domain
    return parent if parent.endswith(domain) else domain


# ---------------------------------------------------------------------- one line for /decisions


def describe(change: Change, config: Config) -> str:
    """``add https://b.example.com to rules[1].allow_origins, config.yaml:12``."""
    own = f"rules[{change.rule.index}].{change.field}"
    line = config.marks.get(own, config.marks.get(f"rules[{change.rule.index}]", (0, 0)))[0]
    return f"add {', '.join(change.values)} to {own}, {config.source}:{line}"


def suggestion_for(config: Config, seen: Seen) -> str:
    """What ``suggest`` would do about one ``/decisions`` entry, in one line."""
    result = plan(config, [seen])
    if result.changes:
        return "; ".join(describe(change, config) for change in result.changes)
    note = next((n for n in result.notes if n.kind != "alternative"), None)
    return note.text if note is not None else ""


# ---------------------------------------------------------------------- text edits at node marks


def edit(text: str, source: str, changes: list[Change],
         env: Mapping[str, str] | None = None) -> tuple[str, list[Change]]:
    """``text`` with the changes made at their YAML nodes, comments and layout kept, checked by loading it;
    and the changes left out because their list is a YAML anchor other rules use too (editing it would
    change those rules as well)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    rules = _mapping_value(root, "rules")
    assert isinstance(rules, yaml.SequenceNode)
    users: dict[int, int] = {}
    for node in rules.value:
        for key, value in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(value, yaml.CollectionNode):
                users[id(value)] = users.get(id(value), 0) + 1
    edits: list[tuple[int, int, int, str]] = []
    shared: list[Change] = []
    for order, change in enumerate(changes):
        node = rules.value[change.rule.index]
        assert isinstance(node, yaml.MappingNode)
        value = _mapping_value(node, change.field)
        key = next((k for k, v in node.value if v is value), None)
        if value is not None and key is not None and users.get(id(value), 0) > 1 \
                and value.start_mark.index > key.start_mark.index:
            shared.append(change)
            continue
        start, end, new = _edit(text, node, change)
        edits.append((start, order, end, new))
    out = text
    # from the end backwards, so earlier offsets stay right; at one offset the first change ends up first
    for start, _, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    parse(out, source, env)  # raises ConfigError if an edit broke the config: never hand out such a diff
    return out, shared


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _edit(text: str, rule: yaml.MappingNode, change: Change) -> tuple[int, int, str]:
    """(start, end, replacement) for one change."""
    own = next(((k, v) for k, v in rule.value if isinstance(k, yaml.ScalarNode) and k.value == change.field), None)
    if own is not None:
        key, value = own
        if isinstance(value, yaml.SequenceNode) and value.start_mark.index > key.start_mark.index:
            return _append(text, value, change.values)
        # an alias to a list written elsewhere, shared with other rules: this rule gets its own list
        start = key.end_mark.index
        colon = text.index(":", start)
        return colon + 1, _node_end(text, value, start), " " + _flow(_current(change) + list(change.values))
    return _add_key(text, rule, change.field, _current(change) + list(change.values))


def _current(change: Change) -> list[Any]:
    values = getattr(change.rule, change.field)
    return [] if values == ANY else list(values)


def _append(text: str, seq: yaml.SequenceNode, values: tuple[str, ...]) -> tuple[int, int, str]:
    if seq.flow_style:
        close = seq.end_mark.index - 1
        assert text[close] == "]"
        p = close - 1
        while p >= 0 and text[p] in " \t\r\n":
            p -= 1
        items = ", ".join(_scalar(v) for v in values)
        new = items if text[p] == "[" else f" {items}," if text[p] == "," else f", {items}"
        # one edit from the insertion point to past the bracket, taking spaces before a trailing comment
        return p + 1, close + 1 + _room(text, close + 1, len(new)), new + text[p + 1:close + 1]
    last = seq.value[-1]
    at = _line_end(text, _deep_end(text, last))
    line_start = text.rfind("\n", 0, last.start_mark.index) + 1
    prefix = text[line_start:last.start_mark.index]
    if not re.fullmatch(r"\s*-\s+", prefix):
        prefix = " " * max(last.start_mark.column - 2, 0) + "- "
    return at, at, "".join(f"\n{prefix}{_scalar(v)}" for v in values)


def _room(text: str, at: int, wanted: int) -> int:
    """How many of the spaces between ``at`` and a trailing comment an insertion may take, so the
    comment keeps its column (two spaces stay)."""
    m = re.compile(r"[ \t]*(?=#)").match(text, at)
    return 0 if m is None else max(0, min(wanted, len(m[0]) - 2))


def _add_key(text: str, rule: yaml.MappingNode, name: str, values: list[Any]) -> tuple[int, int, str]:
    if rule.flow_style:
        close = rule.end_mark.index - 1
        assert text[close] == "}"
        return close, close, f", {name}: {_flow(values)}"
    first_key = rule.value[0][0]
    at = _line_end(text, _deep_end(text, rule))
    return at, at, f"\n{' ' * first_key.start_mark.column}{name}: {_flow(values)}"


def _deep_end(text: str, node: yaml.Node) -> int:
    """Where the last character of ``node`` is, looking into its last item (a block collection's own end
    mark is where the next token starts, possibly lines later, after comments)."""
    while isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    end = node.end_mark.index
    while end > node.start_mark.index and text[end - 1] in " \t\r\n":
        end -= 1  # a block scalar (|, >) ends at the next line
    return end


def _node_end(text: str, node: yaml.Node, after: int) -> int:
    """The end of an alias token ``*name`` written after ``after``."""
    m = re.compile(r"\s*\*[^\s,\]}#]+").match(text, text.index(":", after) + 1)
    return m.end() if m else _line_end(text, after)


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end == -1 else end


def _flow(values: list[Any]) -> str:
    return "[" + ", ".join(_item(v) for v in values) + "]"


def _item(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_scalar(str(v))}" for k, v in value.items()) + "}"
    return _scalar(str(value))


def _scalar(value: str) -> str:
    """A YAML scalar for ``value``: plain when that reads back as the same string, else single-quoted."""
    if _PLAIN_RE.fullmatch(value) and value.lower() not in _YAML_WORDS and ": " not in value \
            and not value.endswith(":") and not re.fullmatch(r"[0-9.+\-eE_:]+", value):
        return value
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------- the diff


def unified_diff(old: str, new: str, path: str, config: Config, changes: list[Change]) -> str:
    """A unified diff ``git apply`` and ``patch -p1`` take; each hunk header names the rules it changes."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if a and not a[-1].endswith("\n") or b and not b[-1].endswith("\n"):
        return "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))  # rare: let difflib mark it
    spans = _rule_lines(old)
    out = [f"--- a/{path}\n", f"+++ b/{path}\n"]
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(3):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        touched = sorted(i for i in {_rule_at(spans, tag_i1) for tag, tag_i1, _, _, _ in group if tag != "equal"}
                         if i is not None)
        what = "; ".join(_hunk_label(config, changes, index) for index in touched)
        out.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@ {what}\n")
        for tag, x1, x2, y1, y2 in group:
            if tag == "equal":
                out += [" " + line for line in a[x1:x2]]
                continue
            out += ["-" + line for line in a[x1:x2]]
            out += ["+" + line for line in b[y1:y2]]
    return "".join(out) if len(out) > 2 else ""


def _range(start: int, stop: int) -> str:
    length = stop - start
    first = start + 1 if length else start
    return f"{first}" if length == 1 else f"{first},{length}"


def _rule_lines(text: str) -> list[tuple[int, int]]:
    """(first line, last line), 0-based, of each rule."""
    rules = _mapping_value(yaml.compose(text, Loader=yaml.SafeLoader), "rules")
    assert isinstance(rules, yaml.SequenceNode)
    return [(node.start_mark.line, text.count("\n", 0, _line_end(text, _deep_end(text, node)))) for node in rules.value]


def _rule_at(spans: list[tuple[int, int]], line: int) -> int | None:
    # an insertion lands on the line after its rule's last line: look one line back too
    for index, (first, last) in enumerate(spans):
        if first <= line <= last + 1:
            return index
    return None


def _hunk_label(config: Config, changes: list[Change], index: int) -> str:
    name = config.rules[index].name if index < len(config.rules) else f"rules[{index}]"
    parts = [_count(len(c.values), c.field.removeprefix("allow_")) for c in changes if c.rule.index == index]
    return f"rules[{index}] ({name}): add " + ", ".join(parts) if parts else f"rules[{index}] ({name})"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n != 1 else f"1 {what.removesuffix('s')}"


def shared_note(change: Change) -> Note:
    return Note(f"{_label(change.rule)}.{change.field} is a YAML anchor (&name) that other rules use too; "
                f"add {', '.join(change.values)} by hand where it belongs", sum(change.counts), "not-suggested")


def changes_text(changes: list[Change]) -> list[str]:
    return [f"{_label(c.rule)}: add {', '.join(c.values)} to {c.field}" for c in changes]
