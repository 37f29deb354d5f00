"""The supervisor of ``apiarium serve --workers N``: N forked worker processes, kept running.

No Tornado here: the caller (``workers.py``) has bound the listening sockets and prepared the
database before this forks, and gives ``start(slot, ready_fd)``, what a worker runs (its exit
status is what it returns).  The workers inherit the sockets and accept on them all; the
supervisor itself serves nothing.  It:

* says ``apiarium listening on http://HOST:PORT (N workers)`` once every worker has written
  its line on the ready pipe;
* forwards SIGHUP to every worker (each reloads both YAML files), and on SIGTERM or SIGINT
  sends each SIGTERM (each stops accepting and drains its requests within
  ``server.shutdown_grace_s``), waits for them up to the grace plus ``STOP_MARGIN_S``, kills
  what is left, and exits 0;
* replaces a worker that exits (its metrics are folded into the shared totals first), after
  a back-off that doubles with each crash of the last minute; ``MAX_CRASHES`` crashes in
  ``CRASH_WINDOW_S`` mean something is wrong that restarting will not fix: it stops the
  others and exits 1 (systemd's ``Restart=on-failure`` then takes over);
* logs each of these events in one line.

A worker dies with its supervisor (``PR_SET_PDEATHSIG`` sends it SIGTERM, so it drains).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from .metrics import fold_dead

log = logging.getLogger("apiarium.supervisor")

MAX_CRASHES = 5           # crashes within CRASH_WINDOW_S that make the supervisor give up
CRASH_WINDOW_S = 60.0
BACKOFF_S = 0.5           # the first restart's wait; doubled per recent crash
MAX_BACKOFF_S = 10.0
STOP_MARGIN_S = 5.0       # beyond the grace, before a worker that has not stopped is killed
PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def describe_exit(status: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``, from a ``waitpid`` status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux); if the parent
    is already gone, exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class Supervisor:
    """Runs ``count`` workers until SIGTERM/SIGINT (``run`` returns 0), or until they crash
    too often (1)."""

    def __init__(self, count: int, start: Callable[[int, int], int], grace_s: float,
                 url: str, metrics_dir: Path | None = None,
                 sockets: Sequence[socket.socket] = ()) -> None:
        self.count = count
        self.sockets = sockets              # the listening ones: closed when stopping
        self.start = start
        self.grace_s = grace_s
        self.url = url
        self.metrics_dir = metrics_dir
        self.pids: dict[int, int] = {}                  # pid -> slot
        self._restart_at: dict[int, float] = {}         # slot -> when to start it again
        self._crashes: deque[float] = deque()
        self._signals: list[int] = []
        self._ready: set[int] = set()                   # slots whose first worker is ready
        self._announced = False
        self._buffer = b""
        self._wake_r, self._wake_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.set_blocking(fd, False)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        saved = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            log.info("supervisor (pid %d) starting %d workers", os.getpid(), self.count)
            for slot in range(self.count):
                self._spawn(slot)
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _loop(self) -> int:
        while True:
            while self._signals:             # first: a worker that exits on a SIGTERM
                sig = self._signals.pop(0)   # everyone got (systemd's stop) is not replaced
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("supervisor: %s: stopping %d workers (grace %gs)",
                             signal.Signals(sig).name, len(self.pids), self.grace_s)
                    return self._stop(0)
                if sig == signal.SIGHUP:
                    log.info("supervisor: SIGHUP: every worker reloads its configuration")
                    self._send_all(signal.SIGHUP)
            self._reap(stopping=False)
            if len(self._crashes) >= MAX_CRASHES:
                log.error("supervisor: workers crashed %d times in %gs: giving up",
                          len(self._crashes), CRASH_WINDOW_S)
                return self._stop(1)
            now = time.monotonic()
            for slot, when in list(self._restart_at.items()):
                if when <= now:
                    del self._restart_at[slot]
                    self._spawn(slot)
            timeout = max(0.0, min(self._restart_at.values()) - now) \
                if self._restart_at else None
            self._wait(timeout)

    def _wait(self, timeout: float | None) -> None:
        """Until a signal, a ready line, or ``timeout``."""
        readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        if self._ready_r in readable:
            self._read_ready()

    def _read_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._ready_r, 4096):
                self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            slot, _, pid = line.decode(errors="replace").partition(" ")
            if not slot.isdigit():
                continue
            if self._announced:
                log.info("supervisor: worker %s (pid %s) ready", slot, pid)
                continue
            self._ready.add(int(slot))
            if len(self._ready) == self.count:
                self._announced = True
                log.info("apiarium listening on %s (%d workers)", self.url, self.count)

    # ------------------------------------------------------------------ workers
    def _spawn(self, slot: int) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                                   # the worker
            code = 1
            try:
                self._become_worker(parent)
                code = self.start(slot, self._ready_w)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - a worker's last word, then its exit
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pids[pid] = slot
        log.info("supervisor: worker %d started (pid %d)", slot, pid)

    def _become_worker(self, parent: int) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # until the worker's loop handles it (a reload forwarded while it starts is moot:
        # it is reading the configuration anyway)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (self._wake_r, self._wake_w, self._ready_r):
            os.close(fd)
        die_with_parent(parent)

    def _reap(self, stopping: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            if self.metrics_dir is not None:
                try:
                    fold_dead(self.metrics_dir, pid)
                except OSError as exc:
                    log.warning("supervisor: keeping worker %d's metrics: %s", slot, exc)
            how = describe_exit(status)
            if stopping:
                log.info("supervisor: worker %d (pid %d) %s", slot, pid, how)
            else:
                self._replace(slot, pid, status, how)

    def _replace(self, slot: int, pid: int, status: int, how: str) -> None:
        now = time.monotonic()
        if os.waitstatus_to_exitcode(status) == 0:       # stopped on purpose: not a crash
            log.warning("supervisor: worker %d (pid %d) %s; starting another", slot, pid, how)
            self._restart_at[slot] = now
            return
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - CRASH_WINDOW_S:
            self._crashes.popleft()
        wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (len(self._crashes) - 1))
        log.warning("supervisor: worker %d (pid %d) %s; restarting it in %.1fs", slot, pid,
                    how, wait)
        self._restart_at[slot] = now + wait

    def _send_all(self, sig: int) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _stop(self, code: int) -> int:
        """SIGTERM to every worker; wait for them within the grace (and a margin); kill the
        rest.  Returns ``code``."""
        self._restart_at.clear()
        for sock in self.sockets:            # with the workers', the port closes: refused
            sock.close()
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + STOP_MARGIN_S
        while True:
            self._reap(stopping=True)
            if not self.pids:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("supervisor: %d workers still running after %gs: killing them",
                            len(self.pids), self.grace_s + STOP_MARGIN_S)
                self._send_all(signal.SIGKILL)
                for pid in list(self.pids):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                    self.pids.pop(pid, None)
                break
            self._signals.clear()            # a second SIGTERM changes nothing
            self._wait(min(left, 1.0))
        log.info("supervisor: stopped")
        return code
