"""Risky-rule warnings for ``corsproxy check`` (design §5): legal configs that likely admit
more than their author meant. Each warning is ``FILE:LINE: warning: rules[N].field: why``."""

from __future__ import annotations

from collections.abc import Iterator

from .config import Config, Rule


def lint(config: Config) -> list[str]:
    """Every warning for ``config``, in file order."""
    found = [w for rule in config.rules for w in _rule_warnings(config, rule)]
    return [f"{config.source}:{config.marks.get(path, (1, 1))[0]}: warning: {path}: {why}" for path, why in found]


def _rule_warnings(config: Config, rule: Rule) -> Iterator[tuple[str, str]]:
    base = f"rules[{rule.index}]"
    for i, entry in enumerate(rule.allow_origins):
        if entry == "null":
            yield (f"{base}.allow_origins[{i}]", "'null' is the origin of sandboxed frames and file: pages, which "
                   "any site can create; allow it only if you must")
