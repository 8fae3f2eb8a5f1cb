"""Prometheus metrics, kept in a registry of each application's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from reading_history.core.db import Pool, pool_usage

NAMESPACE = "reading_history"
# Requests that matched no route share one label, so scanners cannot grow the series.
UNMATCHED_ROUTE = "unmatched"
EXPORT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PoolCollector(Collector):
    """Report the pool's connections at the moment of each scrape."""

    def __init__(self, get_pool: Callable[[], Pool | None]) -> None:
        self._get_pool = get_pool

    def collect(self) -> Iterator[Metric]:
        pool = self._get_pool()
        if pool is None:
            return

        usage = pool_usage(pool)
        connections = GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_connections",
            "Connections held by the pool, by state.",
            labels=["state"],
        )
        connections.add_metric(["in_use"], usage["in_use"])
        connections.add_metric(["idle"], usage["available"])
        yield connections
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_max_connections",
            "Most connections the pool may open.",
            value=usage["max"],
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_requests_waiting",
            "Requests waiting for a free connection.",
            value=usage["waiting"],
        )


class Metrics:
    """Every metric the service exposes at /metrics."""

    def __init__(self, get_pool: Callable[[], Pool | None]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(PoolCollector(get_pool))

        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, body included.",
            ["method", "route"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.export_duration = Histogram(
            "export_duration_seconds",
            "Time to stream one history export, by format.",
            ["format"],
            namespace=NAMESPACE,
            buckets=EXPORT_BUCKETS,
            registry=self.registry,
        )
        self.records_created = Counter(
            "history_records_created",
            "Reads recorded.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.records_skipped = Counter(
            "history_records_skipped",
            "Reads not recorded because of the user's privacy choices, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.preference_update_failures = Counter(
            "preference_update_failures",
            "Preference updates that failed, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.authentication_failures = Counter(
            "authentication_failures",
            "Requests refused for a missing, unknown or revoked token, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "rate_limited_requests",
            "Requests refused because their token was over its rate limit.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.foreign_user_refusals = Counter(
            "foreign_user_refusals",
            "Requests refused because their token belongs to another user.",
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def observe_request(
        self, *, method: str, route: str, status: int, seconds: float
    ) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.request_duration.labels(method=method, route=route).observe(seconds)

    def render(self, accept: str) -> tuple[bytes, str]:
        """Return the metrics in the format the scraper asked for, and its type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
