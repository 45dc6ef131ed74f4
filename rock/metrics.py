"""Prometheus metrics of one manager, served as text at `GET /metrics`.

A registry per service (not the global one) so that several managers in one process, as in
tests, do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.create_seconds = Histogram(
            "rock_create_seconds",
            "Sandbox create latency, by kind (cold, warm, fork)",
            ["kind"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.active = Gauge("rock_active_sandboxes", "Sandboxes currently owned by this manager", registry=r)
        self.pool_ready = Gauge("rock_warm_pool_ready", "Started containers waiting in the warm pool", registry=r)
        self.exec_total = Counter(
            "rock_exec_total", "Execs run, by mode (oneshot, stream, session)", ["mode"], registry=r
        )
        self.exec_seconds = Histogram(
            "rock_exec_seconds", "Exec wall time, by mode", ["mode"], registry=r, buckets=LATENCY_BUCKETS
        )
        self.errors = Counter("rock_errors_total", "Error responses, by error code", ["code"], registry=r)
        self.chunk_streams = Gauge("rock_chunk_streams", "Open GET /v1/chunks/stream subscriptions", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
