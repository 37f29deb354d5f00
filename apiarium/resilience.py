"""Staying up when upstreams fail: circuit breakers (one per provider and upstream model, see
``services/fallback.py``), and which errors let a request move on to the model's next
fallback.

A breaker is closed while its provider works.  After ``failures`` consecutive failures, from
at least ``min_callers`` different callers (API keys), it opens: the provider is skipped for
``cooldown_s``.  (One key alone cannot open it: its own failures might be of its own making,
and no single user may switch a provider off for everyone.  The operator's own traffic, the
master key's, is trusted: each of its failures counts as another caller's.)  Then it is
half-open: one request is let through as a probe, never one from a caller whose request is among the
failures that opened it; the probe's success closes the breaker, its failure opens it again.
Only the provider's faults count (``counts_against``): a refused connection, a timeout, a 5xx,
the operator's quota.  An upstream's "slow down" 429 (``slows_down``) is no fault: it
opens nothing, and only cools the model it was for.  Pure state on an injected clock; no I/O.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from .errors import (
    ApiError,
    RateLimited,
    ServiceUnavailable,
    Unserved,
    UpstreamError,
    UpstreamTimeout,
)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    __slots__ = ("callers", "clock", "cooldown_s", "failures", "min_callers", "opened_at",
                 "probing", "state", "streak", "trusted")

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, min_callers: int = 2):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.min_callers = min_callers
        self.state, self.streak, self.opened_at, self.probing = CLOSED, 0, 0.0, False
        self.callers: set[str] = set()      # who failed in the current streak
        self.trusted = 0                    # ... and how often the trusted caller (None) did

    def allow(self, caller: str | None = None) -> bool:
        """May a request from ``caller`` (an API key's hash; None: the master key) go to
        this provider now?"""
        if self.failures <= 0 or self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() < self.opened_at + self.cooldown_s:
                return False
            self.state, self.probing = HALF_OPEN, False
        if self.probing or caller in self.callers:
            return False
        self.probing = True                 # this request is the probe
        return True

    def retry_in(self) -> float:
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def success(self) -> None:
        self.state, self.streak, self.probing = CLOSED, 0, False
        self.callers.clear()
        self.trusted = 0

    def failure(self, caller: str | None = None) -> None:
        self.streak += 1
        if caller is None:
            self.trusted += 1
        else:
            self.callers.add(caller)
        callers = len(self.callers) + self.trusted
        if self.failures > 0 and (self.state == HALF_OPEN or (
                self.streak >= self.failures and callers >= self.min_callers)):
            self.state, self.opened_at, self.probing = OPEN, self.clock(), False


def moves_on(err: ApiError) -> bool:
    """Whether this failure lets the request try the next fallback (and is the provider's
    fault, as opposed to the request's)."""
    if isinstance(err, RateLimited):
        return err.code == "upstream_rate_limited"
    return isinstance(err, (UpstreamError, UpstreamTimeout, ServiceUnavailable))


def slows_down(err: ApiError) -> bool:
    """Whether the failure is an upstream's rate limit ("slow down, retry in N s"), as
    opposed to its "out of quota or credit" (``x-should-retry: false``), which is the
    operator's account failing and counts like a 5xx."""
    return (isinstance(err, RateLimited) and err.code == "upstream_rate_limited"
            and err.headers.get("x-should-retry") != "false")


def counts_against(err: ApiError) -> bool:
    """Whether the failure counts toward opening the breaker."""
    return moves_on(err) and err.code != "provider_not_configured" and not slows_down(err)


def open_error(provider: str, alias: str, breaker: Breaker) -> Unserved:
    wait = max(1, round(breaker.retry_in()))
    return Unserved(f"The upstream provider `{provider}` is failing for `{alias}`, which is "
                    f"skipped for {wait} more s; retry then (this request was not counted "
                    f"against your key).", code="upstream_cooling_down",
                    headers={"Retry-After": str(wait)})
