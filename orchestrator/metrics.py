"""Prometheus metrics of one service instance (its own registry: no module-level state).

Counters and histograms are updated where things happen (``observe_run`` by the HTTP layer,
``observe_boot`` by sandboxes and pools); pool gauges are read from the executor at scrape
time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _PoolCollector:
    def __init__(self, status: Callable[[], dict]):
        self._status = status

    def collect(self):
        status = self._status()
        size = GaugeMetricFamily("sandbox_pool_size", "Configured warm sandboxes per pool profile", labels=["profile"])
        ready = GaugeMetricFamily("sandbox_pool_ready", "Warm sandboxes ready now", labels=["profile"])
        booting = GaugeMetricFamily("sandbox_pool_booting", "Warm sandboxes booting now", labels=["profile"])
        for key, pool in status.get("pools", {}).items():
            size.add_metric([key], pool["size"])
            ready.add_metric([key], pool["ready"])
            booting.add_metric([key], pool["booting"])
        running = GaugeMetricFamily("sandbox_runs_in_progress", "Requests holding a sandbox now")
        running.add_metric([], status.get("running", 0))
        return [size, ready, booting, running]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("sandbox_run_requests", "POST /run requests by language and result status",
                                ["language", "status"], registry=self.registry)
        self.latency = Histogram("sandbox_run_duration_seconds", "POST /run latency, end to end", ["language"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.boots = Histogram("sandbox_boot_duration_seconds", "Time from creating a sandbox to ready",
                               ["profile", "kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.limits = Counter("sandbox_limit_hits", "Runs stopped by a limit (time, memory, output)", ["limit"],
                              registry=self.registry)
        self.rejected = Counter("sandbox_static_check_rejections", "Runs rejected by the static check",
                                ["language"], registry=self.registry)
        self.unauthorized = Counter("sandbox_unauthorized_requests", "Requests refused for a missing or wrong token",
                                    registry=self.registry)
        self.rate_limited = Counter("sandbox_rate_limited_requests", "Requests refused by the rate limit",
                                    registry=self.registry)
        self.refused = Counter("sandbox_refused_runs", "Runs refused before any sandbox saw them (HTTP 503): "
                               "busy (no slot within the wait) or draining", ["reason"], registry=self.registry)

    def watch_pools(self, status: Callable[[], dict]) -> None:
        self.registry.register(_PoolCollector(status))

    def observe_run(self, language: str, result: dict, seconds: float) -> None:
        self.requests.labels(language, result["status"]).inc()
        self.latency.labels(language).observe(seconds)
        if result.get("resource_limit_type"):
            self.limits.labels(result["resource_limit_type"]).inc()
        if result.get("exit_code") == -999:
            self.rejected.labels(language).inc()

    def observe_boot(self, profile: str, kind: str, seconds: float) -> None:
        self.boots.labels(profile, kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
