"""Trying a model's fallbacks, behind per-provider circuit breakers.

A request goes to its model, then to each of ``fallbacks`` in turn, while the failure is the
provider's (refused, timed out, 5xx, 429) and nothing has reached the client yet.  Once a
stream's first frame is out, it stays with that model.  ``model`` in the answer stays the
alias the client asked for; the ``x-apiarium-model`` header names the model that served.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

from ..catalog import ModelSpec
from ..errors import ApiError, UpstreamError
from ..resilience import counts_against, moves_on, open_error
from .base import ApiHandler

log = logging.getLogger("apiarium")
T = TypeVar("T")


class Attempt:
    """One candidate's try: ``with attempt:`` books the outcome on its breaker, marks
    ``ok`` on success, and swallows a failure that lets the next candidate go (kept in
    ``error``)."""
    __slots__ = ("handler", "model", "as_asked", "breaker", "ok", "error")

    def __init__(self, handler, model: ModelSpec, as_asked: ModelSpec, breaker) -> None:
        self.handler, self.model, self.as_asked, self.breaker = handler, model, as_asked, breaker
        self.ok = False
        self.error: ApiError | None = None

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None:
            self.breaker.success()
            self.handler._served(self.model)
            self.ok = True
            return False
        if isinstance(exc, ApiError) and self.handler._failed(self.model, self.breaker, exc):
            self.error = exc
            return True
        return False


class FailoverMixin:
    def _served(self: ApiHandler, cand: ModelSpec) -> None:
        self.provider_name = cand.provider.name
        self.set_header("x-apiarium-model", cand.alias)

    def _failed(self: ApiHandler, cand: ModelSpec, breaker, err: ApiError) -> bool:
        """Book a failure; True if the next candidate may be tried."""
        if counts_against(err):
            breaker.failure()
        else:
            breaker.success()            # the provider answered: it is up
        if moves_on(err):
            log.info("%s %s failed (%s)", self.request_id, cand.alias, err.code)
            return True
        return False

    def attempts(self: ApiHandler, model: ModelSpec) -> Iterator["Attempt"]:
        """The candidates to try, as ``Attempt``s: run each one's call inside ``with
        attempt:`` and stop at the first ``attempt.ok``.  Open circuits are skipped; when
        nothing is left, the last failure (or the first refusal of an open circuit) is
        raised.  Used as a loop, not a coroutine: no await layer on the request path."""
        svc = self.svc
        last: ApiError | None = None
        for cand in svc.catalog.chain(model) if model.fallbacks else (model,):
            breaker = svc.breaker(cand.provider)
            if not breaker.allow():
                last = last or open_error(cand.provider.name, breaker)
                continue
            as_asked = cand if cand is model else dataclasses.replace(cand, alias=model.alias)
            self.provider_name = cand.provider.name
            attempt = Attempt(self, cand, as_asked, breaker)
            yield attempt
            if attempt.ok:
                return
            last = attempt.error
        raise last

    async def with_fallbacks(self: ApiHandler, model: ModelSpec,
                             call: Callable[[ModelSpec], Awaitable[T]]) -> tuple[T, ModelSpec]:
        """``call(candidate)`` for the first candidate that answers; (result, candidate)."""
        for attempt in self.attempts(model):
            with attempt:
                result = await call(attempt.as_asked)
            if attempt.ok:
                return result, attempt.model
        raise AssertionError("attempts() ends by raising")

    async def open_with_fallbacks(
            self: ApiHandler, model: ModelSpec,
            open_stream: Callable[[ModelSpec], AsyncIterator[bytes]]
    ) -> tuple[bytes, AsyncIterator[bytes], Callable[[ApiError], None]]:
        """The first candidate whose stream yields a frame: (that frame, the rest of its
        stream, what to call if the stream later fails).  For ``relay(events, first,
        on_error)``: the frames then go straight to the client, through no wrapper."""
        async def start(as_asked: ModelSpec):
            events = open_stream(as_asked)
            try:
                first = await anext(events, None)
                if first is None:
                    raise UpstreamError(f"The upstream provider `{as_asked.provider.name}` "
                                        f"sent an empty stream.")
            except BaseException:
                await events.aclose()
                raise
            return first, events

        (first, events), cand = await self.with_fallbacks(model, start)
        breaker = self.svc.breaker(cand.provider)

        def on_error(err: ApiError) -> None:
            if counts_against(err):
                breaker.failure()
        return first, events, on_error
