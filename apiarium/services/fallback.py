"""Trying a model's fallbacks behind circuit breakers per (provider, upstream model): the one
loop.

A request goes to its model, then to each of ``fallbacks`` in turn, while the failure is the
provider's (refused, timed out, 5xx, 429) and nothing has reached the client yet.  A model
that serves in place of another answers under the alias the client asked for; the caller
learns which one served (the ``x-apiarium-model`` header names it).

What a breaker, and a rate-limit cool-down, is kept for is one ``BreakerKey``: a provider's
name and the upstream model asked of it.  An image model's images-per-minute 429 says
nothing about the same provider's chat or embedding models, nor does one model's run of 5xx:
each upstream model is skipped on its own.  A 429 that says "slow down" (not "out of
quota") opens no breaker: it cools its key for the wait the upstream named (at most
``MAX_COOL_S``), during which the model goes straight to its fallbacks, or answers 429 with
the rest of the wait.  A provider with ``breaker_failures: 0`` is never skipped, for either
reason.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from ..catalog import Catalog, ModelSpec
from ..errors import ApiError, RateLimited
from ..resilience import OPEN, Breaker, counts_against, moves_on, open_error, slows_down

log = logging.getLogger("apiarium")
T = TypeVar("T")
MAX_COOL_S = 60.0       # the longest an upstream's Retry-After cools a model


class BreakerKey(NamedTuple):
    """What one breaker and one cool-down are kept for."""
    provider: str       # the provider's name in models.yaml
    model: str          # the upstream model id asked of it (``ModelSpec.upstream``)

    @classmethod
    def of(cls, model: ModelSpec) -> BreakerKey:
        return cls(model.provider.name, model.upstream)


class Breakers:
    """One breaker per ``BreakerKey``, kept across reloads (rebuilt if its provider's
    settings change), and the keys an upstream's rate limit cools until a moment."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_key: dict[BreakerKey, Breaker] = {}
        self._cool_until: dict[BreakerKey, float] = {}

    def of(self, model: ModelSpec) -> Breaker:
        key, spec = BreakerKey.of(model), model.provider
        b = self._by_key.get(key)
        if b is None or (b.failures, b.cooldown_s) != (spec.breaker_failures,
                                                         spec.breaker_cooldown_s):
            b = self._by_key[key] = Breaker(spec.breaker_failures, spec.breaker_cooldown_s,
                                            self.clock)
        return b

    def cooling(self, model: ModelSpec) -> float:
        """Seconds left of the model's rate-limit cool-down (0: none)."""
        if not self._cool_until:
            return 0.0
        key = BreakerKey.of(model)
        until = self._cool_until.get(key)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._cool_until[key]
            return 0.0
        return left

    def cool(self, model: ModelSpec, seconds: float) -> None:
        """Skip the model for ``seconds`` (at most ``MAX_COOL_S``); a longer cool-down
        already running is kept."""
        if seconds <= 0:
            return
        key = BreakerKey.of(model)
        until = self.clock() + min(seconds, MAX_COOL_S)
        self._cool_until[key] = max(until, self._cool_until.get(key, 0.0))

    def skipped(self) -> dict[BreakerKey, float]:
        """What is skipped now, an open breaker or a rate-limit cool-down: key -> seconds
        until it is tried again.  Reads only what exists (usually nothing)."""
        now = self.clock()
        out = {k: until - now for k, until in self._cool_until.items() if until > now}
        for key, b in self._by_key.items():
            if b.state == OPEN and (left := b.retry_in()) > 0:
                out[key] = max(left, out.get(key, 0.0))
        return out

    def book(self, model: ModelSpec, err: ApiError | None, caller: str | None) -> None:
        """Count an outcome for ``caller`` (a key's hash; None: the master key): None (it
        answered) or the error it ended with.  Only the provider's faults count against
        its breaker; an upstream's "slow down" cools the model for the wait it names, and
        otherwise counts as an answer (the provider is up)."""
        breaker = self.of(model)
        if isinstance(err, RateLimited) and slows_down(err):
            if breaker.failures > 0:         # 0: the provider is never skipped
                self.cool(model, err.retry_after or 0.0)
            breaker.success()
        elif err is not None and counts_against(err):
            breaker.failure(caller)
        else:
            breaker.success()            # the provider answered: it is up


def cooling_error(model: ModelSpec, wait: float) -> RateLimited:
    return RateLimited(f"The upstream provider `{model.provider.name}` is rate limiting this "
                       f"gateway's requests for `{model.alias}`; retry in "
                       f"{max(1, math.ceil(wait))} s.", code="upstream_rate_limited",
                       retry_after=wait)


async def first_success(catalog: Catalog, breakers: Breakers, model: ModelSpec,
                        call: Callable[[ModelSpec], Awaitable[T]],
                        caller: str | None, book_success: bool = True) -> tuple[T, ModelSpec]:
    """``call(candidate)`` for the model, then its fallbacks, until one succeeds:
    (its result, the candidate that served).  ``call`` gets the candidate under the alias
    asked for; ``caller`` is whose request it is (the breakers need to know).  A stream's
    success is booked by whoever reads it to its end (``book_success=False``): a provider whose
    streams die half-way is failing, however well they start.  Cooling models and open
    circuits are skipped; when nothing is left, the last failure (or the first refusal of
    a skipped candidate: 429 cooling, 503 open) is raised."""
    last: ApiError | None = None
    for cand in catalog.chain(model):
        wait = breakers.cooling(cand)
        if wait:
            last = last or cooling_error(cand, wait)
            continue
        breaker = breakers.of(cand)
        if not breaker.allow(caller):
            last = last or open_error(cand.provider.name, cand.alias, breaker)
            continue
        as_asked = cand if cand is model else dataclasses.replace(cand, alias=model.alias)
        try:
            result = await call(as_asked)
        except ApiError as err:
            breakers.book(cand, err, caller)
            if not moves_on(err):
                raise
            log.info("%s failed (%s); trying the next fallback", cand.alias, err.code)
            last = err
            continue
        if book_success:
            breakers.book(cand, None, caller)
        return result, cand
    if last is None:                 # a model's chain holds at least the model itself
        raise RuntimeError(f"no candidate to try for {model.alias}")
    raise last
