"""Token buckets, one per key: capacity ``limit``, refilled at ``limit`` tokens per period
(a minute for the per-key ``rpm``; an hour or a day for the per-endpoint limits).

Pure arithmetic on an injected clock; no I/O, no locks (one event loop).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: float   # seconds until one token is back (0 when allowed)
    reset: float         # seconds until the bucket is full again

    def headers(self) -> dict[str, str]:
        h = {"x-ratelimit-limit-requests": str(self.limit),
             "x-ratelimit-remaining-requests": str(self.remaining),
             "x-ratelimit-reset-requests": _duration(self.reset)}
        if not self.allowed:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return h


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``850ms``, ``12s``, ``1m30s``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class TokenBuckets:
    __slots__ = ("_buckets", "_clock")

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}   # key -> [tokens, last refill time]

    def take(self, key: str, rpm: int, period_s: float = 60.0) -> Decision:
        """Take one token from ``key``'s bucket of ``rpm`` tokens a ``period_s``."""
        now = self._clock()
        rate = rpm / period_s
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = [float(rpm), now]
        else:
            b[0] = min(float(rpm), b[0] + (now - b[1]) * rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return Decision(True, rpm, int(b[0]), 0.0, (rpm - b[0]) / rate)
        return Decision(False, rpm, 0, (1.0 - b[0]) / rate, (rpm - b[0]) / rate)

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)

    def prune(self, rpm_of: Callable[[str], int], period_s: float = 60.0) -> int:
        """Drop buckets that have refilled completely (they equal a fresh one)."""
        now, dropped = self._clock(), 0
        for key, (tokens, last) in list(self._buckets.items()):
            rpm = rpm_of(key)
            if tokens + (now - last) * rpm / period_s >= rpm:
                del self._buckets[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)
