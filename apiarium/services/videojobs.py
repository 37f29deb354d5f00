"""Video jobs: ``POST /v1/videos`` in the OpenAI SDK's shape, and the one way every video is
made (the blocking ``/v1/videos/generations`` and video models in chat submit a job and
wait on it).

Life of a job (a row of ``storage.VideoJobRepository``, so it outlives the process):

* ``submit``: checked, the credits held (429 when the key's daily credits cannot cover it),
  stored ``queued``, and its render started as a task of its own (a client that leaves
  does not stop it);
* the render runs on the model or its fallbacks (``first_success``); as soon as the upstream
  names its operation the job is ``in_progress`` with that operation stored;
* it ends ``completed`` (the file in the media store, ``expires_at`` = now +
  ``media.ttl_hours``) or ``failed`` (``error``: the code and message a blocking client gets
  as its error).  Only the move out of queued/in_progress books usage, and only one writer
  makes it, so a job is charged exactly once, whoever polls (nobody needs to);
* one process at a time renders or polls a job: the one holding its lease (``owner``, this
  service's ``host:pid:random``, in the job's row until ``lease_until``).  The submitting
  process takes it with the row; whoever renders or polls renews it every ``lease_s / 3``
  and lets it go when the job ends or the gateway stops.  A process that sees its lease
  taken (it stalled past ``lease_s``) stops polling: the new holder books the job;
* ``resume`` (at start, on SIGHUP, and every few seconds from the gateway's housekeeping):
  every unfinished job whose lease is free or expired (its process stopped or was killed)
  is claimed, then polled again if it has an upstream operation (never rendered twice); so
  of N workers or gateways on one database one polls each job, and a dead one's jobs are
  taken over within about ``lease_s``.  A job the gateway stopped before the upstream named
  an operation has nothing to poll: it is failed as ``video_interrupted`` once
  ``QUEUED_STALE_S`` old and unleased, and is not charged;
* a completed job's content is gone once ``expires_at`` has passed (404 ``video_expired``);
* ``prune`` (the gateway's housekeeping, every minute): a job is deleted ``media.ttl_hours``
  after it failed, or after its content expired, so what a key can list stays bounded.

A job belongs to the key that made it: every read is by id *and* owner, so another key's job
is the same 404 as an id that never existed.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog import ModelSpec
from ..errors import ApiError, InvalidRequest, NotFound
from ..generation import Media, VideoRequest
from ..storage import Storage, VideoJob, VideoJobRepository, open_storage
from ..usage import MASTER, Tally, UsageLedger, price
from .costs import Books
from .fallback import Breakers, first_success

if TYPE_CHECKING:
    from ..live import Live

log = logging.getLogger("apiarium")
POLL_AFTER_MS = 2000          # the openai-poll-after-ms header on unfinished jobs
QUEUED_STALE_S = 120          # a job queued this long without an operation was interrupted
LEASE_S = 60.0                # a job's lease: how long a process that stopped renewing holds it
UNFINISHED = ("queued", "in_progress")
LIST_MAX = 100


@dataclass(frozen=True)
class Rendered:
    """A finished render: the media file's name, the model that served, its prompt."""
    media: str
    served: ModelSpec
    revised_prompt: str


def not_found(job_id: str) -> NotFound:
    return NotFound(f"No video job `{job_id[:60]}` for this API key: the id is wrong, the job "
                    f"was deleted, or another key created it. GET /v1/videos lists yours.",
                    code="video_not_found", param="video_id")


def view(job: VideoJob) -> dict[str, Any]:
    """The job as the SDK's ``Video`` object.  Past ``expires_at`` a completed job stays
    ``completed`` (the SDK knows no other status; OpenAI's own jobs do the same) and its content
    is gone: ``content`` answers 404 ``video_expired``."""
    status = job.status
    error = ({"code": job.error_code or "video_failed", "message": job.error_message or ""}
             if job.status == "failed" else None)
    return {"id": job.id, "object": "video", "model": job.model, "status": status,
            "progress": job.progress, "created_at": job.created_at,
            "completed_at": job.completed_at, "expires_at": job.expires_at,
            "prompt": job.prompt, "seconds": str(job.seconds), "size": job.size,
            "remixed_from_video_id": None, "error": error}


class VideoJobService:
    def __init__(self, live: Callable[[], Live], breakers: Breakers, usage: UsageLedger,
                 book: Books, clock: Callable[[], float] = time.time):
        self._live = live
        self.breakers = breakers
        self.usage = usage
        self.credits = book
        self.clock = clock
        self.tasks: dict[str, asyncio.Task[Rendered]] = {}    # renders under way here
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_s = LEASE_S
        self._storage: Storage | None = None
        self._opening = asyncio.Lock()

    # ------------------------------------------------------------------ storage
    async def repo(self) -> VideoJobRepository:
        """The jobs' repository (the database is opened on first use)."""
        if self._storage is None:
            async with self._opening:
                if self._storage is None:
                    self._storage = await open_storage(self._live().config.settings.database)
        return self._storage.videos

    async def close(self) -> None:
        """Stop the renders under way here and let their leases go (another process, or
        this gateway's next start, resumes them at once), and close."""
        leased = dict(self.tasks)
        for task in leased.values():
            task.cancel()
        await asyncio.gather(*leased.values(), return_exceptions=True)
        if self._storage is not None:
            storage, self._storage = self._storage, None
            for job_id in leased:
                try:
                    await storage.videos.release(job_id, self.owner)
                except ApiError as exc:      # the database is down: the lease expires
                    log.warning("video job %s: cannot release its lease: %s", job_id, exc)
            await storage.close()

    # ------------------------------------------------------------------ submitting
    async def reference(self, model: ModelSpec, url: str) -> str:
        """An ``input_reference`` image URL fetched now, as a data: URL (a private address,
        a non-image or an oversize file is a 400 naming ``input_reference`` here, not a
        failed job later)."""
        fetcher = self._live().providers[model.provider.name].fetcher
        try:
            if url.startswith("data:"):
                fetcher.check_data_url(url)
                return url
            image = await fetcher.fetch(url)
        except InvalidRequest as err:
            raise InvalidRequest(err.message.replace("`image_url`", "`input_reference`"),
                                 param="input_reference", code=err.code) from None
        return f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"

    async def submit(self, model: ModelSpec, req: VideoRequest, key_hash: str | None,
                     size: str | None = None) -> VideoJob:
        """Store a new job and start its render; the job as stored (``queued``)."""
        live = self._live()
        if not model.fallbacks:           # a misconfigured provider: a plain 503 now
            live.providers[model.provider.name].require_configured()
        hold = await self.credits.take(
            key_hash, price(model, Tally(requests=1, video_seconds=req.duration_seconds),
                            req.resolution), live.config.settings.daily_credits,
            live.config.settings.max_concurrent_requests)
        job = VideoJob(id="video_" + secrets.token_urlsafe(24), owner=key_hash or MASTER,
                       model=model.alias, prompt=req.prompt, seconds=req.duration_seconds,
                       size=size or _size_of(req), resolution=req.resolution,
                       aspect_ratio=req.aspect_ratio, status="queued", progress=0,
                       created_at=int(self.clock()))
        try:
            await (await self.repo()).create(job, self.owner, self.clock() + self.lease_s)
        except BaseException:
            hold.release()
            raise
        self._track(job.id, self._render(job, model, req, key_hash, hold.release))
        return job

    def _track(self, job_id: str, work: Coroutine[Any, Any, Rendered]) -> asyncio.Task[Rendered]:
        task: asyncio.Task[Rendered] = asyncio.ensure_future(self._leased(job_id, work))
        self.tasks[job_id] = task

        def done(t: asyncio.Task[Rendered]) -> None:
            self.tasks.pop(job_id, None)
            if not t.cancelled() and t.exception() is not None:
                log.info("video job %s failed: %s", job_id, t.exception())
        task.add_done_callback(done)
        return task

    async def _leased(self, job_id: str, work: Coroutine[Any, Any, Rendered]) -> Rendered:
        """Run a job's render or poll while renewing its lease; stop it if another process
        took the job over (that one polls it and books it)."""
        inner = asyncio.ensure_future(work)
        keeper = asyncio.ensure_future(self._keep(job_id, inner))
        try:
            return await inner
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if (me is None or not me.cancelling()) and keeper.done() and \
                    not keeper.cancelled() and keeper.result():
                raise ApiError(f"Another gateway process took over video `{job_id}` (this "
                               f"one stalled past its lease); it goes on there: GET "
                               f"/v1/videos/{job_id} shows it.", code="video_moved",
                               status=503) from None
            raise
        finally:
            keeper.cancel()

    async def _keep(self, job_id: str, inner: asyncio.Future[Rendered]) -> bool:
        """Renew the lease of a job while ``inner`` works on it; True if the lease was
        lost to another process (``inner`` is then cancelled)."""
        repo = await self.repo()
        while not inner.done():
            await asyncio.sleep(self.lease_s / 3)
            try:
                if await repo.renew(job_id, self.owner, self.clock() + self.lease_s):
                    continue
                job = await repo.get(job_id)
            except ApiError as exc:          # the database is down: try again next time
                log.warning("video job %s: cannot renew its lease: %s", job_id, exc)
                continue
            if job is None or job.status not in UNFINISHED or inner.done():
                return False     # finished, or deleted (its render goes on: it is charged)
            log.warning("video job %s: another process took it over; stopping here", job_id)
            inner.cancel()
            return True
        return False

    async def wait(self, job_id: str) -> Rendered:
        """Wait for a job rendering here (the blocking endpoints): its result or its error.
        Cancelling the wait leaves the render running.  Called right after ``submit``, with
        no await between (the task leaves ``tasks`` when it ends)."""
        return await asyncio.shield(self.tasks[job_id])

    async def _render(self, job: VideoJob, model: ModelSpec, req: VideoRequest,
                      key_hash: str | None, release: Callable[[], None]) -> Rendered:
        live = self._live()
        repo = await self.repo()

        def on(m: ModelSpec) -> Any:
            async def started(operation: str) -> None:
                served = next((c for c in live.config.catalog.chain(model)
                               if c.provider.name == m.provider.name
                               and c.upstream == m.upstream), model)
                await repo.started(job.id, m.provider.name, operation, served.alias, 10)
            return live.providers[m.provider.name].video_job(m, req, started)

        async def run() -> Rendered:
            media, served = await first_success(live.config.catalog, self.breakers, model, on,
                                                key_hash)
            return await self._complete(job, served, media, req)
        try:
            return await self._failing(job.id, run())
        finally:
            release()

    async def _failing(self, job_id: str, work: Awaitable[Rendered]) -> Rendered:
        """``work``'s result; a failure is recorded on the job (an unexpected one logged)."""
        try:
            return await work
        except ApiError as err:
            await self._fail(job_id, err)
            raise
        except Exception:
            log.exception("video job %s: unexpected error", job_id)
            await self._fail(job_id, ApiError("The gateway hit an internal error while "
                                              "rendering this video; create it again."))
            raise

    async def _complete(self, job: VideoJob, served: ModelSpec, media: Media,
                        req: VideoRequest) -> Rendered:
        live, repo = self._live(), await self.repo()
        name = await live.media.save(media.data, media.mime)
        now = int(self.clock())
        booked = await repo.finish(job.id, status="completed", when=now, media=name,
                                   expires_at=now + int(live.media.ttl_s))
        if not booked:
            finished = await repo.get(job.id)
            await live.media.remove(name)      # deleted meanwhile, or another process's copy
            if finished is not None:           # another process resumed it and booked it
                return Rendered(finished.media or name, served, media.revised_prompt)
            booked = True                      # deleted while rendering: the render still cost
        if booked:
            owner = None if job.owner == MASTER else job.owner
            self.usage.record(owner, served, Tally(requests=1, video_seconds=req.duration_seconds),
                              req.resolution)
        return Rendered(name, served, media.revised_prompt)

    async def _fail(self, job_id: str, err: ApiError) -> None:
        try:
            await (await self.repo()).finish(job_id, status="failed", when=int(self.clock()),
                                             error_code=err.code or "video_failed",
                                             error_message=err.message)
        except ApiError as exc:             # the database is down: the job resumes later
            log.warning("video job %s: cannot record its failure: %s", job_id, exc)

    # ------------------------------------------------------------------ after a restart
    async def resume(self) -> int:
        """Claim every unfinished job whose lease is free or expired (or this process's,
        with no render here), and poll it again if it has an upstream operation; fail those
        interrupted before they had one.  How many were resumed."""
        repo = await self.repo()
        live = self._live()
        resumed = 0
        now = self.clock()
        for job in await repo.claimable(self.owner, now):
            if job.id in self.tasks:
                continue
            if job.operation is None and now - job.created_at < QUEUED_STALE_S:
                continue                    # perhaps a submit of an older version under way
            if not await repo.claim(job.id, self.owner, now, now + self.lease_s):
                continue                    # another process claimed it first
            provider = live.providers.get(job.provider or "")
            if job.operation is None or provider is None:
                await self._fail(job.id, ApiError(
                    "The gateway restarted before this video's render started upstream "
                    "(or its provider is no longer configured); nothing was charged. Create "
                    "the video again.", code="video_interrupted"))
                continue
            req = VideoRequest(job.prompt, job.seconds, job.resolution, job.aspect_ratio)
            served = live.config.catalog.models.get(job.served or "") or \
                live.config.catalog.models.get(job.model)
            self._track(job.id, self._resumed(job, provider.resume_video(job.operation, req),
                                              served, req))
            resumed += 1
        if resumed:
            log.info("video jobs: %d unfinished renders resumed", resumed)
        return resumed

    async def _resumed(self, job: VideoJob, render: Any, served: ModelSpec | None,
                       req: VideoRequest) -> Rendered:
        async def run() -> Rendered:
            media = await render
            if served is None:
                raise ApiError("The video's model is no longer configured on this gateway.",
                               code="video_interrupted")
            return await self._complete(job, served, media, req)
        return await self._failing(job.id, run())

    # ------------------------------------------------------------------ reading
    async def get(self, job_id: str, key_hash: str | None) -> VideoJob:
        job = await (await self.repo()).get(job_id, key_hash or MASTER)
        if job is None:
            raise not_found(job_id)
        return job

    async def page(self, key_hash: str | None, after: str | None, limit: int,
                   order: str) -> tuple[list[VideoJob], bool]:
        """A page of the key's jobs, and whether more follow."""
        jobs = await (await self.repo()).page(key_hash or MASTER, after, limit + 1,
                                              newest_first=order == "desc")
        return jobs[:limit], len(jobs) > limit

    async def delete(self, job_id: str, key_hash: str | None) -> None:
        """Delete the key's job and its file (a render under way goes on, and is charged:
        the provider bills it)."""
        job = await (await self.repo()).delete(job_id, key_hash or MASTER)
        if job is None:
            raise not_found(job_id)
        if job.media:
            await self._live().media.remove(job.media)

    async def prune(self) -> int:
        """Delete the jobs that failed, or whose content expired, ``media.ttl_hours`` ago (and
        any file they still have): how many went."""
        media = self._live().media
        gone = await (await self.repo()).prune(int(self.clock() - media.ttl_s))
        for name in gone:
            if name:
                await media.remove(name)
        if gone:
            log.info("video jobs: %d failed or expired jobs removed", len(gone))
        return len(gone)

    async def content(self, job_id: str, key_hash: str | None) -> str:
        """The media file name of the key's completed job (404 until then, and once
        expired)."""
        job = await self.get(job_id, key_hash)
        media = self._live().media
        if job.status != "completed" or job.media is None:
            raise NotFound(f"Video `{job_id[:60]}` has no content: it is {job.status}. Wait "
                           f"for status `completed` (GET /v1/videos/{{id}}).",
                           code="video_not_ready", param="video_id")
        if (job.expires_at is not None and self.clock() >= job.expires_at) or \
                media.path_of(job.media) is None:
            raise NotFound(f"Video `{job_id[:60]}` has expired (videos are kept "
                           f"{media.ttl_s / 3600:g} hours). Create it again.",
                           code="video_expired", param="video_id")
        return job.media


def _size_of(req: VideoRequest) -> str:
    """The SDK-shaped size of a blocking request's aspect ratio and resolution (one of the
    SDK's ``VideoSize`` values)."""
    wide = req.aspect_ratio == "16:9"
    if req.resolution == "1080p":
        return "1792x1024" if wide else "1024x1792"
    return "1280x720" if wide else "720x1280"
