"""The operator's own Prometheus metrics: how often it reconciles, how long, how it ends.

Served by prometheus-client's HTTP server in a thread on `--metrics-port` (the Helm chart
names the container port `metrics` and can add a PodMonitor or ServiceMonitor for it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

# No `*_created` series: Prometheus ignores them and they double a counter's series.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in 0.26


class OperatorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "rdsgate_operator_reconciles",
            "Reconciles run, by what they reconcile and how they ended",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "rdsgate_operator_reconcile_seconds",
            "How long reconciles take",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.admission_reviews = Counter(
            "rdsgate_operator_admission_reviews",
            "AdmissionReviews of Tokens answered, by webhook and result (allowed, refused)",
            ["webhook", "result"],
            registry=r,
        )
        self.access_requests = Counter(
            "rdsgate_operator_access_requests",
            "Access requests (Tokens waiting for an approval) by outcome: requested, "
            "approved, denied, expired",
            ["outcome"],
            registry=r,
        )
        self.access_request_seconds = Histogram(
            "rdsgate_operator_access_request_decision_seconds",
            "From a request to its approval or denial",
            buckets=(30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.tokens_unverified = Gauge(
            "rdsgate_operator_tokens_unverified",
            "Tokens with no requester stamped at admission (created before the webhooks), "
            "by namespace",
            ["namespace"],
            registry=r,
        )

        self.database_ready = Gauge(
            "rdsgate_operator_database_ready",
            "1 when a Database's Ready condition is True, 0 otherwise, by namespace and name",
            ["namespace", "database"],
            registry=r,
        )

    @contextmanager
    def reconcile(self, kind: str) -> Iterator[None]:
        """Counts one reconcile of `kind` (database, access, diagnosis) and times it."""
        started = time.perf_counter()
        result = "error"
        try:
            yield
            result = "ok"
        finally:
            self.reconciles.labels(kind, result).inc()
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's port
        start_http_server(port, address, registry=self.registry)
