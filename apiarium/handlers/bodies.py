"""The body deadline (``server.body_timeout_s``) of the API's uploads, kept by one sweep.

Tornado keeps the deadline with a timer around every body read: a task, a timer and a
chained future per request, ~5% of a chat request's CPU (``scripts/cpu_profile.py cpu``:
72k of 1,520k instructions).  ``ApiHandler.prepare`` turns that timer off for a body of
known length, and this sweep, a few times a second, closes the connection of any such body
still not whole when its time is up: the same cut-off for a slow client, paid per sweep
rather than per request.  Bodies of unknown length (chunked) and every other route keep
Tornado's timer.
"""
from __future__ import annotations

import asyncio
import logging

import tornado.http1connection

from ..errors import echo
from ..live import Services
from .base import ApiHandler

log = logging.getLogger("apiarium")


def sweep(services: Services, limit: float) -> int:
    """Close the connections of the bodies not whole ``limit`` s on; how many were closed."""
    cut = 0
    for handler in list(services.inflight):
        if isinstance(handler, ApiHandler) and handler.body_overdue(limit):
            conn = handler.request.connection
            if isinstance(conn, tornado.http1connection.HTTP1Connection) and conn.stream:
                log.info("%s %s: the body did not arrive within %g s; connection closed",
                         handler.request_id, echo(handler.request.path, quote=False), limit)
                conn.stream.close()
                cut += 1
    return cut


async def watch(services: Services, limit: float) -> None:
    """``sweep`` every quarter of the deadline ``limit`` (at most every second), for ever.
    ``limit`` is ``server.body_timeout_s`` as the gateway started with it, the value
    Tornado's timer keeps for the other bodies too (a reload changes neither)."""
    while True:
        await asyncio.sleep(min(1.0, limit / 4))
        sweep(services, limit)
