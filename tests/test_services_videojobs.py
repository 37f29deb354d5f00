"""services/videojobs.py without HTTP: a job is charged once when its render ends, whether
anyone polls or not, and also when it was deleted mid-render (the provider bills it); the
resumer at start-up fails jobs stopped before they had an upstream operation (not charged)
and leaves young ones; a provider that cannot resume fails its job clearly; the SDK view
(``expired``); the input-reference checks of handlers/videos.py (``image_type``).  The
provider is a toy kind (named in models.yaml by its import path) whose renders wait on an
event.  Leases, on SQLite and the real PostgreSQL, with the Veo fake: of two gateways on one
database resuming a job one polls it; a dead one's job is taken over once its lease expires;
a stalled one that lost its lease stops polling; booked once."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai.types import Video

from apiarium.catalog import ModelSpec
from apiarium.errors import ApiError, NotFound
from apiarium.generation import Media, VideoRequest, job_request
from apiarium.handlers.videos import image_type
from apiarium.live import Services
from apiarium.providers.base import Provider
from apiarium.services.videojobs import QUEUED_STALE_S, view
from apiarium.storage import VideoJob, open_storage
from tests.fakes import FakeGemini, make_mp4, make_png
from tests.inprocess import InProcess, write_config

MP4 = make_mp4()


class ReelProvider(Provider):
    """Renders a video once ``go`` is set; no upstream operation (it cannot resume)."""

    kind = "reel"
    go: asyncio.Event | None = None

    async def video(self, model: ModelSpec, req: VideoRequest) -> Media:
        if ReelProvider.go is not None:
            await ReelProvider.go.wait()
        return Media(MP4, "video/mp4", req.prompt)


def models() -> dict:
    return {"providers": {"reel": {"kind": f"{__name__}:ReelProvider",
                                   "base_url": "http://reel.invalid", "api_key": "k"}},
            "models": {"reel-1": {"provider": "reel", "type": "video", "upstream": "veo-3.1-x",
                                  "credits": {"video_second": 2.0}}}}


def run(tmp_path: Path, scenario) -> None:
    async def main() -> None:
        ReelProvider.go = asyncio.Event()
        try:
            async with InProcess(write_config(tmp_path, models())) as env:
                await scenario(env.services)
        finally:
            ReelProvider.go = None
    asyncio.run(main())


def request(seconds: str = "8") -> VideoRequest:
    return job_request({"prompt": "a bee", "seconds": seconds}, "veo-3.1-x")


def media_files(svc: Services) -> list[str]:
    folder = svc.live.media.folder
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_job_nobody_polls_is_completed_and_charged_once(tmp_path):
    async def scenario(svc: Services) -> None:
        model = svc.catalog.resolve("reel-1")
        job = await svc.jobs.submit(model, request("6"), "key-a")
        assert job.status == "queued" and job.size == "1280x720"
        assert svc.credits.held("key-a") == 12.0                 # 6 s at 2 credits held
        ReelProvider.go.set()
        done = await svc.jobs.wait(job.id)
        assert done.served.alias == "reel-1" and media_files(svc) == [done.media]
        stored = await svc.jobs.get(job.id, "key-a")
        assert (stored.status, stored.progress, stored.media) == ("completed", 100, done.media)
        spent = svc.usage.spent_today("key-a")
        assert (spent.video_seconds, spent.credits, svc.credits.held("key-a")) == (6, 12.0, 0)
        assert await svc.jobs.resume() == 0                      # nothing left to resume
        assert svc.usage.spent_today("key-a").video_seconds == 6
    run(tmp_path, scenario)


def test_a_job_deleted_mid_render_is_still_charged_and_leaves_no_file(tmp_path):
    async def scenario(svc: Services) -> None:
        job = await svc.jobs.submit(svc.catalog.resolve("reel-1"), request(), "key-b")
        with pytest.raises(NotFound):
            await svc.jobs.delete(job.id, "key-other")           # not theirs
        await svc.jobs.delete(job.id, "key-b")
        ReelProvider.go.set()
        await svc.jobs.wait(job.id)
        assert svc.usage.spent_today("key-b").video_seconds == 8
        assert media_files(svc) == []
        with pytest.raises(NotFound) as raised:
            await svc.jobs.get(job.id, "key-b")
        assert raised.value.code == "video_not_found"
    run(tmp_path, scenario)


def test_a_job_another_process_booked_first_is_not_charged_again(tmp_path):
    """Two processes that resumed one job (PostgreSQL workers): the second to finish books
    nothing and keeps no copy of the file."""
    async def scenario(svc: Services) -> None:
        job = await svc.jobs.submit(svc.catalog.resolve("reel-1"), request(), "key-d")
        repo = await svc.jobs.repo()
        assert await repo.finish(job.id, status="completed", when=1, media="x" * 32 + ".mp4",
                                 expires_at=2)                  # the other process
        ReelProvider.go.set()
        done = await svc.jobs.wait(job.id)
        assert done.media == "x" * 32 + ".mp4" and media_files(svc) == []
        assert svc.usage.spent_today("key-d").video_seconds == 0
    run(tmp_path, scenario)


def test_resume_fails_interrupted_jobs_and_leaves_young_ones(tmp_path):
    async def scenario(svc: Services) -> None:
        repo = await svc.jobs.repo()
        now = svc.jobs.clock()

        def stored(n: int, age: float, status: str = "queued", **kw: Any) -> VideoJob:
            return VideoJob(f"video_{n}", "key-c", "reel-1", "p", 8, "1280x720", "720p",
                            "16:9", status, 0, int(now - age), **kw)
        await repo.create(stored(1, QUEUED_STALE_S + 5))                  # stopped mid-submit
        await repo.create(stored(2, 1))                                  # another's submit?
        await repo.create(stored(3, 60, provider="reel", operation="ops/3", served="reel-1",
                                 status="in_progress"))
        assert await svc.jobs.resume() == 1                               # job 3 only
        with pytest.raises(ApiError) as raised:
            await svc.jobs.wait("video_3")
        assert raised.value.code == "video_not_resumable"
        jobs = {j.id: j for j in [await repo.get(f"video_{n}") for n in (1, 2, 3)] if j}
        assert jobs["video_1"].status == "failed"
        assert jobs["video_1"].error_code == "video_interrupted"
        assert "nothing was charged" in (jobs["video_1"].error_message or "")
        assert jobs["video_2"].status == "queued"
        assert jobs["video_3"].status == "failed"
        assert svc.usage.spent_today("key-c").video_seconds == 0
        shown = view(jobs["video_1"])
        assert shown["error"]["code"] == "video_interrupted" and shown["status"] == "failed"
    run(tmp_path, scenario)


def test_the_view_is_the_sdks_video_type_for_every_status():
    """Every job, expired ones too, is a ``Video`` the SDK validates: a status it knows (an
    expired job stays ``completed``; its ``expires_at`` says when the content went)."""
    for status in ("queued", "in_progress", "completed", "failed"):
        job = VideoJob("video_x", "o", "m", "p", 4, "720x1280", "720p", "9:16", status, 100,
                       10, completed_at=20, expires_at=100)
        shown = Video.model_validate(view(job))
        assert shown.status == status and shown.seconds == "4" and shown.expires_at == 100
        assert (shown.error is not None) == (status == "failed")


@pytest.mark.parametrize(("data", "mime"), [
    (make_png(), "image/png"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg"),
    (b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8, "image/webp"),
    (b"GIF89a" + b"\0" * 8, None),
    (b"<svg/>", None),
    (b"", None),
])
def test_image_type_by_magic_bytes(data, mime):
    assert image_type(data) == mime


# ------------------------------------------------------------------ leases: one poller

def veo_models(fake: FakeGemini, gateway: str) -> dict:
    """The Veo fake as provider ``google``; every request of this gateway carries
    ``X-Gateway: <gateway>`` (the fake records headers: it tells who polled)."""
    return {"providers": {"google": {"kind": "gemini", "base_url": fake.base_url,
                                     "api_key": fake.api_key, "poll_interval_s": 0.02,
                                     "timeout_s": 30, "headers": {"X-Gateway": gateway}}},
            "models": {"veo-3": {"provider": "google", "type": "video",
                                 "upstream": "veo-3.0-generate-001"}}}


def pollers(fake: FakeGemini, op: str, since: int = 0) -> list[str]:
    """Who polled the operation ``op``, request by request, from request number ``since``."""
    return [r.headers.get("x-gateway", "?") for r in fake.requests[since:]
            if r.method == "GET" and r.path.endswith(f"/operations/{op}")]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (on the loop, a tick at a time) until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def hold_next_poll(fake: FakeGemini, op: str) -> None:
    """The next poll of ``op`` is recorded, then held unanswered: the one gateway polling it
    waits on it, with no request on the way.  Stopped then, it leaves no poll behind (one it
    had sent when its task was cancelled could be recorded late, among the next poller's)."""
    fake.hang_next(30, path_contains=f"/operations/{op}")
    await until(lambda: not fake.scripted())


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_database(request, tmp_path) -> dict:
    """The settings of gateways sharing one database (PostgreSQL: and one key secret)."""
    if request.param == "sqlite":
        return {"database": str(tmp_path / "shared.sqlite3")}
    return {"database": request.getfixturevalue("postgres_url"),
            "secret_file": str(tmp_path / "shared" / "apiarium.secret")}


def test_two_gateways_on_one_database_poll_a_job_once_and_take_over_a_dead_ones(
        tmp_path, fake_gemini, shared_database):
    """A job left unfinished (its gateway stopped) is resumed by two gateways at once: one
    claims it and only that one polls Veo; killed without a word (its lease stays), the
    other cannot take it until the lease expires (its clock moved past it), then takes it
    over and completes it; it is booked once, in the shared database."""
    fake_gemini.veo_polls_until_done = 10 ** 6               # Veo holds it unfinished

    async def main() -> None:
        configs = {name: write_config(tmp_path / name, veo_models(fake_gemini, name),
                                      **shared_database) for name in ("s", "a", "b")}
        async with InProcess(configs["s"]) as s:           # the submitter, stopped after
            model = s.services.catalog.resolve("veo-3")
            job = await s.services.jobs.submit(model, job_request(
                {"prompt": "a bee", "seconds": "8"}, model.upstream), "key-l")
            repo = await s.services.jobs.repo()
            while (stored := await repo.get(job.id)).operation is None:
                await asyncio.sleep(0.01)
            op = stored.operation.rsplit("/", 1)[-1]
            await hold_next_poll(fake_gemini, op)
        mark = len(fake_gemini.requests)
        async with InProcess(configs["a"]) as a, InProcess(configs["b"]) as b:
            gateways = {"a": a.services, "b": b.services}
            resumed = await asyncio.gather(*(g.jobs.resume() for g in gateways.values()))
            assert sorted(resumed) == [0, 1]
            winner, other = ("a", "b") if resumed[0] else ("b", "a")
            await until(lambda: len(pollers(fake_gemini, op, mark)) >= 5)
            assert await gateways[other].jobs.resume() == 0            # a live lease
            assert set(pollers(fake_gemini, op, mark)) == {winner}     # one poller only
            assert not gateways[other].jobs.tasks

            await hold_next_poll(fake_gemini, op)
            task = gateways[winner].jobs.tasks[job.id]                 # kill -9, as it were:
            task.cancel()                                              # no release
            await asyncio.gather(task, return_exceptions=True)
            assert await gateways[other].jobs.resume() == 0            # not expired yet
            later = gateways[other].jobs
            later.clock = lambda: time.time() + later.lease_s + 1      # the lease expired
            mark = len(fake_gemini.requests)
            fake_gemini.veo_polls_until_done = 0                       # Veo is done now
            assert await later.resume() == 1
            done = await later.wait(job.id)
            assert set(pollers(fake_gemini, op, mark)) == {other}
            assert done.served.alias == "veo-3"
            finished = await (await later.repo()).get(job.id)
            assert (finished.status, finished.media) == ("completed", done.media)
            assert not await (await later.repo()).claim(job.id, "someone", 2e9, 2e9 + 60)
            assert await gateways[winner].jobs.resume() == 0
        st = await open_storage(shared_database["database"])
        try:
            booked = [r for r in await st.usage.day(time.strftime("%Y-%m-%d", time.gmtime()))
                      if r.video_seconds]
        finally:
            await st.close()
        assert [(r.key_hash, r.video_seconds) for r in booked] == [("key-l", 8)]   # once
    asyncio.run(main())


def test_a_stalled_gateway_that_lost_its_lease_stops_polling_and_a_submit_is_leased(
        tmp_path, fake_gemini, shared_database):
    """The submitting gateway holds its job's lease from the row's creation: another one,
    even far in its future, leaves the job alone while the lease lasts.  When the lease is
    taken over anyway (the holder stalled past it), the holder sees it at its next renewal
    and stops polling (its waiter hears ``video_moved``); the new holder alone books it."""
    fake_gemini.veo_polls_until_done = 10 ** 6

    async def main() -> None:
        configs = {name: write_config(tmp_path / name, veo_models(fake_gemini, name),
                                      **shared_database) for name in ("a", "b")}
        async with InProcess(configs["a"]) as a, InProcess(configs["b"]) as b:
            first, later = a.services.jobs, b.services.jobs
            first.lease_s = 1.0                                  # renewed every 1/3 s
            model = a.services.catalog.resolve("veo-3")
            job = await first.submit(model, job_request({"prompt": "a bee", "seconds": "4"},
                                                        model.upstream), "key-s")
            repo = await later.repo()
            assert not await repo.claim(job.id, "intruder", time.time(), time.time() + 9)
            later.clock = lambda: time.time() + 0.2                  # inside the lease
            while (stored := await repo.get(job.id)).operation is None:
                await asyncio.sleep(0.01)
            op = stored.operation.rsplit("/", 1)[-1]
            await until(lambda: len(pollers(fake_gemini, op)) >= 5)   # renewed meanwhile
            assert await later.resume() == 0 and not later.tasks
            assert set(pollers(fake_gemini, op)) == {"a"}
            polling = first.tasks[job.id]
            later.clock = lambda: time.time() + 5                     # a's lease: expired
            assert await later.resume() == 1
            with pytest.raises(ApiError) as moved:
                await polling                                        # a stops at renewal
            assert (moved.value.code, moved.value.status) == ("video_moved", 503)
            mark = len(fake_gemini.requests)
            fake_gemini.veo_polls_until_done = 0
            done = await later.wait(job.id)
            assert set(pollers(fake_gemini, op, mark)) == {"b"}
            assert (await repo.get(job.id)).status == "completed" and done.media
            assert a.services.usage.spent_today("key-s").video_seconds == 0
            assert b.services.usage.spent_today("key-s").video_seconds == 4
            assert a.services.credits.held("key-s") == 0                 # its hold let go
    asyncio.run(main())
