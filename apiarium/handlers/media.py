"""POST /v1/images/generations, POST /v1/videos/generations, and GET /media/{name}."""
from __future__ import annotations

import time

from ..errors import NotFound
from ..generation import image_request, video_request
from .admission import admits, public, request
from .base import ApiHandler
from .files import StoredFile


@admits(POST=request("limits.max_images images from one call per model tried (its "
                     "provider's timeout_s); an image_url fetched within media.* bounds"))
class ImagesHandler(ApiHandler):
    endpoint = "images"

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/images/generations")
        req = image_request(body, model.alias, self.svc.settings.max_prompt_bytes)
        made = await self.guarded(self.svc.media.images(model, req, self.key_hash,
                                                        self.public_base()))
        if made is not None:
            data, served = made
            self.served_by(served)
            self.write_json({"created": int(time.time()), "data": data})


@admits(POST=request("one video render, polled until done or the provider's timeout_s"))
class VideosHandler(ApiHandler):
    endpoint = "videos"

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/videos/generations")
        req = video_request(body, model.upstream, self.svc.settings.max_prompt_bytes)
        made = await self.guarded(self.svc.media.video(model, req, self.key_hash,
                                                       self.public_base()))
        if made is not None:
            item, served = made
            self.served_by(served)
            self.write_json({"created": int(time.time()), "data": [item]})


@admits(GET=public("one stored file, read in chunks"),
        HEAD=public("one stored file's headers"))
class MediaFileHandler(StoredFile):
    """Generated files (``files.StoredFile``); unknown and expired names are a JSON 404 (an
    expired file is deleted on the way)."""
    endpoint = "media"

    async def get(self, name: str, include_body: bool = True) -> None:
        media = self.svc.live.media
        if media.path_of(name) is None:
            raise NotFound(f"No media file `{name[:40]}`: the name is wrong, or the file "
                           f"expired (files are kept {media.ttl_s / 3600:g} hours). Generate "
                           f"it again.", code="media_not_found")
        await self.send_stored(name, include_body)
