"""A bounded buffer of recent CORS decisions that were not plain allows (design §5 /decisions).

Costs one attribute check per request when nothing is denied: allowed decisions and
requests no rule matched are never stored.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

from .policy import Decision

DEFAULT_SIZE = 200


@dataclass(frozen=True, slots=True)
class Entry:
    time: float
    origin: str
    method: str
    path: str
    rule: str
    verdict: str
    reason: str
    mode: str


class DecisionLog:
    """The last ``size`` non-allow decisions, newest first, with counts by reason since start."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._entries: deque[Entry] = deque(maxlen=size)
        self._counts: Counter[str] = Counter()

    def record(self, decision: Decision, method: str, path: str, origin: str | None = None) -> None:
        if decision.verdict in ("allowed", "none"):
            return
        entry = Entry(time.time(), origin or decision.origin or "", method, path, decision.rule_name,
                      decision.verdict, decision.reason, "enforce" if decision.enforce else "report-only")
        self._entries.append(entry)
        self._counts[f"{entry.verdict}: {decision.detail}"] += 1

    def entries(self) -> list[Entry]:
        return list(reversed(self._entries))

    def counts(self) -> list[tuple[str, int]]:
        return self._counts.most_common()

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [asdict(e) for e in self.entries()],
            "counts": [{"reason": reason, "count": n} for reason, n in self.counts()],
        }
