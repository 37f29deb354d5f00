"""The PostgreSQL engine: ``PostgresStorage`` and its repositories on an asyncpg pool, with
the statements they run (the schema, its migration and the longer statements are in
``postgres_schema.py``).

Any number of processes, on any number of hosts, share one database; every method is one
statement, atomic on its own:

* ``insert_key``: one ``INSERT … ON CONFLICT`` on the partial unique index of active keys
  per IP, returning the row that is there, so N processes' first visits from one IP at once
  leave one key, and each of them gets it back;
* ``usage.add``: one ``INSERT … SELECT unnest(…) ON CONFLICT DO UPDATE`` adding to the
  stored totals (rows in one order, so concurrent batches never deadlock), in one
  transaction with the usage journal's mark when it names one;
* ``changed_elsewhere``: one read of the ``key_changes`` counter, which triggers bump once
  per row changed in keys or blocks; this storage adds its own writes to what it knows, so
  only other processes' writes count;
* ``listen``: a connection of its own LISTENs on ``apiarium_changes``, on which every write
  through ``write`` (a revoke, a block, an rpm: what must reach every process at once) sends
  a NOTIFY once committed, so the other processes reload within milliseconds.  A new key
  sends none (another process finds it when it is first used, ``KeyService.unseen``: a
  burst of new keys does not make every process reload); the gateway still polls the
  counter every 2 s (a write made with plain SQL sends none either), and every 0.5 s while
  the listening connection is down, which it opens again on its next ``listen``.

The pool opens up to ``POOL_MAX`` connections per storage as they are needed (the gateway
opens two storages: keys and usage; mind the server's ``max_connections`` for many
processes) and closes them after ``IDLE_S`` unused, with timeouts to connect, to wait for a
free connection and for each statement.  (No floor of open connections: asyncpg would log a
traceback each time it failed to restore one during an outage.)  A server that cannot be
reached raises ``StorageUnavailable`` (503 on the request path); the pool connects again on
the next call, so the storage recovers by itself when the server is back.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from . import (
    BlockRecord,
    KeyRecord,
    NewKey,
    StorageError,
    StorageUnavailable,
    UsageRow,
    describe,
)
from .postgres_jobs import PostgresVideoJobs
from .postgres_schema import (
    ADD_USAGE,
    CLAIM_FINGERPRINT,
    INSERT_KEY,
    MARK_JOURNAL,
    SCHEMA_VERSION,
    SELECT_KEYS,
    SELECT_USAGE,
    TOUCH,
    migrate,
    version_of,
)

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]
POOL_MAX = 4
CONNECT_TIMEOUT_S = 5.0         # to open a connection
ACQUIRE_TIMEOUT_S = 10.0        # to wait for a free one
STATEMENT_TIMEOUT_S = 10.0      # for one statement's answer
IDLE_S = 300.0                  # an idle connection is closed after this
CHANNEL = "apiarium_changes"    # NOTIFY'd after each write to keys or blocks
# the server is down, restarting, out of connections, or too slow to answer
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.exceptions.OperatorInterventionError,
                asyncpg.exceptions.InsufficientResourcesError)


def _scrubber(url: str) -> Callable[[object], str]:
    """A function that writes an error's text with the URL's password (if any) masked."""
    parts = urlsplit(url)
    found = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    secrets = sorted({s for p in found if p for s in (p, unquote(p))}, key=len, reverse=True)

    def scrub(exc: object) -> str:
        text = str(exc) or type(exc).__name__
        for secret in secrets:
            text = text.replace(secret, "***")
        return text
    return scrub


def _failure(name: str, scrub: Callable[[object], str], exc: BaseException) -> StorageError:
    if isinstance(exc, _UNREACHABLE):
        why = "no answer in time" if isinstance(exc, TimeoutError) else scrub(exc)
        return StorageUnavailable(f"{name}: the database cannot be reached ({why})")
    return StorageError(f"{name}: {scrub(exc)}")


def _rows(status: str) -> int:
    """The rows a command changed, from its status (``UPDATE 3``, ``INSERT 0 1``)."""
    return int(status.rpartition(" ")[2] or 0)


class PostgresStorage:
    """The ``Storage`` of one PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool, name: str, scrub: Callable[[object], str],
                 found_version: int, url: str = "") -> None:
        self.name = name
        self._url = url
        self._listener: asyncpg.Connection | None = None
        self.found_version = found_version
        self._pool: asyncpg.Pool | None = pool
        self._scrub = scrub
        self.count_lock = asyncio.Lock()     # a counted write and the counter's read
        self.changes = -1                    # key_changes.n as this storage knows it
        self.keys = PostgresKeys(self)
        self.blocks = PostgresBlocks(self)
        self.usage = PostgresUsage(self)
        self.videos = PostgresVideoJobs(self)

    @classmethod
    async def open(cls, url: str) -> PostgresStorage:
        name, scrub = describe(url), _scrubber(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=0, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT_S,
                command_timeout=STATEMENT_TIMEOUT_S, max_inactive_connection_lifetime=IDLE_S,
                server_settings={"application_name": "apiarium"})
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, *_UNREACHABLE) \
                as exc:
            raise _failure(name, scrub, exc) from None
        try:
            async with cls._acquired(pool, name, scrub) as conn:
                found = await migrate(conn)
            storage = cls(pool, name, scrub, found, url)
            await storage.changed_elsewhere()        # what this storage starts from
        except BaseException:
            pool.terminate()
            raise
        return storage

    @staticmethod
    @contextlib.asynccontextmanager
    async def _acquired(pool: asyncpg.Pool, name: str,
                        scrub: Callable[[object], str]) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; every driver error on it, mapped to a StorageError."""
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                yield conn
        except StorageError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, *_UNREACHABLE) as exc:
            raise _failure(name, scrub, exc) from None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError(f"{self.name}: the database is closed")
        return self._pool

    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return self._acquired(self.pool, self.name, self._scrub)

    async def close(self) -> None:
        await self._drop_listener()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), STATEMENT_TIMEOUT_S)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def write(self, sql: str, *args: Any, counted: bool = True) -> int:
        """One statement; the rows it changed.  ``counted``: the change triggers count them,
        so this storage's own writes do not look like another process's, and the listening
        processes are told (once it is committed: each statement is its own transaction)."""
        if not counted:
            async with self.connection() as conn:
                return _rows(await conn.execute(sql, *args))
        async with self.count_lock, self.connection() as conn:
            n = _rows(await conn.execute(sql, *args))
            self.changes += n
            if n:
                await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
        return n

    async def listen(self, on_change: Callable[[], None]) -> bool:
        if self._listener is not None and not self._listener.is_closed():
            return True
        await self._drop_listener()
        try:
            conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_S,
                                         command_timeout=STATEMENT_TIMEOUT_S,
                                         server_settings={"application_name": "apiarium"})
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, *_UNREACHABLE):
            return False                   # the outage the pool reports; polled meanwhile
        try:
            await conn.add_listener(CHANNEL, lambda *_: on_change())
        except (asyncpg.PostgresError, asyncpg.InterfaceError, *_UNREACHABLE):
            conn.terminate()
            return False
        self._listener = conn
        on_change()                        # what changed while no one listened
        return True

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def changed_elsewhere(self) -> bool:
        async with self.count_lock:
            n = await self.fetchval("SELECT n FROM key_changes WHERE id = 1")
            if n == self.changes:
                return False
            self.changes = n
            return True

    async def upgrade_keys(self, rewrite: Callable[[KeyRecord], KeyRecord]) -> int:
        """Nothing to do: keys in PostgreSQL were hashed with the key secret from the start."""
        return 0

    async def schema_version(self) -> int:
        async with self.connection() as conn:
            return await version_of(conn)

    async def claim_secret(self, fingerprint: str) -> str:
        async with self.connection() as conn:
            await conn.execute(CLAIM_FINGERPRINT, fingerprint)
            return str(await conn.fetchval("SELECT fingerprint FROM key_secret WHERE id = 1"))


class PostgresKeys:
    """``KeyRepository`` on the ``keys`` table."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._s = storage

    async def active(self) -> list[KeyRecord]:
        rows = await self._s.fetch(SELECT_KEYS + " WHERE status = 'active' ORDER BY id")
        return [KeyRecord(*row) for row in rows]

    async def find(self, *, key_hash: str | None = None, key_prefix: str | None = None,
                   ip: str | None = None, status: str | None = None) -> list[KeyRecord]:
        given = {"key_hash": key_hash, "key_prefix": key_prefix, "ip": ip, "status": status}
        args = [v for v in given.values() if v is not None]
        columns = [column for column, v in given.items() if v is not None]
        # the column names are this dict's keys; every value is bound
        where = " AND ".join(f"{column} = ${i}" for i, column in enumerate(columns, 1))
        sql = f"{SELECT_KEYS} WHERE {where or 'true'} ORDER BY id"
        return [KeyRecord(*row) for row in await self._s.fetch(sql, *args)]

    async def issued_since(self, since: int, *, ipv6_only: bool = False) -> list[tuple[str, int]]:
        rows = await self._s.fetch(
            "SELECT ip, created FROM keys WHERE created > $1 "
            "AND (NOT $2 OR strpos(ip, ':') > 0) ORDER BY created, id", since, ipv6_only)
        return [(ip, created) for ip, created in rows]

    async def next_generation(self, ip: str) -> int:
        return int(await self._s.fetchval(
            "SELECT COALESCE(MAX(generation), -1) + 1 FROM keys WHERE ip = $1", ip))

    async def insert_key(self, new: NewKey) -> KeyRecord | None:
        s = self._s
        async with s.count_lock, s.connection() as conn:
            try:
                row = await conn.fetchrow(INSERT_KEY, new.key_hash, new.key_prefix, new.ip,
                                          new.generation, new.created, new.rpm)
            except asyncpg.UniqueViolationError:
                # the hash is taken: by a key of this generation revoked since, or by the
                # same new key, inserted by another process while this statement ran
                row = None
            if row is not None:
                s.changes += row["inserted"]
                return KeyRecord(*list(row.values())[:-1])
            found = await conn.fetchrow(SELECT_KEYS + " WHERE ip = $1 AND status = 'active'",
                                        new.ip)
        return KeyRecord(*found) if found is not None else None

    async def revoke(self, key_id: int, when: int) -> bool:
        return await self._s.write("UPDATE keys SET status = 'revoked', revoked_at = $1 "
                                   "WHERE id = $2 AND status = 'active'", when, key_id) > 0

    async def set_rpm(self, key_id: int, rpm: int | None) -> bool:
        return await self._s.write("UPDATE keys SET rpm = $1 WHERE id = $2", rpm, key_id) > 0

    async def touch(self, last_used: Mapping[int, int]) -> None:
        if not last_used:
            return
        ids = sorted(last_used)                   # rows locked in one order by every process
        await self._s.write(TOUCH, ids, [last_used[i] for i in ids], counted=False)


class PostgresBlocks:
    """``BlockRepository`` on the ``blocks`` table."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._s = storage

    async def all(self) -> list[BlockRecord]:
        rows = await self._s.fetch("SELECT cidr, created, note FROM blocks "
                                   "ORDER BY created, cidr")
        return [BlockRecord(*row) for row in rows]

    async def add(self, cidr: str, created: int, note: str = "") -> bool:
        return await self._s.write("INSERT INTO blocks (cidr, created, note) VALUES ($1, $2, $3) "
                                   "ON CONFLICT (cidr) DO NOTHING", cidr, created, note) > 0

    async def remove(self, cidr: str) -> bool:
        return await self._s.write("DELETE FROM blocks WHERE cidr = $1", cidr) > 0


class PostgresUsage:
    """``UsageRepository`` on the ``usage`` table."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._s = storage

    async def day(self, day: str) -> list[UsageRow]:
        rows = await self._s.fetch(SELECT_USAGE + " WHERE day = $1 ORDER BY key_hash", day)
        return [UsageRow(*row) for row in rows]

    async def days(self, key_hash: str, first: str, last: str) -> list[UsageRow]:
        rows = await self._s.fetch(SELECT_USAGE + " WHERE key_hash = $1 AND day >= $2 AND "
                                   "day <= $3 ORDER BY day", key_hash, first, last)
        return [UsageRow(*row) for row in rows]

    async def add(self, rows: Sequence[UsageRow], journal: str = "", segment: int = 0) -> None:
        if not journal:
            if rows:
                await self._s.write(ADD_USAGE, *_columns(rows), counted=False)
            return
        async with self._s.connection() as conn, conn.transaction():
            if rows:
                await conn.execute(ADD_USAGE, *_columns(rows))
            await conn.execute(MARK_JOURNAL, journal, segment)

    async def journal_segment(self, journal: str) -> int:
        found = await self._s.fetchval("SELECT segment FROM usage_journals WHERE journal = $1",
                                       journal)
        return int(found or 0)

    async def forget_journal(self, journal: str) -> None:
        await self._s.write("DELETE FROM usage_journals WHERE journal = $1", journal,
                            counted=False)


def _columns(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    """ADD_USAGE's arrays: one row per (key, day), in that order."""
    merged = sorted(_merged(rows).items())
    return list(zip(*(key + totals for key, totals in merged), strict=True))


def _merged(rows: Iterable[UsageRow]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """One row per (key, day): a statement may not update a row twice."""
    out: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        totals = out.setdefault((r.key_hash, r.day), [0, 0, 0, 0, 0, 0.0])
        for i, v in enumerate((r.requests, r.prompt_tokens, r.completion_tokens, r.images,
                               r.video_seconds, r.credits)):
            totals[i] += v
    return {key: tuple(totals) for key, totals in out.items()}
