"""The SQLite engine's own matters, against a temporary file: the migration of databases made
by older versions (their schema is built inline here, as the old code left it), damaged and
newer files, the factory.  What every engine does (keys, blocks, usage, change detection
between connections) is tests/test_storage.py, run against SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import pytest

from apiarium.storage import StorageError, UsageRow, open_storage
from apiarium.storage.sqlite import SCHEMA_VERSION, SqliteStorage


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------- migrations

OLD_SCHEMA = """
CREATE TABLE keys (
    id          INTEGER PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    ip          TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    rpm         INTEGER,
    status      TEXT NOT NULL DEFAULT 'active',
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX keys_one_active_per_ip ON keys(ip) WHERE status = 'active';
CREATE INDEX keys_ip ON keys(ip);
CREATE TABLE blocks (cidr TEXT PRIMARY KEY, created INTEGER NOT NULL,
                     note TEXT NOT NULL DEFAULT '');
CREATE TABLE usage (
    key_hash TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0, video_seconds INTEGER NOT NULL DEFAULT 0,
    credits REAL NOT NULL DEFAULT 0, PRIMARY KEY (key_hash, day));
INSERT INTO keys (key_hash, key_prefix, ip, generation, created, rpm, status)
    VALUES ('aa', 'api-abcd', '192.0.2.1', 0, 100, NULL, 'revoked'),
           ('bb', 'api-efgh', '192.0.2.1', 1, 200, 9, 'active');
INSERT INTO blocks VALUES ('198.51.100.0/24', 50, 'old');
INSERT INTO usage VALUES ('bb', '2030-01-01', 3, 1, 2, 0, 0, 1.5);
"""


def old_database(path):
    """A database as the code before schema versions left it: no ``last_used`` column (the
    first releases), no ``key_changes`` counter or triggers, ``user_version`` 0."""
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    con.close()


def test_old_database_is_migrated_on_open(tmp_path):
    db = tmp_path / "old.sqlite3"
    old_database(db)

    async def go():
        st = await open_storage(db)
        try:
            (rec,) = await st.keys.active()
            assert (rec.key_hash, rec.key_prefix, rec.generation, rec.rpm, rec.last_used) == \
                ("bb", "api-efgh", 1, 9, None)
            assert len(await st.keys.find(ip="192.0.2.1")) == 2
            assert [tuple(b) for b in await st.blocks.all()] == [("198.51.100.0/24", 50, "old")]
            assert (await st.usage.day("2030-01-01"))[0].credits == 1.5
            await st.keys.touch({rec.id: 7})                   # the new column works
            assert (await st.keys.active())[0].last_used == 7
            other = await open_storage(db)                     # triggers now count changes
            await other.keys.revoke(rec.id, 300)
            await other.close()
            assert await st.changed_elsewhere()
        finally:
            await st.close()
    run(go())
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1    # 2 needs the secret
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_upgrade_keys_rewrites_hashes_and_prefixes_and_moves_usage(tmp_path):
    db = tmp_path / "old.sqlite3"
    old_database(db)

    def rewrite(rec):
        return replace(rec, key_hash=rec.key_hash * 2, key_prefix=rec.key_prefix[:6])

    async def go():
        st = await open_storage(db)
        watcher = await open_storage(db)
        try:
            # usage already filed under a new hash for that day is added to, not replaced
            await st.usage.add([UsageRow("bbbb", "2030-01-01", requests=1, credits=0.5)])
            assert await st.upgrade_keys(rewrite) == 2
            assert await st.upgrade_keys(rewrite) == 0            # once per database
            assert await watcher.upgrade_keys(rewrite) == 0
            assert not await st.changed_elsewhere()
            assert await watcher.changed_elsewhere()              # caches must reload
            rows = await st.keys.find()
            assert [(r.key_hash, r.key_prefix) for r in rows] == [("aaaa", "api-ab"),
                                                                  ("bbbb", "api-ef")]
            (usage,) = await st.usage.day("2030-01-01")
            assert (usage.key_hash, usage.requests, usage.credits) == ("bbbb", 4, 2.0)
        finally:
            await st.close()
            await watcher.close()
    run(go())
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6  # jobs too
    con.close()


def test_database_of_the_last_unversioned_release_opens(tmp_path):
    """``last_used`` and the triggers already there, ``user_version`` still 0."""
    db = tmp_path / "v0.sqlite3"
    old_database(db)
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE keys ADD COLUMN last_used INTEGER")
    con.execute("UPDATE keys SET last_used = 123 WHERE status = 'active'")
    con.commit()
    con.close()

    async def go():
        st = await open_storage(db)
        (rec,) = await st.keys.active()
        await st.close()
        return rec
    assert run(go()).last_used == 123


def test_two_processes_opening_an_old_database_at_once(tmp_path):
    db = tmp_path / "old.sqlite3"
    old_database(db)

    async def go():
        stores = await asyncio.gather(*(open_storage(db) for _ in range(4)))
        counts = [len(await s.keys.active()) for s in stores]
        for s in stores:
            await s.close()
        return counts
    assert run(go()) == [1, 1, 1, 1]


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.sqlite3"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StorageError, match="newer apiarium"):
        run(open_storage(db))


def test_not_a_database(tmp_path):
    db = tmp_path / "junk.sqlite3"
    db.write_bytes(b"this is not a database, just text long enough to look at" * 20)
    with pytest.raises(StorageError, match=r"junk\.sqlite3"):
        run(open_storage(db))


# --------------------------------------------------------------------------- cancelled reads

def test_a_read_cancelled_mid_call_leaves_the_connection_free_to_write(tmp_path):
    """The gateway's stop, on its own connections: the key-change poll is cancelled while its
    read is on the connection's thread, the usage ledger writes on its connection, then the
    key service writes the last-used times on the first.  A cursor the cancel left open held
    a read snapshot, and that write failed at once with "database is locked"."""
    async def go():
        keys = await open_storage(tmp_path / "db.sqlite3")
        usage = await open_storage(tmp_path / "db.sqlite3")
        try:
            poll = asyncio.ensure_future(keys.changed_elsewhere())
            await asyncio.sleep(0)                  # its first read is on the thread's queue
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            assert poll.cancelled()
            await usage.usage.add([UsageRow("h1", "2030-01-02", 1, 2, 3, 0, 0, 0.5)])
            await keys.keys.touch({1: 1_900_000_000})      # raised OperationalError before
            return await keys.usage.day("2030-01-02")
        finally:
            await usage.close()
            await keys.close()
    assert run(go()) == [UsageRow("h1", "2030-01-02", 1, 2, 3, 0, 0, 0.5)]


# --------------------------------------------------------------------------- the factory

def test_engine_is_picked_from_the_setting(tmp_path):
    async def go(setting):
        st = await open_storage(setting)
        try:
            assert isinstance(st, SqliteStorage)
            return st.path
        finally:
            await st.close()
    assert run(go(tmp_path / "a.sqlite3")) == tmp_path / "a.sqlite3"
    assert run(go(str(tmp_path / "b.sqlite3"))) == tmp_path / "b.sqlite3"
    assert run(go(f"sqlite:{tmp_path}/c.sqlite3")) == tmp_path / "c.sqlite3"
    assert run(go(f"sqlite://{tmp_path}/d.sqlite3")) == tmp_path / "d.sqlite3"
    assert (tmp_path / "d.sqlite3").exists()
