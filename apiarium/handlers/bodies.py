"""Slow clients' deadlines, kept by one sweep: the body deadline (``server.body_timeout_s``)
of the API's uploads, and the write deadline (``server.write_timeout_s``) of every answer.

Tornado keeps the body deadline with a timer around every body read: a task, a timer and a
chained future per request, ~5% of a chat request's CPU (``scripts/cpu_profile.py cpu``:
72k of 1,520k instructions).  ``ApiHandler.prepare`` turns that timer off for a body of
known length, and this sweep, a few times a second, closes the connection of any such body
still not whole when its time is up: the same cut-off for a slow client, paid per sweep
rather than per request.  Bodies of unknown length (chunked) and every other route keep
Tornado's timer.

Tornado has no write deadline: a client that reads nothing leaves a ``flush()`` waiting for
ever, and with it a stream's upstream connection (a relay writes the next frame only once the
last one was taken).  The sweep closes the connection of a request in flight whose socket
has had a write waiting (``IOStream.writing()``) and made no progress for
``write_timeout_s``: the handler wrote nothing more (``bytes_out``) and the kernel's send
queue did not shrink (``TIOCOUTQ``: the client took none of it; the kernel wakes a writer
only once half its buffer, up to megabytes, is free, so a slow reader may leave a write
waiting long while it reads).  The handler then ends as for a client that left (a stream's
upstream is closed and its usage booked, the access log shows 499).  A client that reads
slowly but steadily is never cut.  Nothing per request or per write: what the sweep saw last
is kept by ``watch``.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time

import tornado.http1connection

from ..errors import echo
from ..live import Services
from .base import ApiHandler, BaseHandler

log = logging.getLogger("apiarium")
Stalls = dict[BaseHandler, tuple[tuple[int, int], float]]   # writing: progress mark, since


def _unsent(sock: socket.socket) -> int:
    """The bytes the kernel holds that the client has not taken (-1: unknown)."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return -1
    return int(struct.unpack("i", out)[0])


def _close(handler: BaseHandler, why: str) -> bool:
    conn = handler.request.connection
    if not (isinstance(conn, tornado.http1connection.HTTP1Connection) and conn.stream):
        return False
    log.info("%s %s: %s; connection closed", handler.request_id,
             echo(handler.request.path, quote=False), why)
    conn.stream.close()
    return True


def sweep(services: Services, limit: float) -> int:
    """Close the connections of the bodies not whole ``limit`` s on; how many were closed."""
    return sum(_close(handler, f"the body did not arrive within {limit:g} s")
               for handler in list(services.inflight)
               if isinstance(handler, ApiHandler) and handler.body_overdue(limit))


def sweep_writes(services: Services, limit: float, seen: Stalls) -> int:
    """Close the connections that have had a write waiting with no progress (nothing more
    written, the send queue not shrinking) for ``limit`` s; how many were closed.  ``seen``
    is what the last sweep saw (updated); a closed stream is left to its own close."""
    now, cut, writing = time.monotonic(), 0, {}
    for handler in list(services.inflight):
        conn = handler.request.connection
        stream = getattr(conn, "stream", None)
        if not (isinstance(handler, BaseHandler) and stream is not None
                and not stream.closed() and stream.writing()):
            continue
        mark = (handler.bytes_out, _unsent(stream.socket))
        was, since = seen.get(handler, (None, now))
        if was != mark:
            since = now
        if now - since >= limit and _close(handler, f"the client read nothing for {limit:g} s "
                                                    f"(server.write_timeout_s)"):
            cut += 1
        else:
            writing[handler] = (mark, since)
    seen.clear()
    seen.update(writing)
    return cut


async def watch(services: Services, limit: float) -> None:
    """Both sweeps, for ever: the body sweep every quarter of its deadline ``limit``, the
    write sweep every quarter of ``server.write_timeout_s`` (each at most every second).
    ``limit`` is ``server.body_timeout_s`` as the gateway started with it, the value
    Tornado's timer keeps for the other bodies too (a reload changes neither); the write
    deadline is read each round (a reload changes it)."""
    seen: Stalls = {}
    loop = asyncio.get_running_loop()
    next_body = next_write = loop.time()
    while True:
        write_limit = services.settings.write_timeout_s
        now = loop.time()
        if now >= next_body:
            sweep(services, limit)
            next_body = now + min(1.0, limit / 4)
        if now >= next_write:
            sweep_writes(services, write_limit, seen)
            next_write = now + min(1.0, write_limit / 4)
        await asyncio.sleep(max(0.0, min(next_body, next_write) - loop.time()))
