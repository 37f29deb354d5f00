"""MediaService: images and videos made on a model (or its fallbacks), hosted, and booked;
and the chat answer of an image or video model (the bare media URL, streamed or not).

A render, once asked for, runs to its end even if the client goes away (the provider bills
it): it is a task of its own that the request waits on, so a client that leaves finds its
video stored and charged (``/v1/keys/me`` shows it).  Shutdown waits for these renders
within its grace (``background``)."""
from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .. import sse
from ..catalog import ModelSpec
from ..errors import InvalidRequest
from ..generation import (
    ImageRequest,
    Media,
    VideoRequest,
    bounded_prompt,
    image_request,
    video_request,
)
from ..providers.shapes import Chunks, completion, flatten_prompt, usage, wants_usage
from ..usage import Tally, UsageLedger, price
from .costs import Books, check_images_n
from .fallback import Breakers, first_success
from .videojobs import VideoJobService

if TYPE_CHECKING:
    from ..live import Live

log = logging.getLogger("apiarium")
T = TypeVar("T")
KEEPALIVE_S = 10.0        # a rendering stream sends an SSE comment at least this often
EARLY_ERROR_S = 2.0       # failures this early are plain HTTP errors, not SSE error events


class MediaService:
    def __init__(self, live: Callable[[], Live], breakers: Breakers, usage: UsageLedger,
                 book: Books, jobs: VideoJobService):
        self._live = live
        self.jobs = jobs
        self.breakers = breakers
        self.usage = usage
        self.credits = book
        self.background: set[asyncio.Task[Any]] = set()     # renders under way

    def _detached(self, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``work`` to its end whatever happens to the request awaiting it."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self._finished)
        return asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("a render whose client had left failed: %s", task.exception())

    async def host(self, media: Media, base_url: str) -> str:
        """Store ``media`` under an unguessable name; its public URL."""
        name = await self._live().media.save(media.data, media.mime)
        return f"{base_url}/media/{name}"

    def images(self, model: ModelSpec, req: ImageRequest, key_hash: str | None,
               base_url: str) -> Awaitable[tuple[list[dict], ModelSpec]]:
        """``data`` items of an images answer (URLs or base64), and the model that served."""
        return self._detached(self._images(model, req, key_hash, base_url))

    async def _images(self, model: ModelSpec, req: ImageRequest, key_hash: str | None,
                      base_url: str) -> tuple[list[dict], ModelSpec]:
        live = self._live()
        tally = Tally(requests=1, images=req.n)
        if key_hash is not None:
            check_images_n(req.n, live.config.settings.max_images)
        hold = self.usage.ahead(await self.credits.take(
            key_hash, price(model, tally), live.config.settings.daily_credits,
            live.config.settings.max_concurrent_requests), model)
        try:
            made, served = await first_success(
                live.config.catalog, self.breakers, model,
                lambda m: live.providers[m.provider.name].image(m, req), key_hash)
            self.usage.record(key_hash, served, tally, hold=hold)
        finally:
            hold.release()
        items = (made * req.n)[:req.n]    # a Gemini model makes one image: repeated n times
        if req.response_format == "b64_json":
            encoded = {id(m): base64.b64encode(m.data).decode() for m in made}
            return [{"b64_json": encoded[id(m)], "revised_prompt": m.revised_prompt}
                    for m in items], served
        urls = {id(m): await self.host(m, base_url) for m in made}
        return [{"url": urls[id(m)], "revised_prompt": m.revised_prompt}
                for m in items], served

    def video(self, model: ModelSpec, req: VideoRequest, key_hash: str | None,
              base_url: str) -> Awaitable[tuple[dict, ModelSpec]]:
        """A ``data`` item of a videos answer, and the model that served."""
        return self._detached(self._video(model, req, key_hash, base_url))

    async def _video(self, model: ModelSpec, req: VideoRequest, key_hash: str | None,
                     base_url: str) -> tuple[dict, ModelSpec]:
        """A video job (``services.videojobs``), waited on: it is stored, listed by
        GET /v1/videos, and completed and charged even if this request goes away."""
        job = await self.jobs.submit(model, req, key_hash)
        done = await self.jobs.wait(job.id)
        return {"url": f"{base_url}/media/{done.media}",
                "revised_prompt": done.revised_prompt}, done.served

    def as_chat(self, model: ModelSpec, body: dict, key_hash: str | None,
                base_url: str) -> MediaChat:
        """An image or video model asked through chat: every user/system turn is the
        prompt; video fields may be given as top-level fields of the chat body.  Checked
        here, before anything is sent (a plain 400)."""
        prompt = flatten_prompt(body["messages"])
        if not prompt.strip():
            raise InvalidRequest(f"`{model.alias}` makes media from the text of the user and "
                                 f"system messages, and they hold none.", param="messages",
                                 code="invalid_messages")
        most = self._live().config.settings.max_prompt_bytes
        bounded_prompt(prompt, most, "messages")
        fields = {**body, "prompt": prompt, "n": 1, "response_format": "url"}
        if model.type == "image":
            image = image_request(fields, model.alias, most)

            async def url() -> str:
                return (await self.images(model, image, key_hash, base_url))[0][0]["url"]
        else:
            video = video_request(fields, model.upstream, most)

            async def url() -> str:
                return (await self.video(model, video, key_hash, base_url))[0]["url"]
        if not model.fallbacks:           # a misconfigured provider: a plain 503 now
            self._live().providers[model.provider.name].require_configured()
        return MediaChat(model.alias, url, usage(len(prompt.split()), 1), wants_usage(body))


class MediaChat:
    """The chat answer of a media model: ``answer()`` whole, or ``frames()`` streamed."""

    def __init__(self, alias: str, url: Callable[[], Awaitable[str]], tokens: dict,
                 include_usage: bool):
        self.alias, self.url, self.tokens, self.include_usage = alias, url, tokens, include_usage

    async def answer(self) -> dict:
        return completion(self.alias, await self.url(), "stop", usage_=self.tokens)

    async def frames(self, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
        """Role chunk, SSE comments while the media renders, then the URL, finish and
        [DONE].  A failure in the first seconds is raised before any frame (a plain HTTP
        error for the client)."""
        chunks = Chunks(self.alias, self.include_usage)
        task = asyncio.ensure_future(self.url())
        try:
            done, _ = await asyncio.wait({task}, timeout=min(EARLY_ERROR_S, keepalive_s))
            if done:
                task.result()
            yield chunks.role()
            while not done:
                done, _ = await asyncio.wait({task}, timeout=keepalive_s)
                if not done:
                    yield sse.comment("rendering")
            yield chunks.content(task.result())
            yield chunks.finish("stop")
            final = chunks.usage(self.tokens)
            if final:
                yield final
            yield sse.DONE
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
