"""Trying a model's fallbacks, behind per-provider circuit breakers.

A request goes to its model, then to each of ``fallbacks`` in turn, while the failure is the
provider's (refused, timed out, 5xx, 429) and nothing has reached the client yet.  Once a
stream's first frame is out, it stays with that model.  ``model`` in the answer stays the
alias the client asked for; the ``x-apiarium-model`` header names the model that served.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from ..catalog import ModelSpec
from ..errors import ApiError, UpstreamError
from ..resilience import counts_against, moves_on, open_error
from .base import ApiHandler

log = logging.getLogger("apiarium")
T = TypeVar("T")


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

    async def with_fallbacks(self: ApiHandler, model: ModelSpec,
                             call: Callable[[ModelSpec], Awaitable[T]]) -> tuple[T, ModelSpec]:
        """``call(candidate)`` for the first candidate that answers; (result, candidate)."""
        svc = self.svc
        last: ApiError | None = None
        # open circuits are skipped; if all are, the first such refusal is the answer
        for cand in svc.catalog.chain(model) if model.fallbacks else (model,):
            breaker = svc.breaker(cand.provider)
            if not breaker.allow():
                last = last or open_error(cand.provider.name, breaker)
                continue
            as_asked = cand if cand is model else dataclasses.replace(cand, alias=model.alias)
            self.provider_name = cand.provider.name
            try:
                result = await call(as_asked)
            except ApiError as err:
                if not self._failed(cand, breaker, err):
                    raise
                last = err
                continue
            breaker.success()
            self._served(cand)
            return result, cand
        raise last

    async def stream_with_fallbacks(
            self: ApiHandler, model: ModelSpec,
            open_stream: Callable[[ModelSpec], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
        """The first candidate whose stream yields a frame; then its frames to the end."""
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
        try:
            yield first
            async for frame in events:
                yield frame
        except ApiError as err:
            if counts_against(err):
                breaker.failure()
            raise
        finally:
            await events.aclose()
