"""Prometheus metrics, in a registry of the gateway's own (no process-global state).

    apiarium_requests_total{endpoint, dialect, model, status}   every answered request
    apiarium_request_duration_seconds{endpoint, dialect}        time to the last byte
    apiarium_upstream_latency_seconds{provider}          request sent → upstream headers
    apiarium_upstream_ttfb_seconds{provider}             request sent → first relayed byte
    apiarium_active_streams                              SSE responses in progress
    apiarium_rate_limited_total{reason}                  429s the gateway itself gave
    apiarium_keys                                        active keys
    apiarium_limiter_backend_errors_total                calls to the shared limiter (Redis)
                                                         that failed or timed out
    apiarium_limiter_fallback_total{mode}                requests decided without it, while
                                                         it was down: closed (503) or local

The values are plain numbers the event loop adds to (one thread touches them: no locks);
prometheus_client renders them at scrape time through a collector.  Its own metric classes
take a lock per increment, and a request makes seven of them: measurable on the hot path.

With workers (``apiarium serve --workers N``), each worker ``save``s its values every second
(and when it stops) to ``<shared_dir>/<pid>.json``, a private folder the supervisor made; a
worker's ``/metrics`` is the sum of its own values, the other workers' files, and
``dead.json``, where the supervisor folds the counters of each worker that exits
(``fold_dead``), so totals never go back when a worker is replaced.  Gauges are summed over
live workers only; ``apiarium_keys`` is the answering worker's count (every worker has the
same keys).
"""
from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
DEAD = "dead.json"        # the folded totals of workers that exited
# a snapshot: family name -> {"kind": counter|gauge|histogram, "values": [[labels, value]]}
# (a histogram's value: [bucket counts..., sum])
Snapshot = dict[str, dict[str, Any]]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)        # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*map(str, map(float, self.bounds)), "+Inf"), self.counts,
                            strict=True):
            total += n
            out.append((bound, total))
        return out


_Child = TypeVar("_Child", bound="_Count | _Histogram")


class Family(Generic[_Child]):
    """A metric with labels; ``labels(...)`` returns the child to ``inc`` or ``observe``
    (a ``_Histogram`` for kind "histogram", else a ``_Count``)."""

    def __init__(self, kind: str, name: str, doc: str, labelnames: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = _LATENCY_BUCKETS):
        self.kind, self.name, self.doc, self.labelnames = kind, name, doc, labelnames
        self.buckets = buckets
        self._children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: str) -> _Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = cast(_Child, (
                _Histogram(self.buckets) if self.kind == "histogram" else _Count()))
        return child

    def snapshot(self) -> dict[str, Any]:
        values: list[list[Any]] = []
        for labels, child in list(self._children.items()):
            if isinstance(child, _Histogram):
                values.append([list(labels), [*child.counts, child.sum]])
            else:
                values.append([list(labels), cast(_Count, child).value])
        return {"kind": self.kind, "values": values}

    def add(self, values: list[list[Any]]) -> None:
        """Add a snapshot's values (another worker's) to this family's."""
        for labels, value in values:
            child = self.labels(*labels)
            if isinstance(child, _Histogram):
                if len(value) != len(child.counts) + 1:
                    continue                   # another version's buckets: not comparable
                for i, n in enumerate(value[:-1]):
                    child.counts[i] += int(n)
                child.sum += float(value[-1])
            else:
                cast(_Count, child).inc(float(value))

    def empty(self) -> Family[_Child]:
        return Family(self.kind, self.name, self.doc, self.labelnames, self.buckets)

    def collect(self) -> Metric:
        names = list(self.labelnames)
        if self.kind == "histogram":
            fam = HistogramMetricFamily(self.name, self.doc, labels=names)
            for values, child in list(self._children.items()):
                h = cast(_Histogram, child)
                fam.add_metric(list(values), h.cumulative(), h.sum)
            return fam
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        counts = cls(self.name, self.doc, labels=names)
        for values, child in list(self._children.items()):
            counts.add_metric(list(values), cast(_Count, child).value)
        return counts


class Metrics:
    requests: Family[_Count]
    duration: Family[_Histogram]
    upstream_latency: Family[_Histogram]
    upstream_ttfb: Family[_Histogram]
    _streams: Family[_Count]
    rate_limited: Family[_Count]
    limiter_errors: Family[_Count]
    limiter_fallback: Family[_Count]

    def __init__(self, key_count: Callable[[], int] = lambda: 0,
                 shared_dir: Path | None = None):
        self.requests = Family("counter", "apiarium_requests", "Requests answered",
                               ("endpoint", "dialect", "model", "status"))
        self.duration = Family("histogram", "apiarium_request_duration_seconds",
                               "Time from request to last byte", ("endpoint", "dialect"))
        self.upstream_latency = Family("histogram", "apiarium_upstream_latency_seconds",
                                       "Upstream request sent to response headers",
                                       ("provider",))
        self.upstream_ttfb = Family("histogram", "apiarium_upstream_ttfb_seconds",
                                    "Upstream request sent to the first relayed byte",
                                    ("provider",))
        self._streams = Family("gauge", "apiarium_active_streams", "SSE responses in progress")
        self.active_streams = self._streams.labels()
        self.rate_limited = Family("counter", "apiarium_rate_limited",
                                   "429s given by the gateway", ("reason",))
        self.limiter_errors = Family("counter", "apiarium_limiter_backend_errors",
                                     "Shared limiter (Redis) calls that failed or timed out")
        self.limiter_fallback = Family("counter", "apiarium_limiter_fallback",
                                       "Requests decided while the shared limiter was down",
                                       ("mode",))
        self._key_count = key_count
        self.shared_dir = shared_dir
        self._own = f"{os.getpid()}.json"
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe_request(self, endpoint: str, dialect: str, model: str, status: int,
                        seconds: float) -> None:
        """Count one answered request (``dialect``: the API it spoke, openai / responses /
        anthropic)."""
        self.requests.labels(endpoint, dialect, model, str(status)).inc()
        self.duration.labels(endpoint, dialect).observe(seconds)

    def _families(self) -> tuple[Family, ...]:
        return (self.requests, self.duration, self.upstream_latency, self.upstream_ttfb,
                self._streams, self.rate_limited, self.limiter_errors, self.limiter_fallback)

    def snapshot(self) -> Snapshot:
        return {fam.name: fam.snapshot() for fam in self._families()}

    def save(self) -> None:
        """Write this worker's values where the others read them (with workers only)."""
        if self.shared_dir is not None:
            _write(self.shared_dir / self._own, self.snapshot())

    def collect(self) -> Iterator[Metric]:
        if self.shared_dir is None:
            for fam in self._families():
                yield fam.collect()
        else:
            others = [(path.name != DEAD, _read(path))
                      for path in sorted(self.shared_dir.glob("*.json"))
                      if path.name != self._own]
            for fam in self._families():
                total = fam.empty()
                total.add(fam.snapshot()["values"])
                for alive, snap in others:
                    if fam.name in snap and (alive or fam.kind != "gauge"):
                        total.add(snap[fam.name]["values"])
                yield total.collect()
        yield GaugeMetricFamily("apiarium_keys", "Active API keys", value=self._key_count())

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _read(path: Path) -> Snapshot:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):      # gone meanwhile (folded), or foreign
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, snap: Snapshot) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(snap))
    os.replace(tmp, path)                          # readers see the old file or the new one


def fold_dead(shared_dir: Path, pid: int) -> None:
    """A worker exited: add its counters and histograms (not its gauges) to ``dead.json``
    and remove its file (the supervisor calls this, one worker at a time)."""
    path = shared_dir / f"{pid}.json"
    snap = _read(path)
    dead = _read(shared_dir / DEAD)
    for name, fam in snap.items():
        if not isinstance(fam, dict) or fam.get("kind") == "gauge":
            continue
        template: Family[Any] = Family(str(fam.get("kind")), name, "")
        template.add(dead.get(name, {}).get("values", []))
        template.add(fam.get("values", []))
        dead[name] = template.snapshot()
    _write(shared_dir / DEAD, dead)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
