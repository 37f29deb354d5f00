"""The SQLite engine: ``SqliteStorage`` and its repositories, with every SQL statement they
run (the schema and its migrations are in ``sqlite_schema.py``).

One ``SqliteStorage`` is one aiosqlite connection (WAL mode, a busy timeout, autocommit), so
the gateway and the admin CLI write the same file safely.  Its writes go one at a time (a
lock), so a statement of one coroutine never lands inside another's transaction.
"""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from . import BlockRecord, KeyRecord, NewKey, StorageError, UsageRow
from .sqlite_jobs import SqliteVideoJobs
from .sqlite_schema import (
    ADD_USAGE,
    MARK_JOURNAL,
    SCHEMA_VERSION,
    SELECT_KEYS,
    SELECT_USAGE,
    migrate,
    migrate_past_2,
    private_files,
    rewrite_keys,
    user_version,
    value,
)

__all__ = ["SCHEMA_VERSION", "SqliteStorage"]
TOUCH_BATCH = 5000        # rows per UPDATE statement when writing last-used times


class SqliteStorage:
    """The ``Storage`` of one SQLite file."""

    def __init__(self, db: aiosqlite.Connection, path: Path, found_version: int = 0) -> None:
        self.path = path
        self.found_version = found_version
        self._db: aiosqlite.Connection | None = db
        self.write_lock = asyncio.Lock()
        self._data_version = -1
        self._changes = -1                   # key_changes.n as this connection knows it
        self.keys = SqliteKeys(self)
        self.blocks = SqliteBlocks(self)
        self.usage = SqliteUsage(self)
        self.videos = SqliteVideoJobs(self)

    @classmethod
    async def open(cls, path: Path) -> SqliteStorage:
        """Connect, switch to WAL, migrate (several processes may open one file at once)."""
        try:
            private_files(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{path}: cannot open the database: {exc}") from None
        try:
            await db.execute("PRAGMA busy_timeout=5000")
            await _wal(db)
            await db.execute("PRAGMA synchronous=NORMAL")
            found = await user_version(db)
            await migrate(db)
            storage = cls(db, path, found)
            await storage.changed_elsewhere()        # what this connection starts from
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StorageError(f"{path}: cannot use the database: {exc}") from None
            raise
        return storage

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self.path}: the database is closed")
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            async with self.write_lock:
                await db.close()

    async def changed_elsewhere(self) -> bool:
        db = self.db
        version = await value(db, "PRAGMA data_version")
        if version == self._data_version:
            return False
        self._data_version = version
        changes = await value(db, "SELECT n FROM key_changes WHERE id = 1")
        if changes == self._changes:          # e.g. usage rows written: nothing for keys
            return False
        self._changes = changes
        return True

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """SQLite cannot tell: the caller polls (``PRAGMA data_version`` is one cheap read)."""
        return False

    async def schema_version(self) -> int:
        return await user_version(self.db)

    async def claim_secret(self, fingerprint: str) -> str:
        async with self.write_lock:
            await self.write("INSERT OR IGNORE INTO key_secret (id, fingerprint, created) "
                             "VALUES (1, ?, CAST(strftime('%s', 'now') AS INTEGER))",
                             (fingerprint,), counted=False)
        return str(await value(self.db, "SELECT fingerprint FROM key_secret WHERE id = 1"))

    async def upgrade_keys(self, rewrite: Callable[[KeyRecord], KeyRecord]) -> int:
        """Version 1 → 2, once, in one transaction that holds the write lock: store
        ``rewrite(record)``'s ``key_hash`` and ``key_prefix`` for every key, and file the
        usage rows of each changed hash under the new one; then on to 6 (``video_jobs``, its
        leases, ``usage_journals``, ``key_secret``).
        The number of keys changed."""
        db = self.db
        if await user_version(db) >= SCHEMA_VERSION:
            return 0
        async with self.write_lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                if await user_version(db) < 2:
                    changed = await rewrite_keys(db, rewrite)
                    await db.execute("UPDATE key_changes SET n = n + 1 WHERE id = 1")
                    await db.execute("PRAGMA user_version = 2")
                    self._changes = await value(db, "SELECT n FROM key_changes WHERE id = 1")
                await migrate_past_2(db)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return changed

    async def fetch(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, tuple(args)))

    async def insert(self, sql: str, args: Iterable[Any]) -> int | None:
        """One counted INSERT (the caller holds the write lock): the new row's id, or None
        if nothing was inserted."""
        async with self.db.execute(sql, tuple(args)) as cur:
            inserted, row_id = cur.rowcount == 1, cur.lastrowid
        if not inserted:
            return None
        self._changes += 1
        return row_id

    async def write(self, sql: str, args: Iterable[Any] = (), counted: bool = True) -> int:
        """One statement, under the write lock (the caller holds it); its rows changed.
        ``counted``: the change triggers count it, so this connection's own writes do not
        look like another process's."""
        async with self.db.execute(sql, tuple(args)) as cur:
            n = max(cur.rowcount, 0)
        if counted:
            self._changes += n
        return n


class SqliteKeys:
    """``KeyRepository`` on the ``keys`` table."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._s = storage

    async def active(self) -> list[KeyRecord]:
        rows = await self._s.fetch(SELECT_KEYS + " WHERE status = 'active'")
        return [KeyRecord(*row) for row in rows]

    async def find(self, *, key_hash: str | None = None, key_prefix: str | None = None,
                   ip: str | None = None, status: str | None = None) -> list[KeyRecord]:
        given = {"key_hash": key_hash, "key_prefix": key_prefix, "ip": ip, "status": status}
        where = " AND ".join(f"{column} = ?" for column, v in given.items() if v is not None)
        args = [v for v in given.values() if v is not None]
        # the column names are this dict's keys; every value is bound
        sql = f"{SELECT_KEYS} WHERE {where or '1'} ORDER BY id"
        return [KeyRecord(*row) for row in await self._s.fetch(sql, args)]

    async def issued_since(self, since: int, *, ipv6_only: bool = False) -> list[tuple[str, int]]:
        sql = ("SELECT ip, created FROM keys WHERE created > ? AND instr(ip, ':') > 0 "
               "ORDER BY created") if ipv6_only else \
            "SELECT ip, created FROM keys WHERE created > ? ORDER BY created"
        return [(ip, created) for ip, created in await self._s.fetch(sql, (since,))]

    async def next_generation(self, ip: str) -> int:
        rows = await self._s.fetch(
            "SELECT COALESCE(MAX(generation), -1) + 1 FROM keys WHERE ip = ?", (ip,))
        return int(rows[0][0])

    async def insert_key(self, new: NewKey) -> KeyRecord | None:
        s = self._s
        async with s.write_lock:
            key_id = await s.insert(
                "INSERT INTO keys (key_hash, key_prefix, ip, generation, created, rpm) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (new.key_hash, new.key_prefix, new.ip, new.generation, new.created, new.rpm))
        if key_id is not None:
            return KeyRecord(key_id, new.key_hash, new.key_prefix, new.ip, new.generation,
                             new.created, new.rpm)
        found = await self.find(ip=new.ip, status="active")
        return found[0] if found else None

    async def revoke(self, key_id: int, when: int) -> bool:
        async with self._s.write_lock:
            return await self._s.write("UPDATE keys SET status = 'revoked', revoked_at = ? "
                                       "WHERE id = ? AND status = 'active'", (when, key_id)) > 0

    async def set_rpm(self, key_id: int, rpm: int | None) -> bool:
        async with self._s.write_lock:
            return await self._s.write("UPDATE keys SET rpm = ? WHERE id = ?",
                                       (rpm, key_id)) > 0

    async def touch(self, last_used: Mapping[int, int]) -> None:
        items = list(last_used.items())
        async with self._s.write_lock:
            for i in range(0, len(items), TOUCH_BATCH):
                chunk = items[i:i + TOUCH_BATCH]
                values = ",".join("(?, ?)" for _ in chunk)     # placeholders only
                await self._s.write(
                    f"WITH t(id, ts) AS (VALUES {values}) "  # noqa: S608
                    "UPDATE keys SET last_used = (SELECT ts FROM t WHERE t.id = keys.id) "
                    "WHERE id IN (SELECT id FROM t)",
                    [v for pair in chunk for v in pair], counted=False)


class SqliteBlocks:
    """``BlockRepository`` on the ``blocks`` table."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._s = storage

    async def all(self) -> list[BlockRecord]:
        rows = await self._s.fetch("SELECT cidr, created, note FROM blocks "
                                   "ORDER BY created, cidr")
        return [BlockRecord(*row) for row in rows]

    async def add(self, cidr: str, created: int, note: str = "") -> bool:
        async with self._s.write_lock:
            return await self._s.write("INSERT OR IGNORE INTO blocks (cidr, created, note) "
                                       "VALUES (?, ?, ?)", (cidr, created, note)) > 0

    async def remove(self, cidr: str) -> bool:
        async with self._s.write_lock:
            return await self._s.write("DELETE FROM blocks WHERE cidr = ?", (cidr,)) > 0


class SqliteUsage:
    """``UsageRepository`` on the ``usage`` table."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._s = storage

    async def day(self, day: str) -> list[UsageRow]:
        rows = await self._s.fetch(SELECT_USAGE + " WHERE day = ?", (day,))
        return [UsageRow(*row) for row in rows]

    async def days(self, key_hash: str, first: str, last: str) -> list[UsageRow]:
        rows = await self._s.fetch(SELECT_USAGE + " WHERE key_hash = ? AND day >= ? AND "
                                   "day <= ? ORDER BY day", (key_hash, first, last))
        return [UsageRow(*row) for row in rows]

    async def add(self, rows: Sequence[UsageRow], journal: str = "", segment: int = 0) -> None:
        if not rows and not journal:
            return
        db = self._s.db
        async with self._s.write_lock:
            await db.execute("BEGIN")
            try:
                await db.executemany(
                    ADD_USAGE,
                    [(r.key_hash, r.day, r.requests, r.prompt_tokens, r.completion_tokens,
                      r.images, r.video_seconds, r.credits) for r in rows])
                if journal:
                    await db.execute(MARK_JOURNAL, (journal, segment))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    async def journal_segment(self, journal: str) -> int:
        rows = await self._s.fetch("SELECT segment FROM usage_journals WHERE journal = ?",
                                   (journal,))
        return int(rows[0][0]) if rows else 0

    async def forget_journal(self, journal: str) -> None:
        async with self._s.write_lock:
            await self._s.write("DELETE FROM usage_journals WHERE journal = ?", (journal,),
                                counted=False)


async def _wal(db: aiosqlite.Connection, attempts: int = 50) -> None:
    """``journal_mode=WAL``: switching needs the file to itself and SQLite answers "locked"
    at once, without its busy handler, while another process opens it too; so retry."""
    for attempt in range(attempts):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))
