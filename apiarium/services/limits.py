"""The per-key limits checked before a request runs: the token bucket (``rate_limit.rpm``, a
key may carry its own), the per-endpoint buckets (``rate_limit.endpoints``) and the daily
credit allowance.  No Tornado: the handler asks ``admit`` and sets the headers it returns.

Two implementations of ``Limiter``: ``RequestLimits`` here (buckets in this process; its
``admit`` answers at once, with no await) and ``limits_redis.RedisLimits`` (one Lua script
on a Redis that every gateway process shares; its ``admit`` returns an awaitable)."""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from ..errors import QuotaExceeded, RateLimited
from ..metrics import Metrics
from ..ratelimit import Decision, TokenBuckets
from ..storage import KeyRecord
from ..usage import UsageLedger

if TYPE_CHECKING:
    from ..config import Settings

_UNITS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


class Limiter(Protocol):
    def admit(self, rec: KeyRecord, endpoint: str,
              s: Settings) -> dict[str, str] | Awaitable[dict[str, str]]:
        """The ``x-ratelimit-*`` headers of an admitted request (or an awaitable of them),
        or raise the 429 (or 503 when a shared backend cannot answer and fails closed)."""

    def refund(self, rec: KeyRecord, endpoint: str, s: Settings) -> None:
        """Give back the tokens an admitted request of ``rec`` on ``endpoint`` took (it was
        not served, through no fault of the caller)."""

    def lookup(self, rec: KeyRecord, s: Settings) -> Awaitable[None] | None:
        """Let one lookup of ``rec`` through (``rate_limit.lookups_per_minute``), or raise
        the 429; a shared backend hands back an awaitable."""

    def take(self, rec: KeyRecord, endpoint: str, s: Settings) -> Awaitable[None] | None:
        """Take one request from the key's ``endpoint`` bucket alone (a request of another
        endpoint that does that endpoint's work too: a Responses request that may generate
        images takes from ``images``), or raise its 429; an awaitable with a shared backend."""

    def prune(self, rpm_of: Callable[[str], int], s: Settings) -> None:
        """Drop what this process holds that equals nothing held (refilled buckets)."""


def rpm_refused(metrics: Metrics, d: Decision) -> RateLimited:
    metrics.rate_limited.labels("rpm").inc()
    headers = d.headers()
    return RateLimited(f"Rate limit reached: {d.limit} requests per minute for this key. Wait "
                       f"{headers['Retry-After']} s before the next request.",
                       retry_after=d.retry_after, headers=headers)


def endpoint_refused(metrics: Metrics, endpoint: str, period: float,
                     d: Decision) -> RateLimited:
    metrics.rate_limited.labels(endpoint).inc()
    h = d.headers()
    wait = h["Retry-After"]
    return RateLimited(f"Rate limit reached: {d.limit} {endpoint} requests per "
                       f"{_UNITS.get(period, 'second')} for this key. Wait {wait} s before "
                       f"the next one.", retry_after=d.retry_after,
                       headers={"Retry-After": wait, "retry-after-ms": h["retry-after-ms"]})


def lookups_refused(metrics: Metrics, d: Decision) -> RateLimited:
    metrics.rate_limited.labels("lookups").inc()
    wait = d.headers()["Retry-After"]
    return RateLimited(f"Rate limit reached: {d.limit} lookups (model lists, video jobs, "
                       f"token counts, compactions) per minute for this key. Wait {wait} s "
                       f"before the next one.", retry_after=d.retry_after)


def credits_headers(headers: dict[str, str], daily: float, spent: float) -> None:
    """The key's daily credits and what is left of them (before the request's own hold)."""
    headers["x-ratelimit-limit-credits"] = f"{daily:g}"
    headers["x-ratelimit-remaining-credits"] = f"{max(0.0, daily - spent):.4f}".rstrip(
        "0").rstrip(".")


def credits_refused(metrics: Metrics, daily: float) -> QuotaExceeded:
    metrics.rate_limited.labels("daily_credits").inc()
    return QuotaExceeded(f"This key has used its {daily:g} credits for today (UTC). The "
                         f"allowance resets at midnight UTC; GET /v1/keys/me shows today's "
                         f"usage.")


def visits_refused(ip: str, d: Decision) -> RateLimited:
    return RateLimited(f"Too many requests for an API key from {ip}: at most {d.limit} a "
                       f"minute. Wait {d.headers()['Retry-After']} s; your key does not "
                       f"change, so keep the one you already have.", retry_after=d.retry_after)


def hourly_cap(limit: int, wait: int) -> RateLimited:
    return RateLimited(f"This gateway has issued {limit} new API keys in the last hour, the "
                       f"most it issues. Try again in about {_waiting(wait)}.",
                       retry_after=wait)


def network_cap(net: str, bits: int, limit: int, wait: int) -> RateLimited:
    return RateLimited(f"The IPv6 network {net} has received {limit} new API keys in the last "
                       f"24 hours, the most this gateway issues per /{bits}. Use a key already "
                       f"issued to your network (a key works from every address of its /64), "
                       f"or try again in about {_waiting(wait)}.", retry_after=wait)


def _waiting(seconds: int) -> str:
    return f"{seconds / 3600:.0f} hours" if seconds >= 5400 else \
        f"{max(1, seconds // 60)} minutes"


class RequestLimits:
    """Buckets in this process.  ``share`` > 1 divides every limit (rounded up): the local
    fallback of a shared backend, when ``share`` gateways each hold a part of the limit."""

    def __init__(self, usage: UsageLedger, metrics: Metrics, share: int = 1) -> None:
        self.usage, self.metrics, self.share = usage, metrics, share
        self.buckets = TokenBuckets()                        # per key, requests a minute
        self.endpoint_buckets: dict[str, TokenBuckets] = {}  # per endpoint, per key
        self.lookups = TokenBuckets()                        # per key, lookups a minute

    def admit(self, rec: KeyRecord, endpoint: str, s: Settings) -> dict[str, str]:
        """Let one request of ``rec`` on ``endpoint`` through, or raise the 429; the
        ``x-ratelimit-*`` headers of the key's bucket."""
        rpm = rec.rpm or s.rpm
        if self.share > 1:
            rpm = math.ceil(rpm / self.share)
        decision = self.buckets.take(rec.key_hash, rpm)
        if not decision.allowed:
            raise rpm_refused(self.metrics, decision)
        self.take(rec, endpoint, s)
        headers = decision.headers()
        if s.daily_credits:
            spent = self.usage.spent_today(rec.key_hash).credits
            if spent >= s.daily_credits:
                raise credits_refused(self.metrics, s.daily_credits)
            credits_headers(headers, s.daily_credits, spent)
        return headers

    def take(self, rec: KeyRecord, endpoint: str, s: Settings) -> None:
        """One request from the key's ``endpoint`` bucket (if the endpoint has a limit)."""
        limit = s.endpoint_limits.get(endpoint)
        if limit is not None:
            count, period = limit
            if self.share > 1:
                count = math.ceil(count / self.share)
            buckets = self.endpoint_buckets.setdefault(endpoint, TokenBuckets())
            taken = buckets.take(rec.key_hash, count, period)
            if not taken.allowed:
                raise endpoint_refused(self.metrics, endpoint, period, taken)

    def refund(self, rec: KeyRecord, endpoint: str, s: Settings) -> None:
        rpm = rec.rpm or s.rpm
        self.buckets.give_back(rec.key_hash, math.ceil(rpm / self.share))
        limit = s.endpoint_limits.get(endpoint)
        buckets = self.endpoint_buckets.get(endpoint)
        if limit is not None and buckets is not None:
            buckets.give_back(rec.key_hash, math.ceil(limit[0] / self.share))

    def lookup(self, rec: KeyRecord, s: Settings) -> None:
        per_minute = math.ceil(s.lookups_per_minute / self.share)
        decision = self.lookups.take(rec.key_hash, per_minute)
        if not decision.allowed:
            raise lookups_refused(self.metrics, decision)

    def prune(self, rpm_of: Callable[[str], int], s: Settings) -> None:
        share = self.share
        self.buckets.prune(lambda h: math.ceil(rpm_of(h) / share))
        self.lookups.prune(_always(math.ceil(s.lookups_per_minute / share)))
        for endpoint, buckets in self.endpoint_buckets.items():
            count, period = s.endpoint_limits.get(endpoint, (1, 1.0))
            buckets.prune(_always(math.ceil(count / share)), period)


def _always(n: int) -> Callable[[str], int]:
    return lambda _: n
