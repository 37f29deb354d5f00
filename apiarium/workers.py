"""Running the gateway: one process (``apiarium serve``), or N workers under a supervisor
(``apiarium serve --workers N``, or ``server.workers`` in apiarium.yaml).

With workers, the supervisor process does once what must happen once, then forks:

1. reads the configuration (a bad one: its ``FILE:LINE`` problems, exit 1, nothing started);
2. opens the database as the server does (creating or upgrading its schema, and creating the
   key secret file if there is none), so N workers never race to do either;
3. takes the port (a port in use fails here; ``port: 0`` picks one port for all of them);
4. makes a private folder for the workers' metrics, removed when it exits.

On Linux each worker listens on a socket of its own, bound with ``SO_REUSEPORT``: the kernel
spreads new connections evenly over the workers listening (a shared socket goes to whichever
wakes first, which leaves a few long-lived connections, a load balancer's, on one worker),
and a replacement binds its own.  The supervisor keeps the port by a socket bound to it
that does not listen (so it is given no connections).  Elsewhere (SO_REUSEPORT does not
balance there) the workers inherit and share the supervisor's listening sockets.

Each worker is a whole gateway (``app.Gateway``), with its own event loop, upstream session,
key index, limits and usage counts; ``supervisor.Supervisor`` keeps them running.  What
the workers share is the database: keys, blocks and usage (docs/scaling.md says
what is per process).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from . import hosts
from .app import Gateway, bind_sockets
from .config import ConfigError, Settings
from .config_limits import per_process_warning
from .keysecret import KeyStoreError
from .live import WorkerInfo
from .services.keys import KeyService
from .storage import StorageError
from .supervisor import Supervisor
from .usage import UsageLedger
from .usagejournal import journal_folder

T = TypeVar("T")
log = logging.getLogger("apiarium")
# each worker listens on its own socket, the kernel spreading connections over them
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def tune_gc() -> None:
    """What is alive once the server has started (modules, config, the catalog) lives as long
    as the process: freeze it out of the collector's scans, and collect the young generation
    less often (a request allocates a few hundred short-lived containers)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new event loop: uvloop's when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def serve_one(config_path: Path, host: str | None, port: int | None,
              sockets: list[socket.socket] | None = None, worker: WorkerInfo | None = None,
              on_ready: Callable[[], None] | None = None, demo: bool = False) -> int:
    """One gateway until SIGTERM/SIGINT: 0; 1 if it cannot start (the reason on stderr).
    ``demo``: ``apiarium serve --demo`` (``Gateway.load``)."""
    gateway = Gateway(config_path, worker, demo)

    async def main() -> int:
        # a SIGHUP between reading the configuration and serving (a reload sent as soon as
        # the "listening" line shows) would otherwise end the process, or be ignored in a
        # worker: it is held, and reloads once the gateway serves
        held = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, held.set)
        # ... and a SIGTERM (a worker's supervisor killed as it started: PR_SET_PDEATHSIG)
        # would end it on the spot, without draining or writing its usage: held too
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await gateway.start(host, port, sockets)
            tune_gc()
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        except (KeyStoreError, StorageError) as exc:
            print(f"apiarium: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"apiarium: cannot listen: {exc}", file=sys.stderr)
            return 1
        if on_ready is not None:
            on_ready()
        await gateway.run_until_signalled(reload_first=held.is_set(), stopping=stopping)
        return 0
    return run_loop(main())


def _reserve(listening: list[socket.socket]) -> list[socket.socket]:
    """Sockets bound (with SO_REUSEPORT) to the addresses ``listening`` are on, that do not
    listen: they keep the port for the workers' own; ``listening`` is closed."""
    reserved = []
    try:
        for sock in listening:
            keep = socket.socket(sock.family, socket.SOCK_STREAM)
            reserved.append(keep)
            keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if sock.family == socket.AF_INET6:
                keep.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            keep.bind(sock.getsockname())
    except OSError:
        for keep in reserved:
            keep.close()
        raise
    finally:
        for sock in listening:
            sock.close()
    return reserved


async def _prepare(s: Settings) -> None:
    keys = await KeyService(s.database, s.secret_file).open()
    await keys.close()
    usage = await UsageLedger(s.database, journal_folder(s.database, s.media_dir)).open()
    await usage.close()


def serve_workers(config_path: Path, settings: Settings, host: str | None,
                  port: int | None, count: int, demo: bool = False) -> int:
    """``count`` workers under a supervisor, until SIGTERM/SIGINT (0) or until they keep
    crashing (1); 1 if they cannot start (the reason on stderr).  ``demo``: each worker
    (a replacement too) runs in demo mode."""
    accepted = per_process_warning(count, settings.limiter_backend, settings.limiter_per_process)
    if accepted:
        log.warning("%s", accepted)
    before = set(threading.enumerate())
    try:
        asyncio.run(_prepare(settings))
    except (KeyStoreError, StorageError) as exc:
        print(f"apiarium: {exc}", file=sys.stderr)
        return 1
    for thread in set(threading.enumerate()) - before:   # the database's helper threads:
        thread.join(5)                                   # ended before any fork
    host = host or settings.host
    rebinding = hosts.rebinding_warning(host, settings.allowed_hosts)
    if rebinding:
        log.warning("%s", rebinding)
    try:
        sockets = bind_sockets(host, settings.port if port is None else port, REUSE_PORT)
        if REUSE_PORT:
            sockets = _reserve(sockets)
    except OSError as exc:
        print(f"apiarium: cannot listen: {exc}", file=sys.stderr)
        return 1
    bound = sockets[0].getsockname()[1]
    metrics_dir = Path(tempfile.mkdtemp(prefix="apiarium-metrics-"))
    shown = f"[{host}]" if ":" in host else host

    def start(slot: int, ready_fd: int) -> int:
        def ready() -> None:
            os.write(ready_fd, f"{slot} {os.getpid()}\n".encode())
        own = sockets
        if REUSE_PORT:
            try:
                own = bind_sockets(host, bound, reuse_port=True)
            except OSError as exc:
                print(f"apiarium: cannot listen: {exc}", file=sys.stderr)
                return 1
            for sock in sockets:             # the supervisor's, which gets no connections
                sock.close()
        return serve_one(config_path, host, None, own, WorkerInfo(slot, count, metrics_dir),
                         ready, demo)

    supervisor = Supervisor(count, start, settings.shutdown_grace_s,
                            f"http://{shown}:{bound}", metrics_dir, sockets)
    try:
        return supervisor.run()
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
