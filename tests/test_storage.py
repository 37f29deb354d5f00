"""What every storage engine does behind the repository Protocols of apiarium/storage,
run against each engine: SQLite on a temporary file, PostgreSQL on a database of its own
(skipped, saying why, without scripts/test-services).  Keys, blocks, usage, change detection
between connections; and the engine-neutral helpers: ``describe``, ``database_url``,
``secret_beside``, ``StorageUnavailable``.  Each engine's own matters (migrations, files,
concurrency across processes) are in tests/test_storage_sqlite.py and
tests/test_storage_postgres.py."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apiarium.errors import ApiError
from apiarium.storage import (
    NewKey,
    StorageError,
    StorageUnavailable,
    UsageRow,
    database_url,
    describe,
    is_url,
    open_storage,
    secret_beside,
)


def run(coro):
    return asyncio.run(coro)


def new_key(ip: str, generation: int = 0, rpm: int | None = None) -> NewKey:
    h = f"{ip}|{generation}".encode().hex().ljust(64, "0")
    return NewKey(h, f"api-{generation:02d}", ip, generation, 1_700_000_000 + generation, rpm)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """The ``database`` setting of a new, empty database of each engine."""
    if request.param == "sqlite":
        return tmp_path / "k.sqlite3"
    return request.getfixturevalue("postgres_url")


def test_insert_lookup_and_revoke(database):
    async def go():
        st = await open_storage(database)
        try:
            keys = st.keys
            assert await keys.next_generation("192.0.2.1") == 0
            rec = await keys.insert_key(new_key("192.0.2.1", rpm=7))
            assert rec is not None and rec.id > 0 and rec.rpm == 7 and rec.status == "active"
            assert await keys.active() == [rec]
            assert await keys.find(key_hash=rec.key_hash) == [rec]
            assert await keys.find(key_prefix="api-00", status="active") == [rec]
            assert await keys.find(ip="192.0.2.1") == [rec]
            assert await keys.find(ip="192.0.2.2") == []
            # one active key per IP: the second insert gives back the first
            again = await keys.insert_key(new_key("192.0.2.1", generation=1))
            assert again == rec
            assert await keys.set_rpm(rec.id, None) and not await keys.set_rpm(9999, 3)
            assert await keys.revoke(rec.id, 1_800_000_000)
            assert not await keys.revoke(rec.id, 1_800_000_001)         # not active any more
            assert await keys.active() == []
            assert await keys.next_generation("192.0.2.1") == 1
            second = await keys.insert_key(new_key("192.0.2.1", generation=1))
            assert second is not None and second.generation == 1 and second.id != rec.id
            old, new = await keys.find(ip="192.0.2.1")                    # oldest first
            assert (old.id, old.status, old.rpm) == (rec.id, "revoked", None)
            assert new == second
            assert await keys.find(status="active") == [second]
            # the generation went to a key revoked since: nothing inserted, none active
            await keys.revoke(second.id, 1_800_000_002)
            assert await keys.insert_key(new_key("192.0.2.1", generation=1)) is None
        finally:
            await st.close()
            await st.close()                                             # idempotent
    run(go())


def test_issued_since_and_touch(database):
    async def go():
        st = await open_storage(database)
        try:
            a = await st.keys.insert_key(new_key("192.0.2.1", generation=0))
            b = await st.keys.insert_key(new_key("2001:db8::1", generation=5))
            assert a is not None and b is not None
            assert await st.keys.issued_since(0) == [("192.0.2.1", a.created),
                                                     ("2001:db8::1", b.created)]
            assert await st.keys.issued_since(0, ipv6_only=True) == [("2001:db8::1", b.created)]
            assert await st.keys.issued_since(b.created) == []
            await st.keys.touch({a.id: 1_900_000_000, b.id: 1_900_000_001})
            got = {r.id: r.last_used for r in await st.keys.active()}
            assert got == {a.id: 1_900_000_000, b.id: 1_900_000_001}
        finally:
            await st.close()
    run(go())


def test_blocks(database):
    async def go():
        st = await open_storage(database)
        try:
            assert await st.blocks.add("198.51.100.0/24", 20, "abuse")
            assert not await st.blocks.add("198.51.100.0/24", 30, "again")
            assert await st.blocks.add("203.0.113.7/32", 10)
            blocks = await st.blocks.all()
            assert [b.cidr for b in blocks] == ["203.0.113.7/32", "198.51.100.0/24"]
            cidr, created, note = blocks[1]                        # a plain tuple, too
            assert (cidr, created, note) == ("198.51.100.0/24", 20, "abuse")
            assert await st.blocks.remove("203.0.113.7/32")
            assert not await st.blocks.remove("203.0.113.7/32")
            assert [b.cidr for b in await st.blocks.all()] == ["198.51.100.0/24"]
        finally:
            await st.close()
    run(go())


def test_usage_rows_add_up(database):
    async def go():
        st = await open_storage(database)
        try:
            await st.usage.add([])
            await st.usage.add([UsageRow("h1", "2030-01-01", 1, 10, 20, 0, 0, 0.5),
                                UsageRow("h2", "2030-01-01", requests=2),
                                UsageRow("h1", "2030-01-02", video_seconds=8, credits=4.0)])
            await st.usage.add([UsageRow("h1", "2030-01-01", 1, 1, 2, 3, 4, 0.25)])
            rows = {r.key_hash: r for r in await st.usage.day("2030-01-01")}
            assert rows["h1"] == UsageRow("h1", "2030-01-01", 2, 11, 22, 3, 4, 0.75)
            assert rows["h2"].requests == 2 and set(rows) == {"h1", "h2"}
            assert await st.usage.day("2030-01-02") == [
                UsageRow("h1", "2030-01-02", video_seconds=8, credits=4.0)]
        finally:
            await st.close()
    run(go())


def test_one_keys_usage_over_a_range_of_days(database):
    """``days``: one key's rows from the first day to the last, both included, oldest first;
    other keys' rows and days outside the range are left out; no row for a day unused."""
    async def go():
        st = await open_storage(database)
        try:
            assert await st.usage.days("h1", "2030-01-01", "2030-01-31") == []
            await st.usage.add([UsageRow("h1", "2030-01-03", 2, 30, 40, 1, 0, 1.5),
                                UsageRow("h1", "2029-12-31", requests=9),
                                UsageRow("h2", "2030-01-02", requests=5),
                                UsageRow("h1", "2030-01-01", 1, 10, 20, 0, 8, 0.25),
                                UsageRow("h1", "2030-01-04", requests=7)])
            assert await st.usage.days("h1", "2030-01-01", "2030-01-03") == [
                UsageRow("h1", "2030-01-01", 1, 10, 20, 0, 8, 0.25),
                UsageRow("h1", "2030-01-03", 2, 30, 40, 1, 0, 1.5)]
            assert await st.usage.days("h2", "2030-01-02", "2030-01-02") == [
                UsageRow("h2", "2030-01-02", requests=5)]
            assert await st.usage.days("h3", "2029-01-01", "2031-01-01") == []
            assert await st.usage.days("h1", "2030-01-05", "2030-01-04") == []
        finally:
            await st.close()
    run(go())


def test_a_usage_journal_mark_is_written_with_its_rows(database):
    """``add`` with a journal name records its last segment in the same transaction (never
    going back); ``forget_journal`` drops it.  A mark may come without rows."""
    async def go():
        st = await open_storage(database)
        try:
            assert await st.usage.journal_segment("p1-a") == 0
            await st.usage.add([UsageRow("h1", "2030-01-01", requests=1, credits=0.5)],
                               "p1-a", 3)
            await st.usage.add([UsageRow("h1", "2030-01-01", requests=2)], "p1-a", 2)
            await st.usage.add([], "p2-b", 7)
            assert (await st.usage.journal_segment("p1-a"),
                    await st.usage.journal_segment("p2-b")) == (3, 7)
            assert await st.usage.day("2030-01-01") == [
                UsageRow("h1", "2030-01-01", requests=3, credits=0.5)]
            await st.usage.forget_journal("p1-a")
            assert await st.usage.journal_segment("p1-a") == 0
            assert await st.usage.journal_segment("p2-b") == 7
        finally:
            await st.close()
    run(go())


def test_changed_elsewhere_sees_only_other_connections_key_and_block_writes(database):
    async def go():
        a = await open_storage(database)
        b = await open_storage(database)
        try:
            assert not await a.changed_elsewhere() and not await b.changed_elsewhere()
            rec = await a.keys.insert_key(new_key("192.0.2.1"))
            assert not await a.changed_elsewhere()             # its own write
            assert await b.changed_elsewhere()
            assert not await b.changed_elsewhere()             # once per change
            await b.usage.add([UsageRow("h", "2030-01-01", requests=1)])
            await b.keys.touch({rec.id: 5})
            assert not await a.changed_elsewhere()             # usage and last-used: not news
            await b.blocks.add("198.51.100.0/24", 1)
            assert await a.changed_elsewhere()
            await b.keys.revoke(rec.id, 2)
            assert await a.changed_elsewhere()
        finally:
            await a.close()
            await b.close()
    run(go())


def test_a_batch_may_name_one_key_and_day_twice(database):
    async def go():
        st = await open_storage(database)
        try:
            await st.usage.add([UsageRow("h1", "2030-01-01", requests=1, credits=0.5),
                                UsageRow("h1", "2030-01-01", requests=2, images=1)])
            assert await st.usage.day("2030-01-01") == [
                UsageRow("h1", "2030-01-01", requests=3, images=1, credits=0.5)]
        finally:
            await st.close()
    run(go())


def test_schema_version_and_the_version_found(database):
    async def go():
        st = await open_storage(database)
        first = (st.found_version, await st.schema_version())
        await st.close()
        st = await open_storage(database)
        again = (st.found_version, await st.schema_version())
        await st.close()
        with pytest.raises(StorageError, match="closed"):
            await st.schema_version()
        return first, again
    (found, version), again = run(go())
    assert found == 0 and version >= 1 and again == (version, version)


# --------------------------------------------------------------------------- naming a database

URL = "postgresql://apiarium:s3cret@db.example:5433/apiarium?sslmode=require&password=s3cret"


def test_describe_never_shows_a_password():
    assert describe(URL) == "postgresql://apiarium@db.example:5433/apiarium"
    assert describe("postgres://db.example/x") == "postgres://db.example/x"
    assert describe("postgresql:///apiarium") == "postgresql:///apiarium"
    assert describe(Path("/var/lib/apiarium/k.sqlite3")) == "/var/lib/apiarium/k.sqlite3"
    assert describe("sqlite:///srv/k.sqlite3") == "/srv/k.sqlite3"


def test_a_url_is_told_from_a_path():
    assert is_url(URL) and is_url("POSTGRES://h/db") and is_url("postgresql:///db")
    assert not is_url("data/apiarium.sqlite3") and not is_url(Path("postgresql://h/db"))
    assert not is_url("sqlite:///srv/k.sqlite3") and not is_url("postgresql:/h/db")
    assert database_url(URL) == URL
    assert database_url("data/k.sqlite3") is None and database_url("sqlite:data/x") is None
    # a URL that went through path resolution (older configs) is still recognised
    assert database_url(Path("/etc/apiarium") / "postgresql://u@h:5432/db") == \
        "postgresql://u@h:5432/db"


def test_the_secret_lives_beside_a_sqlite_file_and_is_a_setting_for_postgresql(tmp_path):
    assert secret_beside(tmp_path / "k.sqlite3") == tmp_path / "k.sqlite3.secret"
    assert secret_beside(f"sqlite:{tmp_path}/k.db") == tmp_path / "k.db.secret"
    with pytest.raises(StorageError, match="secret_file") as exc:
        secret_beside(URL)
    assert "s3cret" not in str(exc.value)


def test_storage_unavailable_is_a_503_that_tells_the_client_little():
    exc = StorageUnavailable("postgresql://apiarium@10.0.0.5/apiarium: the database cannot "
                             "be reached (Connect call failed)")
    assert isinstance(exc, ApiError) and isinstance(exc, StorageError)
    assert (exc.status, exc.type, exc.code) == (503, "server_error", "storage_unavailable")
    assert "10.0.0.5" in str(exc)                                   # the operator's detail
    assert "10.0.0.5" not in exc.message and "Keys already issued keep working" in exc.message
    assert exc.envelope()["error"]["code"] == "storage_unavailable"


@pytest.mark.parametrize("setting", [
    "postgresql://apiarium:s3cret@127.0.0.1:1/apiarium",
    "postgres://apiarium@127.0.0.1:1/apiarium?password=s3cret",
])
def test_a_server_that_cannot_be_reached_is_storage_unavailable(tmp_path, setting):
    """No server listens on port 1: the engine is PostgreSQL's (the URL as written, or as an
    older config resolved it), the error says which database, never its password."""
    for value in (setting, tmp_path / setting):
        with pytest.raises(StorageUnavailable) as exc:
            run(open_storage(value))
        message = str(exc.value)
        assert "apiarium@127.0.0.1:1/apiarium" in message and "cannot be reached" in message
        assert "s3cret" not in message and "s3cret" not in repr(exc.value)
        assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []
