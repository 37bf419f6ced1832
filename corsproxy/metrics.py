"""Prometheus metrics on a registry of the app's own (never prometheus_client's global REGISTRY).

Two kinds of collectors:

- :class:`Metrics` counts requests. It is fed by the proxy's ``started`` hook and observers
  (one call each per request, so both stay a few dict look-ups and adds).
- :class:`ConfigState` holds ``corsproxy_config_reloads_total`` and ``corsproxy_config_info``.
  It is a custom collector read at scrape time, so the process that reloads (the only process,
  or the supervisor with ``--workers``) owns it and nothing is double-counted.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers before they
start, so prometheus-client's multiprocess mode writes their values to files there; the supervisor's
``/metrics`` reads them all with :class:`MultiProcessCollector` (:func:`multiprocess_registry`).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Method label values are bounded: other methods the HTTP parser lets through (WebDAV's PROPFIND...) are "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def verdict_label(verdict: str, enforce: bool) -> str:
    """The verdict as the access log and metrics show it; a report-only rule's is marked."""
    return verdict if enforce else f"{verdict} (report-only)"


class Metrics:
    """Request metrics. ``started``/``observe`` are the proxy hooks (see proxy.Exchange)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("corsproxy_requests", "Requests answered, by rule, method, status class and "
                                "CORS verdict", ("rule", "method", "status_class", "verdict"), registry=registry)
        self.preflights = Counter("corsproxy_preflights", "CORS preflights, by rule and verdict",
                                  ("rule", "verdict"), registry=registry)
        self.upstream_errors = Counter("corsproxy_upstream_errors", "Upstream failures, by kind (refused, dns, "
                                       "timeout, reset, tls, protocol, aborted)", ("kind",), registry=registry)
        self.duration = Histogram("corsproxy_request_duration_seconds", "Time from request to last byte sent",
                                  buckets=DURATION_BUCKETS, registry=registry)
        bytes_total = Counter("corsproxy_bytes", "Body bytes, in (from clients) and out (to clients)",
                              ("direction",), registry=registry)
        self.bytes_in, self.bytes_out = bytes_total.labels("in"), bytes_total.labels("out")
        # livesum: with workers, the sum over live processes (a dead worker's requests are gone with it).
        self.in_flight = Gauge("corsproxy_in_flight_requests", "Requests being handled now",
                               registry=registry, multiprocess_mode="livesum")
        # Children cached by label tuple: labels() takes a lock and validates on every call.
        self._requests: dict[tuple[str, str, str, str], Any] = {}
        self._preflights: dict[tuple[str, str], Any] = {}

    def started(self, ex: Any) -> None:
        self.in_flight.inc()

    def observe(self, ex: Any) -> None:
        """Count one finished request (an ``Exchange``)."""
        self.in_flight.dec()
        decision = ex.decision
        verdict = verdict_label(decision.verdict, decision.enforce)
        rule = decision.rule_name
        method = ex.method if ex.method in KNOWN_METHODS else "other"
        status = ex.status // 100
        key = (rule, method, STATUS_CLASSES[status] if 0 <= status < 6 else "0xx", verdict)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()
        if decision.kind == "preflight":
            pkey = (rule, verdict)
            pchild = self._preflights.get(pkey)
            if pchild is None:
                pchild = self._preflights[pkey] = self.preflights.labels(*pkey)
            pchild.inc()
        if ex.upstream_error:
            self.upstream_errors.labels(ex.upstream_error).inc()
        self.duration.observe(ex.duration)
        if ex.bytes_in:
            self.bytes_in.inc(ex.bytes_in)
        if ex.bytes_out:
            self.bytes_out.inc(ex.bytes_out)


class ConfigState(Collector):
    """Reload counts and the sha256 of the config in force, read at scrape time."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        self.reloads: Tally[str] = Tally({"ok": 0, "failed": 0})

    def loaded(self, sha256: str) -> None:
        self.sha256 = sha256
        self.reloads["ok"] += 1

    def failed(self) -> None:
        self.reloads["failed"] += 1

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily("corsproxy_config_reloads", "Config reloads, by result (ok, failed)",
                                      labels=("result",))
        for result, n in sorted(self.reloads.items()):
            reloads.add_metric((result,), n)
        yield reloads
        info = GaugeMetricFamily("corsproxy_config_info", "The config in force (1, labelled with its sha256)",
                                 labels=("sha256",))
        info.add_metric((self.sha256,), 1)
        yield info


def multiprocess_registry(path: str, state: ConfigState) -> CollectorRegistry:
    """The supervisor's registry: every worker's values from ``path``, plus the config state."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(state)
    return registry
