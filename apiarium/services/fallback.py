"""Trying a model's fallbacks behind per-provider circuit breakers: the one loop.

A request goes to its model, then to each of ``fallbacks`` in turn, while the failure is the
provider's (refused, timed out, 5xx, 429) and nothing has reached the client yet.  A model
that serves in place of another answers under the alias the client asked for; the caller
learns which one served (the ``x-apiarium-model`` header names it).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..catalog import Catalog, ModelSpec, ProviderSpec
from ..errors import ApiError
from ..resilience import Breaker, counts_against, moves_on, open_error

log = logging.getLogger("apiarium")
T = TypeVar("T")


class Breakers:
    """One breaker per provider name, kept across reloads (rebuilt if its settings change)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Breaker] = {}

    def of(self, spec: ProviderSpec) -> Breaker:
        b = self._by_name.get(spec.name)
        if b is None or (b.failures, b.cooldown_s) != (spec.breaker_failures,
                                                         spec.breaker_cooldown_s):
            b = self._by_name[spec.name] = Breaker(spec.breaker_failures,
                                                   spec.breaker_cooldown_s)
        return b

    def book(self, spec: ProviderSpec, err: ApiError | None, caller: str | None) -> None:
        """Count an outcome for ``caller`` (a key's hash; None: the master key): None (it
        answered) or the error it ended with.  Only the provider's faults count against it."""
        breaker = self.of(spec)
        if err is not None and counts_against(err):
            breaker.failure(caller)
        else:
            breaker.success()            # the provider answered: it is up


async def first_success(catalog: Catalog, breakers: Breakers, model: ModelSpec,
                        call: Callable[[ModelSpec], Awaitable[T]],
                        caller: str | None, book_success: bool = True) -> tuple[T, ModelSpec]:
    """``call(candidate)`` for the model, then its fallbacks, until one succeeds:
    (its result, the candidate that served).  ``call`` gets the candidate under the alias
    asked for; ``caller`` is whose request it is (the breakers need to know).  A stream's
    success is booked by whoever reads it to its end (``book_success=False``): a provider whose
    streams die half-way is failing, however well they start.  Open circuits
    are skipped; when nothing is left, the last failure (or the
    first refusal of an open circuit) is raised."""
    last: ApiError | None = None
    for cand in catalog.chain(model):
        breaker = breakers.of(cand.provider)
        if not breaker.allow(caller):
            last = last or open_error(cand.provider.name, breaker)
            continue
        as_asked = cand if cand is model else dataclasses.replace(cand, alias=model.alias)
        try:
            result = await call(as_asked)
        except ApiError as err:
            breakers.book(cand.provider, err, caller)
            if not moves_on(err):
                raise
            log.info("%s failed (%s); trying the next fallback", cand.alias, err.code)
            last = err
            continue
        if book_success:
            breakers.book(cand.provider, None, caller)
        return result, cand
    if last is None:                 # a model's chain holds at least the model itself
        raise RuntimeError(f"no candidate to try for {model.alias}")
    raise last
