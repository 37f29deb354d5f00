"""The per-key limits checked before a request runs: the token bucket (``rate_limit.rpm``, a
key may carry its own), the per-endpoint buckets (``rate_limit.endpoints``) and the daily
credit allowance.  No Tornado: the handler asks ``admit`` and sets the headers it returns.
Buckets live in this process (the Redis-backed limiter of a multi-process deployment would
be another implementation of the same ``admit``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import QuotaExceeded, RateLimited
from ..metrics import Metrics
from ..ratelimit import TokenBuckets
from ..storage import KeyRecord
from ..usage import UsageLedger

if TYPE_CHECKING:
    from ..config import Settings

_UNITS = {60.0: "minute", 3600.0: "hour", 86400.0: "day"}


class RequestLimits:
    def __init__(self, usage: UsageLedger, metrics: Metrics) -> None:
        self.usage, self.metrics = usage, metrics
        self.buckets = TokenBuckets()                        # per key, requests a minute
        self.endpoint_buckets: dict[str, TokenBuckets] = {}  # per endpoint, per key

    def admit(self, rec: KeyRecord, endpoint: str, s: Settings) -> dict[str, str]:
        """Let one request of ``rec`` on ``endpoint`` through, or raise the 429; the
        ``x-ratelimit-*`` headers of the key's bucket."""
        decision = self.buckets.take(rec.key_hash, rec.rpm or s.rpm)
        headers = decision.headers()
        if not decision.allowed:
            self.metrics.rate_limited.labels("rpm").inc()
            raise RateLimited(f"Rate limit reached: {decision.limit} requests per minute for "
                              f"this key. Wait {headers['Retry-After']} s before the next "
                              f"request.", retry_after=decision.retry_after, headers=headers)
        limit = s.endpoint_limits.get(endpoint)
        if limit is not None:
            count, period = limit
            buckets = self.endpoint_buckets.setdefault(endpoint, TokenBuckets())
            taken = buckets.take(rec.key_hash, count, period)
            if not taken.allowed:
                self.metrics.rate_limited.labels(endpoint).inc()
                wait = taken.headers()["Retry-After"]
                raise RateLimited(f"Rate limit reached: {count} {endpoint} requests per "
                                  f"{_UNITS.get(period, 'second')} for this key. Wait {wait} s "
                                  f"before the next one.", retry_after=taken.retry_after,
                                  headers={"Retry-After": wait})
        if s.daily_credits and self.usage.spent_today(rec.key_hash).credits >= s.daily_credits:
            self.metrics.rate_limited.labels("daily_credits").inc()
            raise QuotaExceeded(f"This key has used its {s.daily_credits:g} credits for today "
                                f"(UTC). The allowance resets at midnight UTC; GET /v1/keys/me "
                                f"shows today's usage.")
        return headers
