"""Prometheus metrics on a registry of the app's own (never prometheus_client's global REGISTRY).

Two kinds of collectors:

- :class:`Metrics` counts requests. It is fed by the proxy's ``started`` hook and observers
  (one call each per request, so both stay a few dict look-ups and adds) and published to
  prometheus-client's objects by the admin's scrape and the server's one-second poll.
- :class:`ConfigState` holds ``corsproxy_config_reloads_total`` and ``corsproxy_config_info``.
  It is a custom collector read at scrape time, so the process that reloads (the only process,
  or the supervisor with ``--workers``) owns it and nothing is double-counted.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers before they
start, so prometheus-client's multiprocess mode writes their values to files there; the supervisor's
``/metrics`` reads them all with :class:`MultiProcessCollector` (:func:`multiprocess_registry`).
"""

from __future__ import annotations

from bisect import bisect_left
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
    """Request metrics. ``started``/``observe`` are the proxy hooks (see exchange.Exchange).

    The hooks count in plain ints; :meth:`publish` hands the counts to prometheus-client before each
    scrape, every second and at shutdown. prometheus-client takes a lock on every change (and in
    multiprocess mode writes a file), which was ~1.5 µs of a ~17 µs preflight. The duration histogram
    is counted the same way, into its buckets here (``Histogram.observe`` alone took 1 µs); prometheus-client
    has no public way to add many observations, so :meth:`publish` adds them to the histogram's own values
    (private members: corsproxy/internals.py lists them, tests/test_internals.py checks them).
    """

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
        # Not yet published: (rule, method, status class, verdict, is a preflight) -> requests.
        self._pending: Tally[tuple[str, str, str, str, bool]] = Tally()
        self._errors: Tally[str] = Tally()
        self._bytes = [0, 0]  # in, out
        self._started = self._finished = 0  # in flight: their difference
        self._durations = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket (the last is +Inf), not cumulative
        self._duration_sum = 0.0

    def started(self, ex: Any) -> None:
        self._started += 1

    def observe(self, ex: Any) -> None:
        """Count one finished request (an ``Exchange``)."""
        self._finished += 1
        decision = ex.decision
        status = ex.status // 100
        self._pending[(decision.rule_name, ex.method if ex.method in KNOWN_METHODS else "other",
                       STATUS_CLASSES[status] if 0 <= status < 6 else "0xx",
                       verdict_label(decision.verdict, decision.enforce), decision.kind == "preflight")] += 1
        if ex.upstream_error:
            self._errors[ex.upstream_error] += 1
        self._durations[bisect_left(DURATION_BUCKETS, ex.duration)] += 1  # (first bound >= it, as observe)
        self._duration_sum += ex.duration
        self._bytes[0] += ex.bytes_in
        self._bytes[1] += ex.bytes_out

    def publish(self) -> None:
        """Hand what was counted since the last call to prometheus-client."""
        pending, self._pending = self._pending, Tally()
        for (rule, method, status_class, verdict, preflight), n in pending.items():
            self.requests.labels(rule, method, status_class, verdict).inc(n)
            if preflight:
                self.preflights.labels(rule, verdict).inc(n)
        errors, self._errors = self._errors, Tally()
        for kind, n in errors.items():
            self.upstream_errors.labels(kind).inc(n)
        (bytes_in, bytes_out), self._bytes = self._bytes, [0, 0]
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)
        self.in_flight.set(self._started - self._finished)
        durations, self._durations = self._durations, [0] * len(self._durations)
        for bucket, n in zip(self.duration._buckets, durations):
            if n:
                bucket.inc(n)
        if self._duration_sum:
            self.duration._sum.inc(self._duration_sum)
            self._duration_sum = 0.0


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
