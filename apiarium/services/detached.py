"""Upstream calls that run to their end whoever waits on them.

A client that hangs up before its answer does not cancel the upstream call: the vendors bill
the work of a cancelled call all the same, so the call finishes as a task of its own and the
usage it reports is booked (``costs.Charge``; a call that then fails books its whole hold).
Each call is bounded by its provider's own timeouts.  ``tasks`` keeps the calls under way
(a task nothing refers to may be collected half-way); shutdown waits for them within its
grace, then ``close`` cancels what is left, and each of those books its whole hold.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("apiarium")
T = TypeVar("T")


class Detached:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` as a task of its own, kept until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self, work: Coroutine[Any, Any, T],
                  left: Callable[[asyncio.Task[T]], None]) -> T:
        """``work``'s result.  If the caller is cancelled first (its client left, or the
        shutdown grace ended), ``work`` runs on and ``left(task)`` is told."""
        task = self.start(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            left(task)
            task.add_done_callback(_log_failure)
            raise

    async def close(self) -> None:
        """Cancel the calls still under way (shutdown, after its grace) and wait for them;
        a call that ends hands its stream on to a new task, cancelled in the next round."""
        while self.tasks:
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("an upstream call whose client had left failed: %s", task.exception())
