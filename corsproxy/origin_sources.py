"""``allow_origins`` entries kept outside the YAML: ``{file: PATH}`` and ``{env: NAME}`` (design §3).

A file holds one entry a line in any form an inline entry may take but ``{regex: ...}``; ``#`` starts a
comment (at the start of a line or after a space) and blank lines are ignored. A variable holds entries
separated by commas or whitespace. Both are checked as inline entries are, and every bad entry is
reported with where it is (``FILE:LINE:COL``, or the variable's name and the entry's number).

Made for SaaS custom-domain lists: 100,000 entries are parsed in one pass (a valid file is never
parsed twice) and their strings are shared with the rule's exact set.

Pure module: stdlib and :mod:`origins`; raises nothing, returns the problems found.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .origins import IndexedError, OriginSet, compile_origins

SOURCE_KEYS = frozenset({"file", "env"})
MAX_SOURCE_ERRORS = 50  # a wrong file (a CSV, a log) would otherwise print 100,000 lines
_COMMENT_RE = re.compile(r"(?:^|\s)#")
_ENV_SPLIT_RE = re.compile(r"[\s,]+")

SourceKind = Literal["file", "env"]


@dataclass(frozen=True, slots=True)
class OriginSource:
    """One ``{file:}`` or ``{env:}`` entry of a rule's ``allow_origins``, read."""

    index: int  # its position in allow_origins as written
    kind: SourceKind
    name: str  # the path as written, or the variable's name
    path: str  # the file as opened (relative to the config's folder), or the variable's name
    entries: tuple[str, ...]
    lines: Sequence[int]  # the 1-based line (file) or entry number (env) of each entry
    origins: OriginSet  # the entries compiled

    def where(self, i: int) -> str:
        """``customers.txt:12`` or ``$CORS_ORIGINS entry 3``, for messages about entry ``i``."""
        return f"{self.path}:{self.lines[i]}" if self.kind == "file" else f"${self.path} entry {self.lines[i]}"


@dataclass(frozen=True, slots=True)
class SourceProblem:
    line: int  # file line or entry number; 0 = the source as a whole
    column: int
    message: str


def is_source(entry: object) -> bool:
    """Whether an ``allow_origins`` item is ``{file: ...}`` or ``{env: ...}`` rather than an origin."""
    return isinstance(entry, Mapping) and bool(SOURCE_KEYS & set(entry))


def file_entries(text: str) -> tuple[list[str], array[int], list[SourceProblem]]:
    """The entries of an origins file with their line numbers, and the lines that are not one entry."""
    entries: list[str] = []
    lines: array[int] = array("I")
    problems: list[SourceProblem] = []
    for number, line in enumerate(text.splitlines(), 1):
        comment = _COMMENT_RE.search(line)
        body = line[: comment.start()] if comment else line
        words = body.split()
        if not words:
            continue
        if len(words) > 1:
            problems.append(SourceProblem(number, line.index(words[1]) + 1,
                                          f"{body.strip()!r} holds more than one entry; write one origin a line"))
            continue
        entries.append(words[0])
        lines.append(number)
    return entries, lines, problems


def env_entries(value: str) -> tuple[list[str], array[int]]:
    entries = [word for word in _ENV_SPLIT_RE.split(value) if word]
    return entries, array("I", range(1, len(entries) + 1))


def compile_entries(entries: list[str]) -> tuple[OriginSet | None, list[tuple[int, str]]]:
    """Compile entries in one pass; when one is bad, check each so that every bad one is named.

    Returns the set (None when any is bad) and ``(entry index, message)`` for each bad entry.
    """
    try:
        return compile_origins(entries), []
    except IndexedError:
        pass
    bad: list[tuple[int, str]] = []
    for i, entry in enumerate(entries):
        try:
            if entry.startswith(("{", "regex:", "^")):
                raise ValueError(f"{entry!r}: a file or variable holds origins, not patterns; "
                                 "write {regex: '...'} in the config's allow_origins instead")
            compile_origins([entry])
        except ValueError as exc:
            bad.append((i, str(exc)))
    return None, bad


def merge(sets: Sequence[OriginSet]) -> OriginSet:
    """One set admitting what any of ``sets`` admits (the one non-empty set itself, not a copy)."""
    sets = [s for s in sets if s.allow_all or s.allow_null or s.exact or s.wildcards or s.regexes] or list(sets[:1])
    if len(sets) == 1:
        return sets[0]
    exact: set[str] = set()
    for s in sets:
        exact |= s.exact
    return OriginSet(
        allow_all=any(s.allow_all for s in sets),
        allow_null=any(s.allow_null for s in sets),
        exact=frozenset(exact),
        wildcards=tuple(w for s in sets for w in s.wildcards),
        regexes=tuple(r for s in sets for r in s.regexes),
    )
