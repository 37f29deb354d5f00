"""Staying up when upstreams fail: circuit breakers per provider, and which errors let a
request move on to the model's next fallback.

A breaker is closed while its provider works.  After ``failures`` consecutive failures it
opens: the provider is skipped for ``cooldown_s``.  Then it is half-open: one request is let
through as a probe; its success closes the breaker, its failure opens it again.
Pure state on an injected clock; no I/O.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from .errors import ApiError, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    __slots__ = ("clock", "cooldown_s", "failures", "opened_at", "probing", "state", "streak")

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.state, self.streak, self.opened_at, self.probing = CLOSED, 0, 0.0, False

    def allow(self) -> bool:
        """May a request go to this provider now?"""
        if self.failures <= 0 or self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() < self.opened_at + self.cooldown_s:
                return False
            self.state, self.probing = HALF_OPEN, False
        if self.probing:
            return False
        self.probing = True                 # this request is the probe
        return True

    def retry_in(self) -> float:
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def success(self) -> None:
        self.state, self.streak, self.probing = CLOSED, 0, False

    def failure(self) -> None:
        self.streak += 1
        if self.failures > 0 and (self.state == HALF_OPEN or self.streak >= self.failures):
            self.state, self.opened_at, self.probing = OPEN, self.clock(), False


def moves_on(err: ApiError) -> bool:
    """Whether this failure lets the request try the next fallback (and is the provider's
    fault, as opposed to the request's)."""
    if isinstance(err, RateLimited):
        return err.code == "upstream_rate_limited"
    return isinstance(err, (UpstreamError, UpstreamTimeout, ServiceUnavailable))


def counts_against(err: ApiError) -> bool:
    """Whether the failure counts toward opening the provider's breaker."""
    return moves_on(err) and err.code != "provider_not_configured"


def open_error(name: str, breaker: Breaker) -> ServiceUnavailable:
    wait = max(1, round(breaker.retry_in()))
    return ServiceUnavailable(f"The upstream provider `{name}` is failing and is skipped for "
                              f"{wait} more s; retry then.",
                              headers={"Retry-After": str(wait)})
