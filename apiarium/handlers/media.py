"""POST /v1/images/generations, POST /v1/videos/generations, GET /media/{name}, and the
chat answer of an image or video model (the bare media URL, streamed or not)."""
from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import AsyncIterator, Awaitable

import orjson
import tornado.web

from .. import sse
from ..catalog import ModelSpec
from ..errors import InvalidRequest, NotFound
from ..generation import Media, image_request, video_request
from ..providers.shapes import Chunks, completion, flatten_prompt, usage, wants_usage
from ..usage import Tally
from .base import ApiHandler, BaseHandler
from .failover import FailoverMixin

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
KEEPALIVE_S = 10.0        # a rendering stream sends an SSE comment at least this often
EARLY_ERROR_S = 2.0       # failures this early are plain HTTP errors, not SSE error events


class MediaMixin(FailoverMixin):
    """Generation and hosting, shared by the media endpoints and chat with a media model."""

    async def host(self: ApiHandler, media: Media) -> str:
        name = await self.svc.live.media.save(media.data, media.mime)
        return f"{self.public_base()}/media/{name}"

    async def images(self: ApiHandler, model: ModelSpec, req) -> list[dict]:
        made, served = await self.with_fallbacks(
            model, lambda m: self.svc.provider(m).image(m, req))
        self.account(served, Tally(requests=1, images=req.n))
        items = (made * req.n)[:req.n]    # a Gemini model makes one image: repeated n times
        if req.response_format == "b64_json":
            encoded = {id(m): base64.b64encode(m.data).decode() for m in made}
            return [{"b64_json": encoded[id(m)], "revised_prompt": m.revised_prompt}
                    for m in items]
        urls = {id(m): await self.host(m) for m in made}
        return [{"url": urls[id(m)], "revised_prompt": m.revised_prompt} for m in items]

    async def video(self: ApiHandler, model: ModelSpec, req) -> dict:
        media, served = await self.with_fallbacks(
            model, lambda m: self.svc.provider(m).video(m, req))
        self.account(served, Tally(requests=1, video_seconds=req.duration_seconds),
                     req.resolution)
        return {"url": await self.host(media), "revised_prompt": media.revised_prompt}


class ImagesHandler(MediaMixin, ApiHandler):
    endpoint = "images"
    limited = True

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_typed(body.get("model"), ("image",),
                                               "/v1/images/generations")
        req = image_request(body, model.alias)
        data = await self.guarded(self.images(model, req))
        if data is not None:
            self.write_json({"created": int(time.time()), "data": data})


class VideosHandler(MediaMixin, ApiHandler):
    endpoint = "videos"
    limited = True

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_typed(body.get("model"), ("video",),
                                               "/v1/videos/generations")
        req = video_request(body, model.upstream)
        item = await self.guarded(self.video(model, req))
        if item is not None:
            self.write_json({"created": int(time.time()), "data": [item]})


async def chat_with_media(handler: MediaMixin, model: ModelSpec, body: dict,
                          stream: bool) -> None:
    """An image or video model on /v1/chat/completions: every user/system turn is the
    prompt; the assistant's content is the bare media URL.  Video fields may be given as
    top-level fields of the chat body."""
    prompt = flatten_prompt(body["messages"])
    if not prompt.strip():
        raise InvalidRequest(f"`{model.alias}` makes media from the text of the user and "
                             f"system messages, and they hold none.", param="messages",
                             code="invalid_messages")
    fields = {**body, "prompt": prompt, "n": 1, "response_format": "url"}
    if model.type == "image":             # validated before anything is sent: a plain 400
        image = image_request(fields, model.alias)

        async def url() -> str:
            return (await handler.images(model, image))[0]["url"]
    else:
        video = video_request(fields, model.upstream)

        async def url() -> str:
            return (await handler.video(model, video))["url"]
    if not model.fallbacks:               # a misconfigured provider: a plain 503 now
        handler.svc.provider(model).require_configured()
    tokens = usage(len(prompt.split()), 1)
    if stream:
        await handler.relay(rendering_stream(url(), Chunks(model.alias, wants_usage(body)),
                                             tokens))
        return
    answer = await handler.guarded(url())
    if answer is not None:
        handler.write_json(completion(model.alias, answer, "stop", usage_=tokens))


async def rendering_stream(work: Awaitable[str], chunks: Chunks, tokens: dict,
                           keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """Role chunk, SSE comments while the media renders, then the URL, finish and [DONE]."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=min(EARLY_ERROR_S, keepalive_s))
        if done:
            task.result()                  # an early failure: a plain HTTP error
        yield chunks.role()
        while not done:
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if not done:
                yield sse.comment("rendering")
        yield chunks.content(task.result())
        yield chunks.finish("stop")
        final = chunks.usage(tokens)
        if final:
            yield final
        yield sse.DONE
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class MediaFileHandler(BaseHandler, tornado.web.StaticFileHandler):
    """Generated files: Content-Type, Content-Length and Range from StaticFileHandler;
    unknown and expired names are a JSON 404 (an expired file is deleted on the way)."""
    endpoint = "media"

    def initialize(self) -> None:
        BaseHandler.initialize(self)
        tornado.web.StaticFileHandler.initialize(self, path=str(self.svc.live.media.folder))

    async def get(self, name: str, include_body: bool = True) -> None:
        media = self.svc.live.media
        if media.path_of(name) is None:
            raise NotFound(f"No media file `{name[:40]}`: the name is wrong, or the file "
                           f"expired (files are kept {media.ttl_s / 3600:g} hours). Generate "
                           f"it again.", code="media_not_found")
        spec = self.request.headers.get("Range", "")
        if spec:
            m = _RANGE.match(spec)
            first, last = m.groups() if m else ("", "")
            if not (first or last) or (first and last and int(last) < int(first)):
                del self.request.headers["Range"]    # an invalid Range is ignored (RFC 9110)
        await super().get(name, include_body)
        if self.get_status() == 416 and not self._finished:
            err = InvalidRequest(f"The requested range ({spec}) lies outside the file.",
                                 status=416, code="range_not_satisfiable")
            self.set_header("Content-Type", "application/json")
            self.finish(orjson.dumps(err.envelope()))

    def compute_etag(self) -> str | None:
        return f'"{self.path_args[0]}"' if self.path_args else None   # names are immutable

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        self.set_header("X-Content-Type-Options", "nosniff")
