"""Logging: the access log (one line a request) and the process's own lines, as text or JSON.

The access log is its own logger, ``corsproxy.access``, always at ``info`` (denials too, with
their reason) and switched by ``logging.access_log`` rather than by ``logging.level``, as nginx's
``access_log`` is independent of its ``error_log`` level. With the access log off, denials are
still logged (one ``corsproxy`` line at ``info`` with the reason).

With ``logging.format: json`` every line, the access log's and everyone else's (aiohttp's
included), is one JSON object: ``time``, ``level``, ``logger``, ``pid`` and either ``message``
or the access-log fields (:data:`ACCESS_FIELDS`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

ACCESS_LOGGER = "corsproxy.access"
ACCESS_FIELDS = ("time", "client", "method", "path", "status", "bytes", "bytes_in", "duration", "rule", "verdict",
                 "origin")
_TEXT = '%s "%s %s" %d %dB %.1fms rule=%s verdict=%s origin=%s%s'

log = logging.getLogger(ACCESS_LOGGER)
_app_log = logging.getLogger("corsproxy")


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}[{record.process}]: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line; an access-log record's fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "pid": record.process}
        fields = getattr(record, "access", None)
        if fields is not None:
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup` installed, so a reload replaces it instead of adding one."""


def setup(level: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """(Re)configure the root logger: ``level`` for the app's lines, ``fmt`` text or json.

    Returns the handler it installed (a test removes it again)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    handler = _OurHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    log.setLevel(logging.INFO)  # the access log follows logging.access_log, not logging.level
    return handler


class AccessLog:
    """The access-log observer; ``enabled`` follows ``logging.access_log`` across reloads."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def observe(self, ex: Any) -> None:
        """Log one finished request (an ``Exchange``)."""
        d = ex.decision
        denied = d.verdict.startswith("denied")
        if not self.enabled:
            if denied:  # design §4: a denial's reason is always logged, access log or not
                _app_log.info("CORS %s%s: %s %s: %s", d.verdict, "" if d.enforce else " (report-only)", ex.method,
                              ex.path, d.reason)
            return
        verdict = d.verdict if d.enforce else f"{d.verdict} (report-only)"
        fields = {
            "client": ex.client, "method": ex.method, "path": ex.path, "status": ex.status,
            "bytes": ex.bytes_out, "bytes_in": ex.bytes_in, "duration": round(ex.duration, 6),
            "rule": d.rule_name, "verdict": verdict, "origin": d.origin or "-",
        }
        if denied:
            fields["reason"] = d.reason
        if ex.upstream_error:
            fields["upstream_error"] = ex.upstream_error
        if getattr(ex, "unexposed", ()):  # for `corsproxy suggest`'s expose_headers
            fields["unexposed"] = list(ex.unexposed)
        extra = f' reason="{d.reason}"' if denied else ""
        if ex.upstream_error:
            extra += f" upstream_error={ex.upstream_error}"
        kept = getattr(ex, "upstream_cors", None)
        if kept is not None:  # upstream_cors: keep kept the upstream's CORS headers or replaced them, and why
            fields["upstream_cors"], fields["upstream_cors_reason"] = kept
            extra += f' upstream_cors={kept[0]} upstream_cors_reason="{kept[1]}"'
        log.info(_TEXT, ex.client, ex.method, ex.path, ex.status, ex.bytes_out, ex.duration * 1000, d.rule_name,
                 verdict, fields["origin"], extra, extra={"access": fields})
