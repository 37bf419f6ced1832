"""Reading ``{file: PATH}`` and ``{env: NAME}`` origin entries for :mod:`config` (design §3).

Kept apart from the YAML reader so that the file's line and column, not the config's, are what an
error names: ``customers.txt:12:1: rules[1].allow_origins[0]: 'https://a.com/' has a path...``.
A file path is relative to the config file's folder, as every path in the config is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .origin_sources import (
    MAX_SOURCE_ERRORS,
    OriginSource,
    SourceProblem,
    compile_entries,
    env_entries,
    file_entries,
    merge,
)
from .origins import OriginSet


class Reader(Protocol):
    """What is needed of ``config._Reader``."""

    source: str
    env: Mapping[str, str]
    files: dict[str, bytes]
    issues: list[tuple[tuple[int, ...], str]]

    def error(self, path: str, message: str) -> None: ...
    def mark(self, path: str) -> tuple[int, int]: ...


def read_source(reader: Reader, item: Mapping[str, Any], path: str, index: int) -> OriginSource | None:
    """The entries of one ``{file:}``/``{env:}`` item, or None after reporting every problem."""
    if len(item) != 1 or not isinstance(next(iter(item.values())), str) or not next(iter(item.values())):
        reader.error(path, "write {file: customer-origins.txt} or {env: CORS_ORIGINS}: one key, a non-empty name")
        return None
    kind, name = next(iter(item.items()))
    if kind == "env":
        return _env(reader, name, path, index)
    return _file(reader, name, path, index)


def _file(reader: Reader, name: str, path: str, index: int) -> OriginSource | None:
    where = os.path.join(os.path.dirname(reader.source), name) if not os.path.isabs(name) else name
    try:
        data = Path(where).read_bytes()
        reader.files.setdefault(where, data)
        text = data.decode("utf-8")
    except OSError as exc:
        reader.files.setdefault(where, b"")  # watched all the same: creating it fixes the config
        reader.error(path, f"cannot read origins file {where!r} ({exc.strerror}); the path is relative to the "
                           "config file's folder")
        return None
    except UnicodeDecodeError:
        reader.error(path, f"origins file {where!r} is not UTF-8 text; save it as UTF-8")
        return None
    entries, lines, problems = file_entries(text)
    if not entries and not problems:
        reader.error(path, f"origins file {where!r} lists no origin; add one a line, or remove the entry")
        return None
    origins, bad = compile_entries(entries)
    text_lines = text.splitlines() if bad else []
    for i, message in bad:
        problems.append(SourceProblem(lines[i], text_lines[lines[i] - 1].index(entries[i]) + 1, message))
    if problems:
        _report(reader, path, where, sorted(problems, key=lambda p: (p.line, p.column)))
        return None
    assert origins is not None
    return OriginSource(index, "file", name, where, tuple(entries), lines, origins)


def _env(reader: Reader, name: str, path: str, index: int) -> OriginSource | None:
    value = reader.env.get(name, "")
    entries, numbers = env_entries(value)
    if not entries:
        state = "is empty" if name in reader.env else "is not set"
        reader.error(path, f"environment variable ${name} {state}; export it with the allowed origins, separated "
                           "by commas or spaces (e.g. 'https://a.example.com,https://b.example.com')")
        return None
    origins, bad = compile_entries(entries)
    if bad:
        reader.error(path, "; ".join(f"${name} entry {i + 1}: {message}" for i, message in bad[:MAX_SOURCE_ERRORS]))
        return None
    assert origins is not None
    return OriginSource(index, "env", name, name, tuple(entries), numbers, origins)


def _report(reader: Reader, path: str, where: str, problems: list[SourceProblem]) -> None:
    # Sorted after the config line that names the file, in the file's own line order.
    at = reader.mark(path)
    for problem in problems[:MAX_SOURCE_ERRORS]:
        reader.issues.append(((*at, problem.line, problem.column),
                              f"{where}:{problem.line}:{problem.column}: {path}: {problem.message}"))
    if len(problems) > MAX_SOURCE_ERRORS:
        reader.issues.append(((*at, 2**31, 0), f"{where}: {path}: {len(problems) - MAX_SOURCE_ERRORS} more "
                                               "bad lines not shown; is this the right file?"))


def merge_sources(inline: OriginSet, sources: list[OriginSource]) -> OriginSet:
    return merge([inline, *(s.origins for s in sources)])
