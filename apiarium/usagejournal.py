"""The usage journal: what a process counted and has not yet written to the database, kept on
disk as it happens, so that a process killed at any moment (``kill -9``, the OOM killer)
loses no usage.

Where (``journal_folder``): beside a SQLite database, the folder ``<database>.usage-journal``;
with PostgreSQL, ``usage-journal`` in the folder above ``media.dir`` (where the key secret is
kept by default), on each host.  Each process (each worker) writes a journal of its own there,
named ``<pid>-<random>``:

* ``<name>.lock``, locked (``flock``) for as long as the process lives: the kernel lets go of
  it when the process dies, however it dies.  It is made under a hidden name, locked, then
  renamed into place, so no other process ever sees it unlocked while its owner lives;
* ``<name>.<n>.journal``, its segments, numbered from 1: the highest is the one written.

Records are orjson objects, one a line, each appended by one ``os.write`` to a descriptor
opened ``O_APPEND``.  A write is in the kernel's page cache when it returns, which outlives the
process; nothing is synced to the disk (nothing on the request path waits on it), so a power
cut or a kernel crash may lose the last seconds (docs/operations.md says so):

* ``{"h": id, "k": key, "d": day, "m": model, "c": credits}``: a request's credit hold,
  written before its upstream call (``UsageLedger.ahead``);
* ``{"s": id, "k": key, "d": day, "u": [requests, prompt_tokens, completion_tokens, images,
  video_seconds, credits]}``: usage booked (``UsageLedger.record``), settling hold ``id``
  (0: none, e.g. the master key's requests and video jobs, whose row is their write-ahead);
* ``{"r": id}``: a hold let go without usage (the request failed before anything was used).

A flush (``UsageLedger.flush``) neither loses nor doubles a record, wherever the process dies:

1. ``rotate``, in the same step as the ledger takes its batch (no await between): the segment
   written is closed and the next one starts with the holds still open written again; so the
   batch's settles are exactly those in the closed segments not yet in the database;
2. the batch is added to the database in one transaction with the journal's mark
   (``usage_journals``: the journal's name, the last segment now in the totals);
3. the segments up to the mark are deleted.

Dying before 2 leaves segments to book; dying after it, segments the mark says are booked.
Why a mark in the database: no deletion of a file can be made one with a commit, so a
journal deleted after its rows are committed is booked twice if the process dies between the
two; the mark is written in the rows' own transaction, so the database alone says which
segments its totals hold.  Segments rather than one file truncated: a hold in flight must
survive the flush, and a segment is deleted whole (the holds still open are copied forward).

``recover`` (when a ledger opens, before it reads today's totals) takes over the journal of
every dead process, found by its lock: the segments after its mark are read in order; settles
are booked as they say, and a hold neither settled nor let go is booked whole (one request,
the credits held: it may have been served, and the upstream bills it); all in one transaction
with the mark of the last segment read.  Then its files and its mark are deleted.  A recovery
that dies half-way is finished by the next one, by the same rules.  Two live processes never
replay each other's journal: each holds its own lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from .storage import UsageRepository, UsageRow, database_url, locate

log = logging.getLogger("apiarium")

LOCK = ".lock"
SEGMENT = ".journal"
_LINE = orjson.OPT_APPEND_NEWLINE


def journal_folder(database: str | Path, media_dir: Path | None = None) -> Path | None:
    """Where the usage journals of ``database`` are kept (see the module's docstring); None
    for PostgreSQL without ``media_dir``."""
    if database_url(database) is None:
        return Path(f"{locate(database)[1]}.usage-journal")
    return None if media_dir is None else media_dir.parent / "usage-journal"


class Ahead:
    """A hold's record in the journal, kept on the hold: ``end()`` when it is let go (a
    no-op once its usage was booked)."""
    __slots__ = ("ident", "journal")

    def __init__(self, journal: Journal, ident: int) -> None:
        self.journal, self.ident = journal, ident

    def end(self) -> None:
        self.journal.release(self.ident)


class Journal:
    """This process's journal: ``hold``, ``settle`` and ``release`` on the request path (one
    ``os.write`` each); ``rotate`` and ``drop`` around each flush; ``close`` at the end."""

    def __init__(self, folder: Path, name: str, lock_fd: int) -> None:
        self.folder, self.name = folder, name
        self._lock = lock_fd
        self._ids = itertools.count(1)
        self._open: dict[int, bytes] = {}     # holds neither settled nor let go: id -> line
        self._segment = 0                     # the segment written
        self._dropped = 0                     # segments up to this one are deleted
        self._fd = -1
        self.fresh = 0                        # bytes written to it since it opened, the
                                              # holds carried over into it not counted
        self._failing = False                 # the last write failed (logged once)
        self._next_segment()

    @classmethod
    def create(cls, folder: Path) -> Journal:
        """A new journal in ``folder`` (made 0700 if missing), locked."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        hidden = folder / f".{name}{LOCK}"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, folder / f"{name}{LOCK}")
            return cls(folder, name, fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(hidden)
            raise

    def path(self, segment: int) -> Path:
        return self.folder / f"{self.name}.{segment}{SEGMENT}"

    @property
    def holding(self) -> int:
        """Holds open: neither settled nor let go."""
        return len(self._open)

    # ------------------------------------------------------------------ the request path
    def hold(self, key: str, day: str, amount: float, model: str) -> int:
        """Write a hold ahead of its upstream call; its id."""
        ident = next(self._ids)
        line = orjson.dumps({"h": ident, "k": key, "d": day, "m": model, "c": amount},
                            option=_LINE)
        self._open[ident] = line
        self._write(line)
        return ident

    def settle(self, ident: int, key: str, day: str, counts: Sequence[float]) -> None:
        """Write usage booked (``counts``: the ``u`` list), settling hold ``ident`` (0: none)."""
        self._open.pop(ident, None)
        self._write(orjson.dumps({"s": ident, "k": key, "d": day, "u": counts}, option=_LINE))

    def release(self, ident: int) -> None:
        """A hold let go: written only if it was not settled."""
        if self._open.pop(ident, None) is not None:
            self._write(orjson.dumps({"r": ident}, option=_LINE))

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return
        try:
            written = os.write(self._fd, data)
            if written < len(data):          # a full disk: end the torn line
                os.write(self._fd, b"\n")
                raise OSError(f"{written} of {len(data)} bytes written")
        except OSError as exc:
            if not self._failing:
                log.error("usage journal %s: cannot write (%s); until it can, a process "
                          "killed before its next flush loses the usage since",
                          self.path(self._segment), exc)
            self._failing = True
            return
        self.fresh += written
        if self._failing:
            log.info("usage journal %s: writing again", self.path(self._segment))
            self._failing = False

    # ------------------------------------------------------------------ around a flush
    def rotate(self) -> int:
        """If the segment written has new records, close it and start the next; the last
        closed segment (0: none yet)."""
        if self.fresh:
            self._next_segment()
        return self._segment - 1

    def _next_segment(self) -> None:
        n = self._segment + 1
        fd = os.open(self.path(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        old, self._fd, self._segment = self._fd, fd, n
        if self._open:                       # a hold in flight is in every live segment
            self._write(b"".join(self._open.values()))
        self.fresh = 0
        if old >= 0:
            os.close(old)

    def drop(self, upto: int) -> None:
        """Delete the closed segments up to ``upto``: their usage is in the database."""
        for n in range(self._dropped + 1, min(upto, self._segment - 1) + 1):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(n))
        self._dropped = max(self._dropped, upto)

    def close(self, remove: bool = False) -> None:
        """Stop writing and let go of the lock; ``remove``: delete the files first (the
        caller knows all they hold is in the database).  Files left are recovered by the
        next ledger to open."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        os.close(fd)
        if remove:
            for n in range(self._dropped + 1, self._segment + 1):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(n))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / f"{self.name}{LOCK}")
        os.close(self._lock)


@dataclass
class Recovered:
    """What ``recover`` found."""
    journals: int = 0          # of dead processes
    settled: int = 0           # settle records booked
    held: int = 0              # holds booked whole
    unreadable: int = 0        # lines skipped (torn by a full disk)

    def __str__(self) -> str:
        skipped = f", {self.unreadable} unreadable lines skipped" if self.unreadable else ""
        return (f"usage journal: {self.settled + self.held} records recovered from "
                f"{self.journals} stopped process(es): {self.settled} settled, {self.held} "
                f"requests in flight booked at their whole hold{skipped}")


async def recover(repo: UsageRepository, folder: Path, own: str = "") -> Recovered:
    """Book and delete the journal of every dead process in ``folder`` (``own``: this
    process's, skipped)."""
    found = Recovered()
    try:
        locks = sorted(e for e in os.listdir(folder) if e.endswith(LOCK)
                       and not e.startswith(".") and e != own + LOCK)
    except FileNotFoundError:
        return found
    for entry in locks:
        fd = _take(folder / entry)
        if fd is None:                           # its process lives (or it is gone)
            continue
        try:
            await _replay(repo, folder, entry.removesuffix(LOCK), found)
            found.journals += 1
            os.unlink(folder / entry)
        finally:
            os.close(fd)
    return found


def _take(lock: Path) -> int | None:
    """The lock of a dead process's journal, taken (None: its process lives, or another
    recovery took it and deleted the journal)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _segments(folder: Path, name: str) -> list[int]:
    """The numbers of a journal's segments, in order (listed once its lock is taken: the
    process may have started one more before it died)."""
    numbers = []
    for entry in os.listdir(folder):
        n = entry.removeprefix(name + ".").removesuffix(SEGMENT)
        if entry == f"{name}.{n}{SEGMENT}" and n.isdigit():
            numbers.append(int(n))
    return sorted(numbers)


async def _replay(repo: UsageRepository, folder: Path, name: str, found: Recovered) -> None:
    """Book one dead journal's segments after its mark; delete them and the mark."""
    mark = await repo.journal_segment(name)
    numbers = _segments(folder, name)
    holds: dict[int, tuple[str, str, float]] = {}
    totals: dict[tuple[str, str], UsageRow] = {}
    last = mark
    for n in numbers:
        if n <= mark:
            continue
        last = n
        with contextlib.suppress(FileNotFoundError):
            for line in (folder / f"{name}.{n}{SEGMENT}").read_bytes().splitlines():
                kind = _apply(line, holds, totals) if line else "-"
                found.settled += kind == "s"
                found.unreadable += kind == ""
    for key, day, amount in holds.values():
        _add(totals, UsageRow(key, day, requests=1, credits=amount))
        found.held += 1
    if totals:
        await repo.add(list(totals.values()), name, last)
    for n in numbers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / f"{name}.{n}{SEGMENT}")
    await repo.forget_journal(name)


def _apply(line: bytes, holds: dict[int, tuple[str, str, float]],
           totals: dict[tuple[str, str], UsageRow]) -> str:
    """Read one record into ``holds`` and ``totals``: its kind (``h``, ``s``, ``r``), or ""
    if it cannot be read."""
    try:
        rec = orjson.loads(line)
        if "h" in rec:
            holds[int(rec["h"])] = (str(rec["k"]), str(rec["d"]), float(rec["c"]))
            return "h"
        if "s" in rec:
            requests, prompt, completion, images, seconds, cost = rec["u"]
            row = UsageRow(str(rec["k"]), str(rec["d"]), int(requests), int(prompt),
                           int(completion), int(images), int(seconds), float(cost))
            holds.pop(int(rec["s"]), None)
            _add(totals, row)
            return "s"
        if "r" in rec:
            holds.pop(int(rec["r"]), None)
            return "r"
    except (ValueError, TypeError, KeyError):
        pass
    return ""


def _add(totals: dict[tuple[str, str], UsageRow], row: UsageRow) -> None:
    """Add ``row`` to the totals of its (key, day)."""
    t = totals.get((row.key_hash, row.day))
    totals[row.key_hash, row.day] = row if t is None else UsageRow(
        row.key_hash, row.day, t.requests + row.requests, t.prompt_tokens + row.prompt_tokens,
        t.completion_tokens + row.completion_tokens, t.images + row.images,
        t.video_seconds + row.video_seconds, t.credits + row.credits)
