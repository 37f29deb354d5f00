"""Prometheus metrics, in a registry of the gateway's own (no process-global state).

    apiarium_requests_total{endpoint, model, status}     every answered request
    apiarium_request_duration_seconds{endpoint}          time to the last byte
    apiarium_upstream_latency_seconds{provider}          request sent → upstream headers
    apiarium_upstream_ttfb_seconds{provider}             request sent → first relayed byte
    apiarium_active_streams                              SSE responses in progress
    apiarium_rate_limited_total{reason}                  429s the gateway itself gave
    apiarium_keys                                        active keys
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, key_count: Callable[[], int] = lambda: 0):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("apiarium_requests", "Requests answered",
                                ("endpoint", "model", "status"), registry=r)
        self.duration = Histogram("apiarium_request_duration_seconds",
                                  "Time from request to last byte", ("endpoint",),
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram("apiarium_upstream_latency_seconds",
                                          "Upstream request sent to response headers",
                                          ("provider",), buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_ttfb = Histogram("apiarium_upstream_ttfb_seconds",
                                       "Upstream request sent to the first relayed byte",
                                       ("provider",), buckets=_LATENCY_BUCKETS, registry=r)
        self.active_streams = Gauge("apiarium_active_streams", "SSE responses in progress",
                                    registry=r)
        self.rate_limited = Counter("apiarium_rate_limited", "429s given by the gateway",
                                    ("reason",), registry=r)
        self.keys = Gauge("apiarium_keys", "Active API keys", registry=r)
        self.keys.set_function(key_count)
        self._children: dict[tuple, tuple] = {}

    def observe_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """Count one answered request (label children are looked up once, then cached)."""
        key = (endpoint, model, status)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:     # bounded: models and statuses are few
                self._children.clear()
            child = self._children[key] = (self.requests.labels(endpoint, model, str(status)),
                                           self.duration.labels(endpoint))
        child[0].inc()
        child[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
