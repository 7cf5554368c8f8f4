"""Prometheus metrics and the health endpoints, on their own port.

`/healthz` answers while the process runs; `/readyz` only when the TLS material, the access
file and AWS credentials have loaded and the listener accepts (and not while draining); `/metrics` is
prometheus-client's exposition; `/diagnose` the latest start-up/periodic checks as JSON;
`/pinning` the statements that made RDS Proxy pin sessions, per identity and reason.
The HTTP server is prometheus-client's WSGI server in a daemon thread, so scrapes never
wait on the event loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from .pinning import PinningStats

# No `*_created` series: Prometheus ignores them (rate() needs no start time), and each one
# doubles the series of a counter or histogram child (issue 16).
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in 0.26

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections_active = Gauge(
            "rdsgate_connections_active", "Client sessions open now", registry=r
        )
        self.connections_total = Counter(
            "rdsgate_connections", "Client connections accepted", registry=r
        )
        self.sessions_total = Counter(
            "rdsgate_sessions", "Sessions relayed to the upstream after log-in", registry=r
        )
        self.auth_failures = Counter(
            "rdsgate_auth_failures",
            "Log-ins refused, by reason",
            ["reason"],
            registry=r,
        )
        self.sessions_ended = Counter(
            "rdsgate_sessions_ended",
            "Sessions ended, by why",
            ["reason"],
            registry=r,
        )
        self.token_mints = Counter(
            "rdsgate_iam_token_mints", "RDS IAM auth tokens signed", registry=r
        )
        self.token_cache_hits = Counter(
            "rdsgate_iam_token_cache_hits", "Log-ins that reused a cached IAM token", registry=r
        )
        self.upstream_connect_seconds = Histogram(
            "rdsgate_upstream_connect_seconds",
            "TCP + TLS + IAM log-in to the upstream",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.upstream_errors = Counter(
            "rdsgate_upstream_errors",
            "Upstream connections that failed, by kind",
            ["kind"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "rdsgate_audit_dropped_lines",
            "Audit lines dropped because stdout was not read and the buffer was full",
            registry=r,
        )
        self.warm_taken = Counter(
            "rdsgate_upstream_warm",
            "Log-ins that took a warm upstream connection (hit) or had to open one (miss)",
            ["result"],
            registry=r,
        )
        self.warm_idle = Gauge(
            "rdsgate_upstream_warm_idle", "Warm upstream connections waiting now", registry=r
        )
        self.bytes = Counter(
            "rdsgate_bytes",
            "Bytes relayed",
            ["direction"],
            registry=r,
        )
        self.access_reloads = Counter(
            "rdsgate_access_reloads",
            "Access-file loads, by result",
            ["result"],
            registry=r,
        )
        self.access_grants = Gauge(
            "rdsgate_access_grants", "Grants in the access file in force", registry=r
        )
        self.ready = Gauge("rdsgate_ready", "1 when the proxy accepts sessions", registry=r)
        self.readiness_failing = Gauge(
            "rdsgate_readiness_failing",
            "1 while this check keeps the proxy from being ready (tls, access, aws, listener)",
            ["check"],
            registry=r,
        )
        self.pinning_statements = Counter(
            "rdsgate_pinning_statements",
            "Statements that make RDS Proxy pin the session to one database connection",
            ["database", "reason"],
            registry=r,
        )
        #: The same per identity, bounded, served at /pinning.
        self.pinning = PinningStats()
        self.bytes_in = self.bytes.labels("client_to_upstream")
        self.bytes_out = self.bytes.labels("upstream_to_client")


class Health:
    """Readiness inputs, written by the event loop and read by the HTTP thread."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {
            "tls": "not loaded yet",
            "access": "not loaded yet",
            "aws": "not checked yet",
            # Ready means a client can connect: not before the listener accepts.
            "listener": "not listening yet",
        }
        self.draining = False
        self.diagnosis: list[dict[str, Any]] = []

    def set(self, part: str, problem: str | None) -> None:
        if problem is None:
            self.problems.pop(part, None)
        else:
            self.problems[part] = problem

    @property
    def ready(self) -> bool:
        return not self.problems and not self.draining


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _app(metrics: Metrics, health: Health) -> WsgiApp:
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if health.ready:
                return _text(start_response, "200 OK", "ready\n")
            reasons = ["draining"] if health.draining else []
            reasons += [f"{k}: {v}" for k, v in sorted(health.problems.items())]
            return _text(start_response, "503 Service Unavailable", "\n".join(reasons) + "\n")
        if path == "/diagnose":
            body = json.dumps({"findings": health.diagnosis}, indent=2) + "\n"
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body.encode()]
        if path == "/pinning":
            body = json.dumps(metrics.pinning.snapshot(), indent=2) + "\n"
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body.encode()]
        if path == "/metrics":
            result: Iterable[bytes] = prom(environ, start_response)
            return result
        return _text(start_response, "404 Not Found", "not found\n")

    return app


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


def serve(address: str, port: int, metrics: Metrics, health: Health) -> ThreadingWSGIServer:
    """Starts the metrics/health HTTP server in a daemon thread."""
    httpd = make_server(
        address, port, _app(metrics, health), ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
