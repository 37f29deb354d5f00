"""POST /v1/images/generations, POST /v1/videos/generations, and GET /media/{name}."""
from __future__ import annotations

import time

import tornado.web

from .. import byteranges
from ..errors import NotFound
from ..generation import image_request, video_request
from .base import ApiHandler, BaseHandler


class ImagesHandler(ApiHandler):
    endpoint = "images"
    limited = True

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/images/generations")
        req = image_request(body, model.alias)
        made = await self.guarded(self.svc.media.images(model, req, self.key_hash,
                                                        self.public_base()))
        if made is not None:
            data, served = made
            self.served_by(served)
            self.write_json({"created": int(time.time()), "data": data})


class VideosHandler(ApiHandler):
    endpoint = "videos"
    limited = True

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/videos/generations")
        req = video_request(body, model.upstream)
        made = await self.guarded(self.svc.media.video(model, req, self.key_hash,
                                                       self.public_base()))
        if made is not None:
            item, served = made
            self.served_by(served)
            self.write_json({"created": int(time.time()), "data": [item]})


class MediaFileHandler(BaseHandler, tornado.web.StaticFileHandler):
    """Generated files: Content-Type, Content-Length and Range from StaticFileHandler;
    unknown and expired names are a JSON 404 (an expired file is deleted on the way)."""
    endpoint = "media"

    def initialize(self) -> None:  # type: ignore[override]  # the folder is the live one
        BaseHandler.initialize(self)
        tornado.web.StaticFileHandler.initialize(self, path=str(self.svc.live.media.folder))

    async def get(self, name: str, include_body: bool = True) -> None:
        media = self.svc.live.media
        if media.path_of(name) is None:
            raise NotFound(f"No media file `{name[:40]}`: the name is wrong, or the file "
                           f"expired (files are kept {media.ttl_s / 3600:g} hours). Generate "
                           f"it again.", code="media_not_found")
        spec = self.request.headers.get("Range", "")
        if spec and not byteranges.usable(spec):
            del self.request.headers["Range"]    # an invalid Range is ignored (RFC 9110)
        await super().get(name, include_body)
        if self.get_status() == 416 and not self._finished:
            self.write_json(byteranges.outside(spec).envelope(), 416)

    def compute_etag(self) -> str | None:
        return f'"{self.path_args[0]}"' if self.path_args else None   # names are immutable

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        # served as what its extension says, never sniffed, and never able to run script
        # or reach anything should a browser render it as a document
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
