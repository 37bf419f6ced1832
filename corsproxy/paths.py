"""Request-path normalization and the ``*``/``**`` globs of ``rules[].paths``.

Globs are compiled once into anchored regexes. ``*`` matches within one segment,
``**`` (a whole segment) any number of segments: ``/api/**`` matches ``/api``,
``/api/`` and ``/api/a/b``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

DOT_SEGMENTS = frozenset({".", ".."})
_SEGMENT_SPLIT_RE = re.compile(r"[/\\]")


class BadPath(ValueError):
    """The request path cannot be matched safely (dot segments, raw or encoded)."""


def decode_path(raw_path: str) -> str:
    """The path a rule is matched against: no query, percent-decoded except ``%2F``.

    Raises :class:`BadPath` when a segment is ``.`` or ``..`` in any spelling, so that
    ``/public/..%2Fadmin`` can never reach ``/admin`` past the rules (design §3 Paths).
    """
    path = raw_path.split("?", 1)[0]
    if "%" not in path and "/." not in path and "\\" not in path:
        return path
    segments = []
    for raw in path.split("/"):
        seg = unquote(raw) if "%" in raw else raw
        # SECURITY: '..%2F', '%2e%2e' and '..\' would become a parent step in some upstreams,
        # and so would '..;x' in servlet containers, which drop ';' path parameters first.
        if any(piece.split(";", 1)[0] in DOT_SEGMENTS for piece in _SEGMENT_SPLIT_RE.split(seg)):
            raise BadPath(f"path {raw_path!r} has a '.' or '..' segment")
        segments.append(seg.replace("/", "%2F"))
    return "/".join(segments)


def resolve_dots(path: str) -> str:
    """Collapse dot segments (RFC 3986 §5.2.4), used only to pick a rule for a 400 answer."""
    out: list[str] = []
    for seg in _SEGMENT_SPLIT_RE.split(unquote(path.split("?", 1)[0])):
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    return "/".join(out) or "/"


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile one ``paths`` entry; raises ``ValueError`` with a fix."""
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern {pattern!r} must start with '/': write '/{pattern}'")
    parts = []
    for seg in pattern[1:].split("/"):
        if seg == "**":
            parts.append("(?:/.*)?")
        elif "**" in seg:
            raise ValueError(f"path pattern {pattern!r}: '**' must be a whole segment, as in '/api/**'")
        elif seg == "*":
            parts.append("/[^/]+")  # '/api/*' matches '/api/a', not '/api/'
        else:
            parts.append("/" + "[^/]*".join(re.escape(p) for p in seg.split("*")))
    return re.compile("".join(parts) or "/")


@dataclass(frozen=True, slots=True)
class PathSet:
    """A rule's ``paths``: the patterns as written and one combined anchored regex."""

    patterns: tuple[str, ...]
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def compile_paths(patterns: list[str]) -> PathSet:
    regexes = [compile_glob(p).pattern for p in patterns]
    return PathSet(tuple(patterns), re.compile("|".join(f"(?:{r})" for r in regexes)))
