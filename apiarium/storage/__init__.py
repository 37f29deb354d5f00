"""What the services ask of a database: the repositories as Protocols, the plain records they
exchange, and ``open_storage``, which picks the engine from the ``database`` setting.

Engines: ``sqlite.py`` (a path, or ``sqlite:PATH``; the default) and ``postgres.py``
(a ``postgresql://`` or ``postgres://`` URL; several processes and hosts share one database).
(Video jobs, ``VideoJobRepository``: ``sqlite_jobs.py`` and ``postgres_jobs.py``.)

Rules every engine keeps, so that several processes (gateway workers, the admin CLI) can
share one database:

* each method is one unit of work, atomic on its own; nothing reads a row to write it back:
  ``KeyRepository.insert_key`` returns the IP's existing active key on conflict (one
  ``INSERT … ON CONFLICT`` in PostgreSQL), ``UsageRepository.add`` adds to stored totals;
* no domain logic: key derivation, caching, limits and messages live in ``services/``;
* ``Storage.changed_elsewhere`` says when another process changed keys or blocks, so a
  service's in-memory copy can be reloaded (cheaply: it is polled, every 0.5 s on SQLite);
  ``Storage.listen`` asks to be told at once instead, where the engine can (PostgreSQL's
  LISTEN/NOTIFY), polling staying the fallback;
* a database that cannot be reached right now (a server stopped, restarting, out of
  connections) raises ``StorageUnavailable``, an ``ApiError`` the handlers answer 503
  ``storage_unavailable``; what is cached in memory (known keys) keeps working;
* a URL's password never appears in a message: ``describe`` names a database.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from ..errors import ApiError

URL_SCHEMES = ("postgresql", "postgres")


class StorageError(Exception):
    """The database cannot be opened or used as configured (the message says why)."""


class StorageUnavailable(StorageError, ApiError):
    """The database cannot be reached right now: 503 ``storage_unavailable``.  Clients get
    the ``message`` below; ``str()`` is the operator's detail (which database, what failed)."""
    status = 503
    type = "server_error"
    default_code = "storage_unavailable"
    public = ("The gateway's database cannot be reached right now, so it cannot issue API "
              "keys. Keys already issued keep working; try again in a minute.")

    def __init__(self, detail: str) -> None:
        ApiError.__init__(self, self.public)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One issued key, as stored (the key itself is never stored, only its hash)."""
    id: int
    key_hash: str
    key_prefix: str       # the key's first characters: safe to log and show
    ip: str
    generation: int       # the IP's n-th key: revoking or rotating moves to the next
    created: int
    rpm: int | None       # None: the configured default
    status: str = "active"
    last_used: int | None = None    # as last written by ``touch`` (None: never used)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to insert (its id is the database's to give)."""
    key_hash: str
    key_prefix: str
    ip: str
    generation: int
    created: int
    rpm: int | None = None


class BlockRecord(NamedTuple):
    """An operator's block of an IP or CIDR (a tuple: ``cidr, created, note = block``)."""
    cidr: str
    created: int
    note: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One key's usage on one UTC day (``key_hash`` is ``master`` for the master key)."""
    key_hash: str
    day: str              # YYYY-MM-DD
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    video_seconds: int = 0
    credits: float = 0.0


class KeyRepository(Protocol):
    async def active(self) -> list[KeyRecord]:
        """Every active key."""

    async def find(self, *, key_hash: str | None = None, key_prefix: str | None = None,
                   ip: str | None = None, status: str | None = None) -> list[KeyRecord]:
        """The keys (active or not, oldest first) matching every criterion given."""

    async def issued_since(self, since: int, *, ipv6_only: bool = False) -> list[tuple[str, int]]:
        """``(ip, created)`` of every key created after ``since``, oldest first."""

    async def next_generation(self, ip: str) -> int:
        """One more than the IP's highest generation so far (0 for a new IP)."""

    async def insert_key(self, new: NewKey) -> KeyRecord | None:
        """Insert ``new`` as the IP's active key, unless the IP already has one or the
        hash is taken.  Returns the IP's active key after the statement: the new row, or
        the one already there (compare ``key_hash``); None if the IP has none (the
        generation was taken by a key revoked since: ask ``next_generation`` again)."""

    async def revoke(self, key_id: int, when: int) -> bool:
        """Mark an active key revoked (False: it was not active)."""

    async def set_rpm(self, key_id: int, rpm: int | None) -> bool:
        """Give a key its own rate limit (None: the default).  False: no such key."""

    async def touch(self, last_used: Mapping[int, int]) -> None:
        """Record when each key (id → unix time) was last used."""


class BlockRepository(Protocol):
    async def all(self) -> list[BlockRecord]:
        """Every block, oldest first."""

    async def add(self, cidr: str, created: int, note: str = "") -> bool:
        """Block a network (False: it already was)."""

    async def remove(self, cidr: str) -> bool:
        """Lift a block (False: there was none for exactly that network)."""


class UsageRepository(Protocol):
    async def day(self, day: str) -> list[UsageRow]:
        """Every key's totals for one UTC day."""

    async def days(self, key_hash: str, first: str, last: str) -> list[UsageRow]:
        """One key's totals on each UTC day from ``first`` to ``last`` (``YYYY-MM-DD``, both
        included), oldest first; a day without usage has no row."""

    async def add(self, rows: Sequence[UsageRow], journal: str = "", segment: int = 0) -> None:
        """Add each row to the stored totals of its (key, day), all or none; with a
        ``journal`` name, record in the same transaction that its segments up to
        ``segment`` are in these totals (a higher number already recorded stays)."""

    async def journal_segment(self, journal: str) -> int:
        """The last segment of a usage journal recorded by ``add`` (0: none)."""

    async def forget_journal(self, journal: str) -> None:
        """Drop a journal's record (its files are gone)."""


@dataclass(frozen=True, slots=True)
class VideoJob:
    """One video job (``POST /v1/videos``, or a blocking request waiting on one), as stored.
    ``owner`` is the key's hash (``master`` for the master key); ``provider``, ``operation``
    and ``served`` say where the render runs once it started upstream (a restart polls that
    operation again); ``media`` is the finished file's name in the media store."""
    id: str
    owner: str
    model: str            # the alias asked for
    prompt: str
    seconds: int
    size: str             # as the SDK shows it (``1280x720``)
    resolution: str
    aspect_ratio: str
    status: str           # queued, in_progress, completed, failed
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    provider: str | None = None
    operation: str | None = None
    served: str | None = None
    media: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class VideoJobRepository(Protocol):
    """Jobs, and their leases: the one process that polls an unfinished job (``lease_owner``,
    e.g. ``host:pid:random``) holds it until ``lease_until`` (epoch seconds) unless it renews;
    an expired lease is anyone's to claim, so a dead process's jobs are taken over."""

    async def create(self, job: VideoJob, lease_owner: str | None = None,
                     lease_until: float | None = None) -> None:
        """Insert a new job (its id is new), leased to ``lease_owner`` when given."""

    async def claimable(self, owner: str, now: float) -> list[VideoJob]:
        """The unfinished jobs whose lease is free, expired at ``now`` or ``owner``'s,
        oldest first."""

    async def claim(self, job_id: str, owner: str, now: float, until: float) -> bool:
        """Lease an unfinished job to ``owner`` until ``until`` if its lease is free, expired
        at ``now`` or already the owner's, in one statement: whether it was won."""

    async def renew(self, job_id: str, owner: str, until: float) -> bool:
        """Extend the owner's lease of an unfinished job; False if the lease is lost (taken
        over, the job finished or deleted)."""

    async def release(self, job_id: str, owner: str) -> bool:
        """Give up the owner's lease (another process may claim the job at once)."""

    async def get(self, job_id: str, owner: str | None = None) -> VideoJob | None:
        """The job with this id (and, when given, this owner), or None."""

    async def page(self, owner: str, after: str | None, limit: int,
                   newest_first: bool = True) -> list[VideoJob]:
        """Up to ``limit`` of the owner's jobs in creation order (newest first, or oldest),
        after the job ``after`` (None: from the start; an id that is not the owner's: none)."""

    async def started(self, job_id: str, provider: str, operation: str, served: str,
                      progress: int) -> bool:
        """Record the upstream operation a job's render runs as (status in_progress)."""

    async def finish(self, job_id: str, *, status: str, when: int, media: str | None = None,
                     expires_at: int | None = None, error_code: str | None = None,
                     error_message: str | None = None) -> bool:
        """Move an unfinished job to ``completed`` or ``failed`` (its lease released); False
        if it was finished already (by another process) or is gone: only one writer ever
        books a job."""

    async def delete(self, job_id: str, owner: str) -> VideoJob | None:
        """Delete the owner's job; what it was (None: no such job of this owner)."""

    async def unfinished(self) -> list[VideoJob]:
        """Every job still queued or in progress, oldest first."""

    async def prune(self, before: int) -> list[str | None]:
        """Delete the jobs that failed, or whose content expired, before ``before`` (epoch
        seconds): the media file name of each (None for a job without one)."""


class Storage(Protocol):
    """One engine's connection to one database, and its repositories."""
    found_version: int        # the schema version the database had when opened (0: new)

    @property
    def keys(self) -> KeyRepository: ...

    @property
    def blocks(self) -> BlockRepository: ...

    @property
    def usage(self) -> UsageRepository: ...

    @property
    def videos(self) -> VideoJobRepository: ...

    async def changed_elsewhere(self) -> bool:
        """True if another connection changed keys or blocks since the last call (or since
        the storage was opened).  Usage rows and last-used times do not count."""

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """Call ``on_change()`` whenever another process changes keys or blocks, and once
        at the start (what changed before is caught up); idempotent.  True while the
        notices can arrive; False when the caller must poll ``changed_elsewhere`` (SQLite;
        PostgreSQL while its listening connection is down: call again to reconnect)."""

    async def upgrade_keys(self, rewrite: Callable[[KeyRecord], KeyRecord]) -> int:
        """Once per database made before keys were hashed with the key secret, in one
        transaction: store ``rewrite(record)``'s ``key_hash`` and ``key_prefix`` for every
        key, and file the usage rows of each changed hash under the new one.  The number of
        keys changed (0: nothing to do, as for every database made since)."""

    async def claim_secret(self, fingerprint: str) -> str:
        """Record ``fingerprint`` as the key secret's unless the database has one already
        (of processes claiming at once, one wins); the one recorded."""

    async def schema_version(self) -> int:
        """The schema version the database is at now."""

    async def close(self) -> None:
        """Close the connection (idempotent)."""


async def open_storage(database: str | Path) -> Storage:
    """The storage the ``database`` setting names, opened and migrated to the current schema:
    a path or ``sqlite:PATH`` → SQLite; a ``postgresql://`` URL → PostgreSQL."""
    url = database_url(database)
    if url is not None:
        from .postgres import PostgresStorage
        return await PostgresStorage.open(url)
    from .sqlite import SqliteStorage
    return await SqliteStorage.open(locate(database)[1])


def is_url(database: str | Path) -> bool:
    """Whether the setting is a PostgreSQL URL as written (``postgresql://…``)."""
    return isinstance(database, str) and \
        database.lower().startswith(tuple(f"{scheme}://" for scheme in URL_SCHEMES))


def database_url(database: str | Path) -> str | None:
    """The PostgreSQL URL the setting names (None: a SQLite file).  Also reads a URL that
    went through an older config's path resolution (``/etc/apiarium/postgresql:/host/db``)."""
    if is_url(database):
        return str(database)
    parts = Path(database).parts
    for i, part in enumerate(parts):
        head, sep, _ = part.partition(":")
        if sep and head.lower() in URL_SCHEMES and part == head + ":":
            return f"{head}://" + "/".join(parts[i + 1:])
        if sep and head.lower() == "sqlite":
            return None
    return None


def describe(database: str | Path) -> str:
    """How messages name a database: its path, or its URL without password or parameters
    (``postgresql://apiarium@db.example:5432/apiarium``)."""
    url = database_url(database)
    if url is None:
        return str(locate(database)[1])
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    user = user.partition(":")[0]
    return f"{parts.scheme}://{user}{at}{hosts}{parts.path}"


def secret_beside(database: str | Path) -> Path:
    """Where the key secret lives by default: ``<database>.secret`` beside a SQLite file.  A
    PostgreSQL database has no folder of its own: its secret file is a setting."""
    if database_url(database) is not None:
        raise StorageError(f"{describe(database)}: a PostgreSQL database needs the key "
                           f"secret's path (the secret_file setting)")
    return Path(f"{locate(database)[1]}.secret")


def locate(database: str | Path) -> tuple[str, Path]:
    """``("sqlite", path)`` or ``("postgresql", …)``.  Also reads a URL that went through the
    config's path resolution (``/etc/apiarium/postgresql:/host/db``, ``…/sqlite:data/x``)."""
    parts = Path(database).parts
    for i, part in enumerate(parts):
        head, sep, rest = part.partition(":")
        scheme = head.lower()
        if not sep or scheme not in ("sqlite", *URL_SCHEMES):
            continue
        if scheme != "sqlite":
            return "postgresql", Path(database)
        if rest:                                  # sqlite:relative/path
            return "sqlite", Path(*parts[:i], rest, *parts[i + 1:])
        return "sqlite", Path("/", *parts[i + 1:])     # sqlite:///absolute/path
    return "sqlite", Path(database)
