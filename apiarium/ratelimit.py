"""Token buckets, one per key: capacity ``limit``, refilled at ``limit`` tokens per period
(a minute for the per-key ``rpm``; an hour or a day for the per-endpoint limits); and
``FailedGuesses``, the same buckets spent by failed guesses at a secret, per network.

Pure arithmetic on an injected clock; no I/O, no locks (one event loop).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from .errors import RateLimited
from .netguard import network_of


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Decision(NamedTuple):
    """One bucket's answer (a tuple: made on every request, where a frozen dataclass's
    ``__init__`` costs several times as much)."""
    allowed: bool
    limit: int
    remaining: int
    retry_after: float   # seconds until one token is back (0 when allowed)
    reset: float         # seconds until the bucket is full again

    def headers(self) -> dict[str, str]:
        h = {"x-ratelimit-limit-requests": str(self.limit),
             "x-ratelimit-remaining-requests": str(self.remaining),
             "x-ratelimit-reset-requests": _duration(self.reset)}
        if not self.allowed:       # whole seconds (at least 1), and the exact wait in ms
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
            h["retry-after-ms"] = str(math.ceil(self.retry_after * 1000))
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

    def give_back(self, key: str, rpm: int) -> None:
        """Return one token taken from ``key``'s bucket (never past its capacity)."""
        b = self._buckets.get(key)
        if b is not None:
            b[0] = min(float(rpm), b[0] + 1.0)

    def wait(self, key: str, rpm: int, period_s: float = 60.0) -> float:
        """Seconds until ``key``'s bucket holds a token (0: it holds one now); nothing taken."""
        b = self._buckets.get(key)
        if b is None:
            return 0.0
        rate = rpm / period_s
        tokens = min(float(rpm), b[0] + (self._clock() - b[1]) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

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


class FailedGuesses:
    """Failed guesses at a secret (the master key, the metrics token), per network (an IPv4
    address or an IPv6 /64): each spends a token of the network's bucket of ``per_minute``;
    an empty bucket refuses the network, whatever it sends, until a token is back.  A
    ``per_minute`` of 0 turns it off."""

    def __init__(self, refused: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.buckets = TokenBuckets(clock)
        self.refused = refused               # counts the 429s (a metric)

    def check(self, ip: str, per_minute: int) -> None:
        """A 429 if ``ip``'s network has no guess left."""
        if not per_minute or not len(self.buckets):      # the usual case: nobody has failed
            return
        wait = self.buckets.wait(network_of(ip), per_minute)
        if wait:
            if self.refused is not None:
                self.refused.inc()
            raise RateLimited(f"Too many requests with a wrong API key or token from this "
                              f"address (at most {per_minute} a minute). Wait "
                              f"{math.ceil(wait)} s; GET /v1/keys/me gives your key.",
                              code="too_many_failed_attempts", retry_after=wait)

    def fail(self, ip: str, per_minute: int) -> None:
        if per_minute:
            self.buckets.take(network_of(ip), per_minute)

    def prune(self, per_minute: int) -> int:
        return self.buckets.prune(lambda _: per_minute or 1)


class PublicRequests:
    """The requests that need no key (the homepage's assets, /health, /media, /openapi.json,
    unknown paths), per network (an IPv4 address or an IPv6 /64) in this process: a bucket
    of ``per_minute``, refilled over a minute; an empty one answers 429 with the wait."""

    def __init__(self, refused: Counter | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.buckets = TokenBuckets(clock)
        self.refused = refused

    def take(self, ip: str, per_minute: int) -> None:
        d = self.buckets.take(network_of(ip), per_minute)
        if not d.allowed:
            if self.refused is not None:
                self.refused.inc()
            wait = max(1, math.ceil(d.retry_after))
            raise RateLimited(f"Too many requests from this address: at most {per_minute} a "
                              f"minute to the pages and files that need no key. Wait {wait} s.",
                              retry_after=d.retry_after)

    def prune(self, per_minute: int) -> int:
        return self.buckets.prune(lambda _: per_minute)
