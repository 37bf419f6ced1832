"""A bounded buffer of recent CORS decisions that were not plain allows (design §5 /decisions).

Costs one tuple-membership check per request when nothing is denied: allowed decisions and
requests no rule matched are never stored. The admin listener serves :meth:`DecisionLog.to_json`
(``Accept: application/json``) and :meth:`DecisionLog.render_html` at ``/decisions``.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from html import escape
from typing import Any, Protocol

from .policy import Decision

DEFAULT_SIZE = 200
DEFAULT_REFRESH = 5  # seconds between reloads of the /decisions page
# SECURITY: a reason quotes what the client sent (its Origin, a header name), so each client could add a row:
# at most MAX_REASONS distinct ones are counted, the rest under OTHER (design §5), whatever clients send.
MAX_REASONS = 100
OTHER = "other reasons"
MAX_UNEXPOSED = 100  # (rule, header) pairs counted, whatever the upstream sends
_NOT_LISTED = ("allowed", "none")
COLUMNS = ("time", "origin", "method", "path", "rule", "verdict", "reason", "mode")


class Observed(Protocol):
    """What :meth:`DecisionLog.observe` reads of a finished request (``exchange.Exchange`` has it)."""

    method: str
    path: str
    decision: Decision


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
        # Response headers a page could not read, by (rule, name): counted apart from the entries, so an
        # API that sends X-Request-Id on every answer never pushes the denials out of the buffer.
        self._unexposed: Counter[tuple[str, str]] = Counter()

    def observe(self, exchange: Observed) -> None:
        """A proxy observer (``build_app(observers=[log.observe])``)."""
        if exchange.decision.verdict not in _NOT_LISTED:
            self.record(exchange.decision, exchange.method, exchange.path)
        for name in getattr(exchange, "unexposed", ()):
            key = (exchange.decision.rule_name, name)
            if key in self._unexposed or len(self._unexposed) < MAX_UNEXPOSED:
                self._unexposed[key] += 1

    def record(self, decision: Decision, method: str, path: str, origin: str | None = None) -> None:
        if decision.verdict in _NOT_LISTED:
            return
        # An invalid or repeated Origin has no decision.origin; the reason quotes what was sent.
        entry = Entry(time.time(), origin or decision.origin or "", method, path, decision.rule_name,
                      decision.verdict, decision.reason, "enforce" if decision.enforce else "report-only")
        self._entries.append(entry)
        self._count(f"{entry.verdict}: {decision.detail}", 1)

    def _count(self, reason: str, n: int) -> None:
        counts = self._counts
        if reason not in counts and len(counts) >= MAX_REASONS + (OTHER in counts):
            reason = OTHER
        counts[reason] += n

    def entries(self) -> list[Entry]:
        return list(reversed(self._entries))

    def counts(self) -> list[tuple[str, int]]:
        return self._counts.most_common()

    @classmethod
    def merged(cls, parts: list[dict[str, Any]], size: int = DEFAULT_SIZE) -> DecisionLog:
        """One log from several :meth:`to_json` results (the supervisor's /decisions with --workers)."""
        log = cls(size)
        # a worker's entries carry the admin's "suggestion" and "time_iso" too: made again for the merged page
        fields = set(Entry.__dataclass_fields__)
        entries = (Entry(**{k: v for k, v in e.items() if k in fields}) for p in parts for e in p["entries"])
        log._entries.extend(sorted(entries, key=lambda e: e.time))
        for part in parts:
            for count in part["counts"]:
                log._count(count["reason"], count["count"])
            for item in part.get("unexposed", []):
                log._unexposed[(item["rule"], item["header"])] += item["count"]
        return log

    def to_json(self) -> dict[str, Any]:
        return {
            # time: epoch seconds (for scripts); time_iso: as the log writes it (ISO 8601, UTC)
            "entries": [asdict(e) | {"time_iso": iso_time(e.time)} for e in self.entries()],
            "counts": [{"reason": reason, "count": n} for reason, n in self.counts()],
            "unexposed": [{"rule": rule, "header": name, "count": n}
                          for (rule, name), n in self._unexposed.most_common()],
        }

    def render_html(self, rule: str | None = None, verdict: str | None = None, refresh: int = DEFAULT_REFRESH,
                    suggest: Suggester | None = None) -> str:
        """The ``/decisions`` page: self-contained, no script, every value escaped (origins are
        attacker-controlled), readable on a phone (rows turn into cards on narrow screens).

        ``rule`` and ``verdict`` filter the decisions shown (a form on the page sets them); the page
        reloads itself every ``refresh`` seconds, filters kept (0: never)."""
        every = self.entries()
        entries = [e for e in every if (rule is None or e.rule == rule) and (verdict is None or e.verdict == verdict)]
        counts = "".join(f"<tr><td>{escape(reason)}</td><td class=n>{n}</td></tr>" for reason, n in self.counts())
        counts += "".join(f"<tr><td>{escape(rule)}: response header {escape(name)} not readable by the page "
                          f"(not in expose_headers)</td><td class=n>{n}</td></tr>"
                          for (rule, name), n in self._unexposed.most_common())
        rows = "".join(_row(e, suggest) for e in entries)
        empty = "<p>No CORS request has been denied since the proxy started.</p>" if not every else ""
        return _PAGE.format(
            shown=len(entries), size=self._entries.maxlen,
            refresh=f'<meta http-equiv="refresh" content="{refresh}">' if refresh > 0 else "",
            filters=_filters(every, rule, verdict, refresh),
            counts=f"<table class=counts><tr><th>reason</th><th>count</th></tr>{counts}</table>" if counts else "",
            rows=f"<table class=log><thead><tr>{''.join(f'<th>{c}</th>' for c in _columns(suggest))}</tr></thead>"
                 f"<tbody>{rows}</tbody></table>" if rows else "",
            empty=empty,
        )


Suggester = Callable[[dict[str, Any]], str]  # an entry as to_json gives it -> suggest's change for it


def iso_time(epoch: float) -> str:
    """``2026-01-05T10:00:00.123Z``, as the log lines write time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def _filters(entries: list[Entry], rule: str | None, verdict: str | None, refresh: int) -> str:
    """A GET form (no script) choosing a rule and a verdict among those listed, and the refresh."""
    def select(name: str, values: set[str], chosen: str | None) -> str:
        options = "".join(f'<option{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in sorted(values))
        return f'<label>{name} <select name={name}><option value="">any</option>{options}</select></label>'

    again = "".join(f'<option value={n}{" selected" if n == refresh else ""}>{label}</option>'
                    for n, label in ((DEFAULT_REFRESH, f"every {DEFAULT_REFRESH} s"), (30, "every 30 s"), (0, "never")))
    return (f"<form class=filters method=get>{select('rule', {e.rule for e in entries}, rule)} "
            f"{select('verdict', {e.verdict for e in entries}, verdict)} "
            f"<label>refresh <select name=refresh>{again}</select></label> <button>show</button></form>")


def _columns(suggest: Suggester | None) -> tuple[str, ...]:
    return (*COLUMNS, "suggestion") if suggest is not None else COLUMNS


def _row(entry: Entry, suggest: Suggester | None = None) -> str:
    values = asdict(entry)
    if suggest is not None:
        values["suggestion"] = suggest(dict(values))
    values["time"] = iso_time(entry.time)
    cells = "".join(f'<td data-label="{c}" class="{c}">{escape(str(values[c]))}</td>' for c in _columns(suggest))
    return f'<tr class="{escape(entry.mode)}">{cells}</tr>'


# Plain HTML and inline CSS: no build step, no external asset, nothing to fetch.
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>corsproxy: recent CORS decisions</title>
{refresh}
<style>
body{{font:15px/1.4 system-ui,sans-serif;margin:1rem;color:#222;background:#fff}}
h1{{font-size:1.3rem}} h2{{font-size:1.05rem;margin-top:1.5rem}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;
vertical-align:top;overflow-wrap:break-word}}
td.time,td.method,td.rule,td.verdict,td.mode{{white-space:nowrap}}
th{{background:#f4f4f4}} td.n{{text-align:right}} td.reason{{font-weight:600}} td.verdict{{color:#a00}}
tr.report-only td.verdict{{color:#a60}} code{{background:#f4f4f4;padding:0 .2rem}}
form.filters{{margin:.5rem 0}} form.filters label{{margin-right:.8rem;white-space:nowrap}}
@media (max-width:700px){{table.log thead{{display:none}} table.log tr{{display:block;border:1px solid #ddd;
margin:.5rem 0;padding:.3rem}} table.log td{{display:block;border:0;padding:.1rem .3rem}}
table.log td{{white-space:normal}} table.log td::before{{content:attr(data-label) ": ";color:#666;font-weight:400}}}}
</style></head><body>
<h1>Recent CORS decisions that were not plain allows</h1>
<p>Newest first; {shown} shown of the last {size} at most. Times are UTC. The same reason is given by
<code>corsproxy explain</code> and the <code>CORS-Decision</code> header.</p>
<h2>Counts by reason (since start)</h2>
{counts}{empty}
<h2>Decisions</h2>
{filters}
{rows}
</body></html>
"""
