"""``VideoJobRepository`` on each engine (storage/sqlite_jobs.py, storage/postgres_jobs.py):
SQLite on a temporary file, PostgreSQL on a database of its own (skipped, saying why,
without scripts/test-services).  Owner-scoped reads, cursor paging, the one-way move out of
queued/in_progress that books a job once (also from two connections at once), delete,
unfinished; the lease one process at a time holds (claim, renew, release, claimable); prune."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from apiarium.storage import VideoJob, open_storage
from apiarium.storage.postgres_jobs import PostgresVideoJobs
from apiarium.storage.sqlite_jobs import SqliteVideoJobs


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite3"
    return request.getfixturevalue("postgres_url")


async def opened(database):
    st = await open_storage(database)
    await st.upgrade_keys(lambda rec: rec)         # SQLite: on to version 3 (as KeyService)
    assert isinstance(st.videos, SqliteVideoJobs | PostgresVideoJobs)
    return st


def job(n: int, owner: str = "alice", **kw) -> VideoJob:
    return VideoJob(id=f"video_{n:04d}", owner=owner, model="veo-3", prompt=f"take {n}",
                    seconds=8, size="1280x720", resolution="720p", aspect_ratio="16:9",
                    status="queued", progress=0, created_at=1_800_000_000 + n, **kw)


def test_create_get_page_and_owner_scope(database):
    async def go():
        st = await opened(database)
        try:
            repo = st.videos
            for n in range(1, 6):
                await repo.create(job(n))
            await repo.create(job(9, owner="bob"))
            assert await repo.get("video_0001", "alice") == job(1)
            assert await repo.get("video_0001", "bob") is None          # not bob's
            assert await repo.get("video_0009") == job(9, owner="bob")
            ids = [j.id for j in await repo.page("alice", None, 2)]
            assert ids == ["video_0005", "video_0004"]
            ids = [j.id for j in await repo.page("alice", "video_0004", 10)]
            assert ids == ["video_0003", "video_0002", "video_0001"]
            ids = [j.id for j in await repo.page("alice", "video_0002", 10, newest_first=False)]
            assert ids == ["video_0003", "video_0004", "video_0005"]
            assert await repo.page("alice", "video_0009", 10) == []     # bob's id: no cursor
            assert [j.id for j in await repo.page("bob", None, 10)] == ["video_0009"]
        finally:
            await st.close()
    asyncio.run(go())


def test_started_finish_once_delete_and_unfinished(database):
    async def go():
        st = await opened(database)
        other = await opened(database)                 # another process, as it were
        try:
            repo = st.videos
            for n in (1, 2, 3):
                await repo.create(job(n))
            assert await repo.started("video_0001", "google", "models/v/operations/1",
                                      "veo-3", 10)
            got = await repo.get("video_0001")
            assert (got.status, got.operation, got.provider, got.served, got.progress) == \
                ("in_progress", "models/v/operations/1", "google", "veo-3", 10)
            finishes = await asyncio.gather(*(
                r.finish("video_0001", status="completed", when=5, media="m.mp4", expires_at=9)
                for r in (repo, other.videos, repo)))
            assert sorted(finishes) == [False, False, True]              # booked once
            assert not await repo.started("video_0001", "google", "x", "veo-3", 10)
            done = await repo.get("video_0001")
            assert done == dataclasses.replace(got, status="completed", progress=100,
                                               completed_at=5, media="m.mp4", expires_at=9)
            assert await repo.finish("video_0002", status="failed", when=6,
                                     error_code="upstream_error", error_message="no")
            assert [j.id for j in await repo.unfinished()] == ["video_0003"]
            assert await repo.delete("video_0001", "bob") is None
            assert await repo.delete("video_0001", "alice") == done
            assert await repo.get("video_0001") is None
            assert not await repo.finish("video_0001", status="completed", when=7)
        finally:
            await st.close()
            await other.close()
    asyncio.run(go())


def test_a_lease_is_won_by_one_renewed_by_its_owner_and_taken_once_expired(database):
    """``claim`` from three connections at once: one wins; the lease keeps the others out
    until it expires (``now`` past ``until``), its owner may claim and renew it again;
    ``release`` and ``finish`` free it; a finished job is nobody's to claim."""
    async def go():
        stores = [await opened(database) for _ in range(3)]     # three processes, as it were
        try:
            a, b, c = (st.videos for st in stores)
            await a.create(job(1), "A", 100.0)                  # the submitter's, from the start
            await a.create(job(2))                              # unleased (an older version's)
            assert [j.id for j in await b.claimable("B", 50.0)] == ["video_0002"]
            assert [j.id for j in await a.claimable("A", 50.0)] == ["video_0001", "video_0002"]
            assert not await b.claim("video_0001", "B", 50.0, 110.0)        # A holds it
            won = await asyncio.gather(*(r.claim("video_0002", o, 50.0, 110.0)
                                         for r, o in ((a, "A"), (b, "B"), (c, "C"))))
            assert sorted(won) == [False, False, True]
            holder = "ABC"[won.index(True)]
            assert await a.claim("video_0001", "A", 60.0, 120.0)           # its owner again
            assert await a.renew("video_0001", "A", 130.0)
            assert not await b.renew("video_0001", "B", 130.0)             # not B's
            assert not await b.claim("video_0001", "B", 129.0, 190.0)
            assert await b.claim("video_0001", "B", 131.0, 190.0)          # expired: B's now
            assert not await a.renew("video_0001", "A", 200.0)             # A sees it lost
            assert not await a.release("video_0001", "A")
            assert await b.release("video_0001", "B")
            assert await c.claim("video_0001", "C", 132.0, 190.0)          # free at once
            assert await c.finish("video_0001", status="failed", when=133, error_code="x")
            assert not await c.renew("video_0001", "C", 200.0)
            assert not await a.claim("video_0001", "A", 999.0, 1000.0)     # finished
            assert [j.id for j in await a.claimable("A", 999.0)] == ["video_0002"]
            assert [j.id for j in await a.claimable(holder, 60.0)] == ["video_0002"]
            for other in {"A", "B", "C"} - {holder}:
                assert await a.claimable(other, 60.0) == []             # the holder's lease
        finally:
            for st in stores:
                await st.close()
    asyncio.run(go())


def test_prune_deletes_the_jobs_failed_or_expired_before_the_cut_off(database):
    """Failed before the cut-off (by ``completed_at``) and completed with content expired
    before it (by ``expires_at``) go, with their media names; unfinished jobs, and those
    failed or expiring later, stay."""
    async def go():
        st = await opened(database)
        try:
            repo = st.videos
            for n in range(1, 7):
                await repo.create(job(n))
            await repo.finish("video_0001", status="failed", when=100, error_code="x")
            await repo.finish("video_0002", status="failed", when=300, error_code="x")
            await repo.finish("video_0003", status="completed", when=50, media="a.mp4",
                              expires_at=150)
            await repo.finish("video_0004", status="completed", when=100, media="b.mp4",
                              expires_at=250)
            await repo.started("video_0005", "google", "op", "veo-3", 10)
            gone = await repo.prune(200)
            assert sorted(gone, key=str) == sorted([None, "a.mp4"], key=str)
            left = [j.id for j in await repo.page("alice", None, 10, newest_first=False)]
            assert left == ["video_0002", "video_0004", "video_0005", "video_0006"]
            assert await repo.prune(200) == []
            assert sorted(await repo.prune(400), key=str) == sorted([None, "b.mp4"], key=str)
            assert [j.id for j in await repo.unfinished()] == ["video_0005", "video_0006"]
        finally:
            await st.close()
    asyncio.run(go())
