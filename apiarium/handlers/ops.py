"""GET /metrics: Prometheus text format (bind or firewall it as you would any exporter)."""
from __future__ import annotations

from ..metrics import CONTENT_TYPE
from .base import BaseHandler


class MetricsHandler(BaseHandler):
    endpoint = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.svc.metrics.render())
