"""The PostgreSQL engine's own matters, against the real server scripts/test-services starts
(each test on a database of its own; skipped, saying why, without it): the versioned
migration (idempotent, safe when processes open a new database at once, a newer one
refused); the atomic statements under concurrency, from many connections and from many OS
processes (issue 17: 200 first visits from 50 IPs at once, one key per IP, the same from every
process and after a restart of everything); errors that name the database but never its
password; and PostgreSQL stopping mid-run.  What every engine does is tests/test_storage.py."""
from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.services.keys import KeyService
from apiarium.storage import NewKey, StorageError, StorageUnavailable, UsageRow, open_storage
from apiarium.storage.postgres import PostgresStorage
from apiarium.storage.postgres_schema import _MIGRATIONS as MIGRATIONS
from apiarium.storage.postgres_schema import SCHEMA_VERSION, migrate
from apiarium.usage import Tally, UsageLedger

REPO = Path(__file__).resolve().parents[1]


def run(coro):
    return asyncio.run(coro)


async def query(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:"
                                 f"{parts.port}").geturl()


# --------------------------------------------------------------------------- the schema

def test_migration_is_versioned_idempotent_and_safe_for_processes_opening_at_once(
        postgres_url):
    async def go():
        stores = await asyncio.gather(*(open_storage(postgres_url) for _ in range(4)))
        try:
            found = sorted(st.found_version for st in stores)
            versions = {await st.schema_version() for st in stores}
            rec = await stores[0].keys.insert_key(NewKey("h", "api-ab", "192.0.2.1", 0, 1))
        finally:
            for st in stores:
                await st.close()
        again = await open_storage(postgres_url)                # a restart: nothing to do
        try:
            assert again.found_version == SCHEMA_VERSION
            assert await again.keys.active() == [rec]
        finally:
            await again.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            assert await migrate(conn) == SCHEMA_VERSION == await migrate(conn)
        finally:
            await conn.close()
        rows = await query(postgres_url, "SELECT version FROM schema_version")
        tables = await query(postgres_url, "SELECT tablename FROM pg_tables "
                                           "WHERE schemaname = 'public' ORDER BY 1")
        index = await query(postgres_url, "SELECT indexdef FROM pg_indexes "
                                          "WHERE indexname = 'keys_one_active_per_ip'")
        return found, versions, rows, tables, index
    found, versions, rows, tables, index = run(go())
    assert found == [0, 5, 5, 5] and versions == {SCHEMA_VERSION}      # one made it
    assert [r["version"] for r in rows] == [SCHEMA_VERSION]
    assert [t["tablename"] for t in tables] == ["blocks", "key_changes", "key_secret", "keys",
                                                "schema_version", "usage", "usage_journals",
                                                "video_jobs"]
    assert "UNIQUE" in index[0]["indexdef"] and "WHERE (status = 'active'" in index[0]["indexdef"]


def test_a_version_2_database_gets_the_lease_columns_keeping_its_jobs(postgres_url):
    """Version 3: ``video_jobs.lease_owner`` and ``lease_until`` added to a version-2
    database (its jobs kept, unleased, so any process may claim them)."""
    async def go():
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("CREATE TABLE schema_version (id integer PRIMARY KEY CHECK "
                               "(id = 1), version integer NOT NULL)")
            for target in (1, 2):
                await conn.execute(MIGRATIONS[target])
            await conn.execute("INSERT INTO schema_version VALUES (1, 2)")
            await conn.execute(
                "INSERT INTO video_jobs (id, owner, model, prompt, seconds, size, resolution, "
                "aspect_ratio, status, created_at, operation) VALUES ('video_old', 'o', 'veo', "
                "'p', 8, '1280x720', '720p', '16:9', 'in_progress', 1, 'ops/1')")
        finally:
            await conn.close()
        st = await open_storage(postgres_url)
        try:
            assert (st.found_version, await st.schema_version()) == (2, SCHEMA_VERSION) == (2, 5)
            assert [j.id for j in await st.videos.claimable("me", 5.0)] == ["video_old"]
            assert await st.videos.claim("video_old", "me", 5.0, 65.0)
        finally:
            await st.close()
        return await query(postgres_url, "SELECT lease_owner, lease_until FROM video_jobs")
    assert [tuple(r) for r in run(go())] == [("me", 65.0)]


def test_a_newer_schema_is_refused(postgres_url):
    run(run_and_close(postgres_url))
    run(query(postgres_url, "UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1))
    with pytest.raises(StorageError, match="newer apiarium"):
        run(open_storage(postgres_url))


async def run_and_close(url: str) -> None:
    await (await open_storage(url)).close()


def test_both_url_schemes_open_postgresql(postgres_url):
    async def go():
        st = await open_storage("postgres://" + postgres_url.split("://", 1)[1])
        await st.close()
        return st
    assert isinstance(run(go()), PostgresStorage)


def test_errors_name_the_database_and_never_its_password(postgres_url):
    wrong = with_password(postgres_url, "wrong-s3cret")
    with pytest.raises(StorageError) as exc:
        run(open_storage(wrong))
    assert not isinstance(exc.value, StorageUnavailable)           # a mistake, not an outage
    message = str(exc.value)
    assert "password authentication failed" in message and "wrong-s3cret" not in message
    assert message.startswith(f"postgresql://apiarium@{urlsplit(wrong).netloc.split('@')[1]}/")
    missing = urlsplit(postgres_url)._replace(path="/no_such_db").geturl()
    with pytest.raises(StorageError, match='"no_such_db" does not exist') as exc:
        run(open_storage(missing))
    assert urlsplit(postgres_url).password not in str(exc.value)


# --------------------------------------------------------------------------- concurrency

def test_one_key_per_ip_from_many_connections_at_once(postgres_url):
    """Five storages (five pools) insert keys for the same 20 IPs at once, some with a stale
    generation (another hash): each IP ends with one key, and every caller gets that one."""
    ips = [f"192.0.2.{i}" for i in range(20)]

    async def go():
        stores = [await open_storage(postgres_url) for _ in range(5)]
        try:
            attempts = [(st, NewKey(f"{ip}|{g}", "api-ab", ip, g, 1)) for ip in ips
                        for st in stores for g in (0, 0, 1)]
            random.Random(7).shuffle(attempts)
            got = await asyncio.gather(*(st.keys.insert_key(new) for st, new in attempts))
            rows = await stores[0].keys.find()
            # each storage saw every key it did not insert itself as another's change
            changed = [await st.changed_elsewhere() for st in stores]
        finally:
            for st in stores:
                await st.close()
        return attempts, got, rows, changed
    attempts, got, rows, changed = run(go())
    assert len(rows) == len(ips) and {r.ip for r in rows} == set(ips)
    by_ip = {r.ip: r for r in rows}
    for (_, new), rec in zip(attempts, got, strict=True):
        assert rec == by_ip[new.ip]
    assert any(changed)


def test_touch_keeps_the_latest_time_whoever_writes_last(postgres_url):
    async def go():
        a, b = await open_storage(postgres_url), await open_storage(postgres_url)
        try:
            rec = await a.keys.insert_key(NewKey("h", "api-ab", "192.0.2.1", 0, 1))
            await a.keys.touch({rec.id: 200})
            await b.keys.touch({rec.id: 100})                  # an older time, written later
            await b.keys.touch({})
            assert not await a.changed_elsewhere()             # last-used times are not news
            return (await a.keys.active())[0].last_used
        finally:
            await a.close()
            await b.close()
    assert run(go()) == 200


CHILD = r"""
import asyncio, json, os, sys, time
from apiarium.services.keys import KeyService

async def main():
    keys = await KeyService(os.environ["DB_URL"], os.environ["SECRET"]).open()
    addresses = json.loads(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()                    # every process starts at the same moment
    start = time.perf_counter()
    got = await asyncio.gather(*(keys.key_for_ip(a) for a in addresses))
    elapsed = time.perf_counter() - start
    await keys.close()
    print(json.dumps({"keys": {rec.ip: key for key, rec in got}, "s": elapsed}), flush=True)

asyncio.run(main())
"""


def visits_at_once(url: str, secret: Path, processes: int, ips: int) -> list[dict]:
    """``processes`` OS processes, each with its own KeyService on the database, ask at the
    same moment for the key of every one of ``ips`` clients (IPv4 addresses, and IPv6
    clients that each process sees at another address of the client's /64), in its own
    order.  What each process got: ``{"keys": {identity: key}, "s": seconds}``."""
    env = {**os.environ, "DB_URL": url, "SECRET": str(secret),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for p in range(processes):
        addresses = [f"198.51.100.{i}" if i % 4 else f"2001:db8:{i}::{p + 1}"
                     for i in range(ips)]
        random.Random(p).shuffle(addresses)
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(addresses)],
                                      cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        for proc in procs:
            line = proc.stdout.readline()
            assert line == "ready\n", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            results.append(json.loads(line))
        for proc in procs:
            assert proc.wait(60) == 0, proc.stderr.read()
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_first_visits_from_many_processes_at_once_give_one_key_per_ip(
        postgres_url, postgres_ctl, tmp_path):
    """Issue 17's acceptance: 200 concurrent first visits from 50 IPs across processes:
    exactly one key per IP, each IP's key the same from every process, and the same after a
    restart of everything (the processes and PostgreSQL)."""
    secret = tmp_path / "shared" / "apiarium.secret"       # the one secret file they share
    first = visits_at_once(postgres_url, secret, processes=4, ips=50)
    keys = first[0]["keys"]
    assert len(keys) == 50 and all(r["keys"] == keys for r in first)

    def table():
        return run(query(postgres_url, "SELECT ip, id, status FROM keys ORDER BY ip"))
    rows = table()
    assert len(rows) == 50 and {r["status"] for r in rows} == {"active"}
    assert {r["ip"] for r in rows} == set(keys)           # IPv6 clients: their /64
    postgres_ctl("stop")                                   # a restart of everything
    postgres_ctl("start")
    again = visits_at_once(postgres_url, secret, processes=4, ips=50)
    assert all(r["keys"] == keys for r in again)
    assert table() == rows                                 # not one key more
    slowest = max(r["s"] for r in first)
    print(f"\n4 processes x 50 IPs at once: {slowest:.2f} s for the slowest process's 50 "
          f"first visits; after the restart {max(r['s'] for r in again):.2f} s")


# --------------------------------------------------------------------------- outages

MODEL = ModelSpec(alias="m", provider=ProviderSpec(name="p", kind="openai", base_url="",
                                                   api_key=""), upstream="m")


def test_postgresql_stopping_mid_run(postgres_url, postgres_ctl, tmp_path):
    """Issuance fails at once with StorageUnavailable (the handlers' 503
    storage_unavailable); keys already issued keep verifying from memory; refresh, last-used
    times and usage wait in memory; all of it goes through once PostgreSQL is back."""
    password = urlsplit(postgres_url).password

    async def go():
        keys = await KeyService(postgres_url, tmp_path / "apiarium.secret").open()
        ledger = await UsageLedger(postgres_url).open()
        try:
            key, rec = await keys.key_for_ip("192.0.2.1")
            postgres_ctl("stop")
            try:
                assert keys.verify(key) == rec                       # from memory
                assert await keys.key_for_ip("192.0.2.1") == (key, rec)
                ledger.record(rec.key_hash, MODEL, Tally(requests=1))
                started = time.monotonic()
                with pytest.raises(StorageUnavailable) as exc:
                    await keys.key_for_ip("192.0.2.2")
                assert time.monotonic() - started < 10               # no hanging
                err = exc.value
                assert (err.status, err.code) == (503, "storage_unavailable")
                assert "cannot be reached" in str(err) and password not in str(err)
                assert password not in err.message and "try again" in err.message
                with pytest.raises(StorageUnavailable):
                    await keys.refresh()
                with pytest.raises(StorageUnavailable):
                    await keys.flush()
                with pytest.raises(StorageUnavailable):
                    await ledger.flush()
                assert keys.verify(key) == rec
            finally:
                postgres_ctl("start")
            new, new_rec = await keys.key_for_ip("192.0.2.2")      # the pool reconnects
            assert new != key and keys.verify(new) == new_rec
            assert await keys.flush() == 2       # kept for the retry: key's use, and new's
            assert await ledger.flush() == 1
            assert not await keys.refresh()
            other = await UsageLedger(postgres_url).open()         # as a restart reads it
            assert other.spent_today(rec.key_hash).requests == 1
            await other.close()
            (stored,) = await keys.find(key)
            assert stored.last_used is not None
        finally:
            await ledger.close()
            await keys.close()
    run(go())


def test_key_service_on_postgresql_sees_another_process_and_survives_restarts(
        postgres_url, tmp_path):
    secret = tmp_path / "apiarium.secret"

    async def go():
        server = await KeyService(postgres_url, secret).open()
        cli = await KeyService(postgres_url, secret).open()
        try:
            key, rec = await server.key_for_ip("2001:db8:1:2::7")
            assert rec.ip == "2001:db8:1:2::/64"
            assert await cli.refresh() and (await cli.find(key))[0].id == rec.id
            await cli.revoke(rec)
            assert server.verify(key) is not None and await server.refresh()
            assert server.verify(key) is None
            await cli.block("198.51.100.0/24", "abuse")
            assert await server.refresh() and server.is_blocked("198.51.100.9")
            new, _ = await server.key_for_ip("2001:db8:1:2::8")
            assert new != key
        finally:
            await server.close()
            await cli.close()
        again = await KeyService(postgres_url, secret).open()
        try:
            assert (await again.key_for_ip("2001:db8:1:2::9"))[0] == new
            assert again.is_blocked("198.51.100.1")
            assert [r.status for r in await again.find("2001:db8:1:2::1")] == \
                ["revoked", "active"]
        finally:
            await again.close()
    run(go())


def test_usage_from_two_processes_adds_up(postgres_url):
    async def go():
        a, b = await open_storage(postgres_url), await open_storage(postgres_url)
        try:
            rows = [UsageRow(f"h{i}", "2030-01-01", requests=1, credits=0.25) for i in range(50)]
            await asyncio.gather(*(st.usage.add(list(reversed(rows)) if n % 2 else rows)
                                   for n, st in enumerate([a, b] * 10)))
            return await a.usage.day("2030-01-01")
        finally:
            await a.close()
            await b.close()
    got = run(go())
    assert len(got) == 50 and {(r.requests, r.credits) for r in got} == {(20, 5.0)}
