"""Prometheus metrics of the server, in a registry of its own (several apps, one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """Requests and errors by path and status, latency of segment requests, the queue's depth
    and the sizes of the batches run.

    Arguments:
        queue: anything with `len()`: the requests waiting, read at every scrape.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "oneseg_requests", "HTTP requests answered", ["path", "status"], registry=self.registry
        )
        self.errors = Counter(
            "oneseg_errors",
            "requests answered with a status >= 400",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "oneseg_request_seconds",
            "time to answer POST /v1/segment",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "oneseg_queue_depth", "requests waiting for a batch", registry=self.registry
        )
        self.queue_depth.set_function(lambda: len(queue))
        self.batch_sizes = Histogram(
            "oneseg_batch_size",
            "images per forward",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )

    def record(self, path: str, status: int, seconds: float) -> None:
        known = path if path.startswith(("/v1/", "/metrics", "/healthz")) else "other"
        self.requests.labels(known, str(status)).inc()
        if status >= 400:
            self.errors.labels(known, str(status)).inc()
        if path == "/v1/segment" and status < 400:
            self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
