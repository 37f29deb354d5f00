"""The SQLite schema (apiarium/storage/sqlite_schema.py) on its own: ``migrate`` from an empty
file and from a database of the first releases up to version 1, in one transaction; the
version-2 key rewrite (``rewrite_keys``); and the owner-only file modes (``private_files``).
tests/test_storage_sqlite.py covers the same through ``open_storage``."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import aiosqlite
import pytest

from apiarium.storage import KeyRecord, StorageError, open_storage
from apiarium.storage import sqlite_schema as schema

FIRST_RELEASE = """
CREATE TABLE keys (
    id INTEGER PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, key_prefix TEXT NOT NULL,
    ip TEXT NOT NULL, generation INTEGER NOT NULL, created INTEGER NOT NULL, rpm INTEGER,
    status TEXT NOT NULL DEFAULT 'active', revoked_at INTEGER);
CREATE UNIQUE INDEX keys_one_active_per_ip ON keys(ip) WHERE status = 'active';
CREATE TABLE blocks (cidr TEXT PRIMARY KEY, created INTEGER NOT NULL,
                     note TEXT NOT NULL DEFAULT '');
CREATE TABLE usage (
    key_hash TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0, video_seconds INTEGER NOT NULL DEFAULT 0,
    credits REAL NOT NULL DEFAULT 0, PRIMARY KEY (key_hash, day));
INSERT INTO keys (key_hash, key_prefix, ip, generation, created, rpm, status) VALUES
    ('h-old', 'api-abcdef', '192.0.2.1', 0, 100, NULL, 'revoked'),
    ('h-cur', 'api-ghijkl', '192.0.2.1', 1, 200, 9, 'active'),
    ('h-b',   'api-mnopqr', '198.51.100.2', 0, 300, NULL, 'active');
INSERT INTO blocks VALUES ('203.0.113.0/24', 50, 'old note');
INSERT INTO usage VALUES ('h-cur', '2030-01-01', 3, 10, 20, 1, 0, 1.5),
                         ('h-cur', '2030-01-02', 1, 1, 1, 0, 8, 4.0),
                         ('h-b',   '2030-01-01', 2, 5, 5, 0, 0, 0.5);
"""
TABLES = {"keys", "blocks", "usage", "key_changes", "usage_journals"}
INDEXES = {"keys_one_active_per_ip", "keys_ip", "keys_created"}
TRIGGERS = {"keys_ins", "keys_upd", "keys_del", "blocks_ins", "blocks_upd", "blocks_del"}


def first_release(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript(FIRST_RELEASE)
    con.close()


def on(path: Path, work):
    """Run ``work(db)`` on an aiosqlite connection in autocommit mode, as the engine opens it."""
    async def go():
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            return await work(db)
        finally:
            await db.close()
    return asyncio.run(go())


def objects(path: Path) -> dict[str, set[str]]:
    con = sqlite3.connect(path)
    found: dict[str, set[str]] = {"table": set(), "index": set(), "trigger": set()}
    for kind, name in con.execute("SELECT type, name FROM sqlite_master "
                                  "WHERE name NOT LIKE 'sqlite_%'"):
        found.setdefault(kind, set()).add(name)
    con.close()
    return found


def scalar(path: Path, sql: str):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------- migrate

def test_a_new_database_gets_the_whole_schema_at_version_1(tmp_path):
    db = tmp_path / "new.sqlite3"
    on(db, schema.migrate)
    assert objects(db) == {"table": TABLES, "index": INDEXES, "trigger": TRIGGERS}
    assert scalar(db, "PRAGMA user_version") == 1
    assert scalar(db, "SELECT n FROM key_changes WHERE id = 1") == 0


def test_a_first_release_database_is_brought_to_version_1_keeping_its_rows(tmp_path):
    db = tmp_path / "old.sqlite3"
    first_release(db)
    assert scalar(db, "PRAGMA user_version") == 0
    on(db, schema.migrate)
    assert scalar(db, "PRAGMA user_version") == 1
    assert objects(db) == {"table": TABLES, "index": INDEXES, "trigger": TRIGGERS}
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(keys)")]
    assert cols[-1] == "last_used"                       # added, after the old columns
    assert con.execute("SELECT key_hash, rpm, status, last_used FROM keys ORDER BY id"
                       ).fetchall() == [("h-old", None, "revoked", None),
                                        ("h-cur", 9, "active", None),
                                        ("h-b", None, "active", None)]
    assert con.execute("SELECT * FROM blocks").fetchall() == [("203.0.113.0/24", 50, "old note")]
    assert con.execute("SELECT count(*), sum(credits) FROM usage").fetchone() == (3, 6.0)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the change counter now counts writes to keys and blocks, not last-used times
    con.execute("UPDATE keys SET last_used = 5")
    con.execute("INSERT INTO blocks (cidr, created) VALUES ('192.0.2.0/24', 1)")
    con.execute("UPDATE keys SET rpm = 3 WHERE key_hash = 'h-b'")
    con.execute("DELETE FROM blocks WHERE cidr = '192.0.2.0/24'")
    con.commit()
    assert con.execute("SELECT n FROM key_changes").fetchone()[0] == 3
    con.close()


def test_migrate_is_a_no_op_on_a_current_database(tmp_path):
    db = tmp_path / "db.sqlite3"
    on(db, schema.migrate)
    con = sqlite3.connect(db)
    con.execute("DROP INDEX keys_created")          # a v1 database is not looked at again
    con.commit()
    con.close()
    on(db, schema.migrate)
    assert "keys_created" not in objects(db)["index"]
    assert scalar(db, "PRAGMA user_version") == 1


def columns(path: Path, table: str) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    finally:
        con.close()


def test_a_version_2_database_gets_video_jobs_usage_journals_and_key_secret_and_goes_to_6(
        tmp_path):
    """Versions 3 (``video_jobs``), 4 (its leases), 5 (``usage_journals``) and 6
    (``key_secret``) need no key
    secret: ``migrate`` takes 2 to 5."""
    db = tmp_path / "db.sqlite3"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 2")
    con.close()
    on(db, schema.migrate)
    assert objects(db)["table"] == {"video_jobs", "usage_journals", "key_secret"}
    assert objects(db)["index"] == {"video_jobs_owner", "video_jobs_unfinished"}
    assert columns(db, "video_jobs")[-2:] == ["lease_owner", "lease_until"]
    assert columns(db, "usage_journals") == ["journal", "segment"]
    assert columns(db, "key_secret") == ["id", "fingerprint", "created"]
    assert scalar(db, "PRAGMA user_version") == 6 == schema.SCHEMA_VERSION


def test_a_version_3_database_gets_the_lease_columns_keeping_its_jobs(tmp_path):
    db = tmp_path / "db.sqlite3"
    con = sqlite3.connect(db)
    for statement in schema.VIDEO_JOBS:
        con.execute(statement)
    con.execute("INSERT INTO video_jobs (id, owner, model, prompt, seconds, size, resolution, "
                "aspect_ratio, status, created_at) VALUES ('video_old', 'o', 'veo', 'p', 8, "
                "'1280x720', '720p', '16:9', 'queued', 1)")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    on(db, schema.migrate)
    assert scalar(db, "PRAGMA user_version") == 6
    assert scalar(db, "SELECT id || ':' || coalesce(lease_owner, 'free') FROM video_jobs") == \
        "video_old:free"


def test_a_version_4_database_gets_usage_journals_and_key_secret_keeping_its_rows(tmp_path):
    db = tmp_path / "db.sqlite3"
    first_release(db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 4")
    con.commit()
    con.close()
    on(db, schema.migrate)
    assert scalar(db, "PRAGMA user_version") == 6
    assert columns(db, "usage_journals") == ["journal", "segment"]
    assert scalar(db, "SELECT sum(credits) FROM usage") == 6.0


def test_a_version_6_database_is_left_alone_and_a_newer_one_refused(tmp_path):
    db = tmp_path / "db.sqlite3"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 6")
    con.close()
    on(db, schema.migrate)
    assert objects(db)["table"] == set()                # nothing was created
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StorageError) as exc:
        on(db, schema.migrate)
    assert f"schema version {schema.SCHEMA_VERSION + 1}" in str(exc.value)
    assert "newer apiarium" in str(exc.value)


def test_a_failed_migration_changes_nothing(tmp_path):
    """One transaction: a step that fails leaves the database at version 0, as it was."""
    db = tmp_path / "old.sqlite3"
    first_release(db)
    con = sqlite3.connect(db)
    # an object named like one of version 1's, of another kind: its CREATE TABLE fails
    con.execute("CREATE VIEW key_changes AS SELECT 1 AS id, 0 AS n")
    con.commit()
    con.close()
    with pytest.raises(sqlite3.Error):
        on(db, schema.migrate)
    assert scalar(db, "PRAGMA user_version") == 0
    con = sqlite3.connect(db)
    assert "last_used" not in [r[1] for r in con.execute("PRAGMA table_info(keys)")]
    assert not {"keys_ip", "keys_created"} & objects(db)["index"]
    con.close()


def test_value_and_user_version(tmp_path):
    db = tmp_path / "db.sqlite3"

    async def work(conn):
        await conn.execute("PRAGMA user_version = 1")
        return (await schema.user_version(conn), await schema.value(conn, "SELECT 6 * 7"),
                await schema.value(conn, "SELECT 1 WHERE 0"))
    assert on(db, work) == (1, 42, None)


# ---------------------------------------------------------------------------- rewrite_keys

def test_rewrite_keys_stores_new_hashes_and_moves_usage(tmp_path):
    db = tmp_path / "old.sqlite3"
    first_release(db)

    def rewrite(rec: KeyRecord) -> KeyRecord:
        if rec.key_hash == "h-b":                       # unchanged: counted as nothing
            return rec
        return replace(rec, key_hash="new-" + rec.key_hash, key_prefix=rec.key_prefix[:6])

    async def work(conn):
        await schema.migrate(conn)
        await conn.execute("BEGIN IMMEDIATE")
        changed = await schema.rewrite_keys(conn, rewrite)
        await conn.execute("COMMIT")
        return changed
    assert on(db, work) == 2
    con = sqlite3.connect(db)
    assert con.execute("SELECT key_hash, key_prefix, ip, generation, status FROM keys "
                       "ORDER BY id").fetchall() == [
        ("new-h-old", "api-ab", "192.0.2.1", 0, "revoked"),
        ("new-h-cur", "api-gh", "192.0.2.1", 1, "active"),
        ("h-b", "api-mnopqr", "198.51.100.2", 0, "active")]
    assert sorted(con.execute("SELECT key_hash, day, requests, credits FROM usage")) == [
        ("h-b", "2030-01-01", 2, 0.5),
        ("new-h-cur", "2030-01-01", 3, 1.5), ("new-h-cur", "2030-01-02", 1, 4.0)]
    con.close()


def test_rewrite_keys_where_only_the_prefix_changes(tmp_path):
    db = tmp_path / "old.sqlite3"
    first_release(db)

    async def work(conn):
        await schema.migrate(conn)
        return await schema.rewrite_keys(
            conn, lambda rec: replace(rec, key_prefix=rec.key_prefix[:6]))
    assert on(db, work) == 3
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT key_prefix FROM keys ORDER BY id")] == [
        "api-ab", "api-gh", "api-mn"]
    assert con.execute("SELECT count(*) FROM usage").fetchone()[0] == 3   # nothing moved
    con.close()


# ---------------------------------------------------------------------------- file modes

def test_private_files_creates_an_owner_only_folder_and_file(tmp_path):
    old = os.umask(0)                                   # the modes do not come from the umask
    try:
        path = tmp_path / "state" / "apiarium.sqlite3"
        schema.private_files(path)
    finally:
        os.umask(old)
    assert path.is_file() and path.stat().st_size == 0
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600


def test_private_files_tightens_files_older_versions_left_open(tmp_path):
    path = tmp_path / "apiarium.sqlite3"
    for name, was in ((path, 0o644), (Path(f"{path}-wal"), 0o664), (Path(f"{path}-shm"), 0o755)):
        name.write_bytes(b"")
        name.chmod(was)
    schema.private_files(path)
    assert mode(path) == 0o600
    assert mode(Path(f"{path}-wal")) == 0o600
    assert mode(Path(f"{path}-shm")) == 0o700            # the owner's bits are kept as they were


def test_private_files_leaves_the_contents_and_a_private_file_alone(tmp_path):
    path = tmp_path / "apiarium.sqlite3"
    path.write_bytes(b"keep me")
    path.chmod(0o400)
    schema.private_files(path)
    assert path.read_bytes() == b"keep me" and mode(path) == 0o400
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    schema.private_files(folder / "db.sqlite3")         # an existing folder is not changed
    assert mode(folder) == 0o755 and mode(folder / "db.sqlite3") == 0o600


def test_the_wal_and_shm_files_of_an_open_database_are_owner_only(tmp_path):
    path = tmp_path / "data" / "apiarium.sqlite3"

    async def go():
        st = await open_storage(path)
        try:
            await st.blocks.add("203.0.113.0/24", 1)   # a write: the WAL file exists now
            return sorted(p.name for p in path.parent.iterdir()), \
                {p.name: mode(p) for p in path.parent.iterdir()}
        finally:
            await st.close()
    names, modes = asyncio.run(go())
    assert {"apiarium.sqlite3", "apiarium.sqlite3-wal", "apiarium.sqlite3-shm"} <= set(names)
    assert all(m & 0o077 == 0 for m in modes.values()), modes
    assert mode(path.parent) == 0o700
