"""The SQLite engine's schema: its tables, the versioned migration, and the file modes.

Schema versions (``PRAGMA user_version``; databases made before versions existed are 0):

1. ``keys`` (one active key per IP), ``blocks``, ``usage`` per key and UTC day, and
   ``key_changes``, a counter that triggers bump on every change to keys or blocks (not on
   last-used times), so a connection sees another process's edits by ``PRAGMA
   data_version`` first (free when nothing happened), then by that counter.
2. keys hashed with the key secret: ``rewrite_keys`` stores each key's new hash and prefix
   (the key service computes them) and files its usage rows under the new hash.  It needs
   the secret, so the key service runs it on open (``SqliteStorage.upgrade_keys``);
   ``migrate`` goes up to version 1.
3. ``video_jobs``: the jobs of ``POST /v1/videos`` (and of the blocking video requests),
   with the upstream operation each render runs as.  It needs no secret: ``migrate`` takes a
   version-2 database to 3, and ``upgrade_keys`` goes on from 2 to 3 in its transaction.
4. ``video_jobs.lease_owner`` and ``lease_until``: the process that polls a job, and until
   when (epoch seconds) its claim holds unless renewed (``VideoJobRepository.claim``).  No
   secret either: ``migrate`` and ``upgrade_keys`` take 2 or 3 on to 4 (``migrate_past_2``).
5. ``usage_journals``: per usage journal (``apiarium/usagejournal.py``), the last of its
   segments whose usage is in the ``usage`` rows, written in the same transaction as them.
   No secret: ``migrate`` and ``upgrade_keys`` take 2, 3 or 4 on to 5; a new database gets
   the table with version 1 (a usage ledger may open it before the key service).
6. ``key_secret``: the fingerprint of the key secret the database was first used with
   (``Storage.claim_secret``), one row.  No secret needed to make the table: on to 6 the
   same way.

The database, its -wal and -shm files are created 0600 (SQLite gives the latter two the
database's mode), in a folder created 0700; files made looser by older versions are
tightened on open.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite

from . import KeyRecord, StorageError

SCHEMA_VERSION = 6        # the newest this code knows; ``migrate`` skips 2, see above

USAGE_JOURNALS = """CREATE TABLE IF NOT EXISTS usage_journals (
        journal     TEXT PRIMARY KEY,
        segment     INTEGER NOT NULL)"""
_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS keys (
        id          INTEGER PRIMARY KEY,
        key_hash    TEXT NOT NULL UNIQUE,
        key_prefix  TEXT NOT NULL,
        ip          TEXT NOT NULL,
        generation  INTEGER NOT NULL,
        created     INTEGER NOT NULL,
        rpm         INTEGER,
        status      TEXT NOT NULL DEFAULT 'active',
        revoked_at  INTEGER,
        last_used   INTEGER)""",
    ("CREATE UNIQUE INDEX IF NOT EXISTS keys_one_active_per_ip ON keys(ip) "
     "WHERE status = 'active'"),
    "CREATE INDEX IF NOT EXISTS keys_ip ON keys(ip)",
    "CREATE INDEX IF NOT EXISTS keys_created ON keys(created)",
    """CREATE TABLE IF NOT EXISTS blocks (
        cidr        TEXT PRIMARY KEY,
        created     INTEGER NOT NULL,
        note        TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS usage (
        key_hash          TEXT NOT NULL,
        day               TEXT NOT NULL,
        requests          INTEGER NOT NULL DEFAULT 0,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        images            INTEGER NOT NULL DEFAULT 0,
        video_seconds     INTEGER NOT NULL DEFAULT 0,
        credits           REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (key_hash, day))""",
    """CREATE TABLE IF NOT EXISTS key_changes (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        n           INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO key_changes (id, n) VALUES (1, 0)",
    ("CREATE TRIGGER IF NOT EXISTS keys_ins AFTER INSERT ON keys "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    ("CREATE TRIGGER IF NOT EXISTS keys_upd AFTER UPDATE OF status, rpm, generation, ip ON keys "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    ("CREATE TRIGGER IF NOT EXISTS keys_del AFTER DELETE ON keys "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    ("CREATE TRIGGER IF NOT EXISTS blocks_ins AFTER INSERT ON blocks "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    ("CREATE TRIGGER IF NOT EXISTS blocks_upd AFTER UPDATE ON blocks "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    ("CREATE TRIGGER IF NOT EXISTS blocks_del AFTER DELETE ON blocks "
     "BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END"),
    USAGE_JOURNALS,
]
SELECT_KEYS = ("SELECT id, key_hash, key_prefix, ip, generation, created, rpm, status, "
               "last_used FROM keys")
SELECT_USAGE = ("SELECT key_hash, day, requests, prompt_tokens, completion_tokens, images, "
                "video_seconds, credits FROM usage")
ADD_USAGE = ("INSERT INTO usage (key_hash, day, requests, prompt_tokens, completion_tokens, "
             "images, video_seconds, credits) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
             "ON CONFLICT (key_hash, day) DO UPDATE SET "
             "requests = requests + excluded.requests, "
             "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
             "completion_tokens = completion_tokens + excluded.completion_tokens, "
             "images = images + excluded.images, "
             "video_seconds = video_seconds + excluded.video_seconds, "
             "credits = credits + excluded.credits")
_MOVE_USAGE = ("INSERT INTO usage (key_hash, day, requests, prompt_tokens, completion_tokens, "
               "images, video_seconds, credits) SELECT ?, day, requests, prompt_tokens, "
               "completion_tokens, images, video_seconds, credits FROM usage WHERE key_hash = ? "
               "ON CONFLICT (key_hash, day) DO UPDATE SET "
               "requests = requests + excluded.requests, "
               "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
               "completion_tokens = completion_tokens + excluded.completion_tokens, "
               "images = images + excluded.images, "
               "video_seconds = video_seconds + excluded.video_seconds, "
               "credits = credits + excluded.credits")


async def _migrate_to_1(db: aiosqlite.Connection) -> None:
    """Version 0 → 1: databases made before ``last_used`` existed get the column; every
    table, index and trigger is created if missing (a new database starts here)."""
    cols = [r[1] for r in await db.execute_fetchall("PRAGMA table_info(keys)")]
    if cols and "last_used" not in cols:
        await db.execute("ALTER TABLE keys ADD COLUMN last_used INTEGER")
    for statement in _SCHEMA_V1:
        await db.execute(statement)


VIDEO_JOBS = [
    """CREATE TABLE IF NOT EXISTS video_jobs (
        seq           INTEGER PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        owner         TEXT NOT NULL,
        model         TEXT NOT NULL,
        prompt        TEXT NOT NULL,
        seconds       INTEGER NOT NULL,
        size          TEXT NOT NULL,
        resolution    TEXT NOT NULL,
        aspect_ratio  TEXT NOT NULL,
        status        TEXT NOT NULL,
        progress      INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,
        completed_at  INTEGER,
        expires_at    INTEGER,
        provider      TEXT,
        operation     TEXT,
        served        TEXT,
        media         TEXT,
        error_code    TEXT,
        error_message TEXT)""",
    "CREATE INDEX IF NOT EXISTS video_jobs_owner ON video_jobs(owner, seq)",
    ("CREATE INDEX IF NOT EXISTS video_jobs_unfinished ON video_jobs(status) "
     "WHERE status IN ('queued', 'in_progress')"),
]


VIDEO_LEASE = ["ALTER TABLE video_jobs ADD COLUMN lease_owner TEXT",
               "ALTER TABLE video_jobs ADD COLUMN lease_until REAL"]

FINGERPRINT_TABLE = """CREATE TABLE IF NOT EXISTS key_secret (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        fingerprint TEXT NOT NULL,
        created     INTEGER NOT NULL)"""


MARK_JOURNAL = ("INSERT INTO usage_journals (journal, segment) VALUES (?, ?) "
                "ON CONFLICT (journal) DO UPDATE SET segment = max(segment, excluded.segment)")


async def migrate_past_2(db: aiosqlite.Connection) -> None:
    """Version 2 → 3 → 4 → 5 → 6 (the caller holds the transaction): the ``video_jobs`` table,
    its lease columns, ``usage_journals``, then ``key_secret``.  Nothing to do below 2 or at
    6."""
    if await user_version(db) == 2:
        for statement in VIDEO_JOBS:
            await db.execute(statement)
        await db.execute("PRAGMA user_version = 3")
    if await user_version(db) == 3:
        for statement in VIDEO_LEASE:
            await db.execute(statement)
        await db.execute("PRAGMA user_version = 4")
    if await user_version(db) == 4:
        await db.execute(USAGE_JOURNALS)
        await db.execute("PRAGMA user_version = 5")
    if await user_version(db) == 5:
        await db.execute(FINGERPRINT_TABLE)
        await db.execute("PRAGMA user_version = 6")


_MIGRATIONS = {1: _migrate_to_1}


async def value(db: aiosqlite.Connection, sql: str) -> Any:
    """The first column of the first row of a query.  Read to the end in one call on the
    connection's thread: a cursor left open (its caller cancelled between execute and
    fetch, as a shutdown cancels the key-change poll) would hold its read snapshot, and the
    connection's next write, once another connection has written, fails at once with
    "database is locked"."""
    for row in await db.execute_fetchall(sql):
        return row[0]
    return None


async def user_version(db: aiosqlite.Connection) -> int:
    """The database's schema version."""
    return int(await value(db, "PRAGMA user_version"))


async def migrate(db: aiosqlite.Connection) -> None:
    """Bring the database to the last version that needs no key secret (1; 6 from 2), in one
    transaction that holds the write lock (another process opening it at the same moment
    waits, then finds the work done).  A version newer than this code knows is refused."""
    version = await user_version(db)
    if version > SCHEMA_VERSION:
        raise StorageError(f"the database has schema version {version}, made by a newer "
                           f"apiarium (this one knows up to {SCHEMA_VERSION}); upgrade it")
    last = max(_MIGRATIONS)
    if version == last or version >= SCHEMA_VERSION:
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        for target in range(await user_version(db) + 1, last + 1):
            await _MIGRATIONS[target](db)
            await db.execute(f"PRAGMA user_version = {target}")
        await migrate_past_2(db)                 # keys rehashed: on to 6, which needs no secret
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


def private_files(path: Path) -> None:
    """Create the database's folder (0700) and file (0600) if missing, before SQLite does:
    the -wal and -shm files it makes take the database file's mode.  Existing files that
    group or others may read are tightened to the owner (by path: closing a descriptor of a
    database file would drop the locks this process's other connections hold on it)."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):      # another process made it just now
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            mode = name.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(name, mode & 0o700)


async def rewrite_keys(db: aiosqlite.Connection,
                       rewrite: Callable[[KeyRecord], KeyRecord]) -> int:
    """Migration 1 → 2 (the caller holds the transaction): store ``rewrite(record)``'s
    ``key_hash`` and ``key_prefix`` for every key, and file the usage rows of each changed
    hash under the new one.  The number of keys changed."""
    rows = [KeyRecord(*row) for row in await db.execute_fetchall(SELECT_KEYS)]
    new = [rewrite(rec) for rec in rows]
    moved = [(n.key_hash, old.key_hash) for old, n in zip(rows, new, strict=True)
             if n.key_hash != old.key_hash]
    # through a unique placeholder first, so no new hash ever meets an old one
    await db.execute("UPDATE keys SET key_hash = 'upgrading:' || id")
    await db.executemany("UPDATE keys SET key_hash = ?, key_prefix = ? WHERE id = ?",
                         [(n.key_hash, n.key_prefix, n.id) for n in new])
    await db.executemany(_MOVE_USAGE, moved)
    await db.executemany("DELETE FROM usage WHERE key_hash = ?", [(old,) for _, old in moved])
    return sum(1 for old, n in zip(rows, new, strict=True) if n != old)
