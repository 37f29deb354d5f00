"""What the two routes that serve a stored file share (``GET /media/{name}`` and
``GET /v1/videos/{id}/content``): StaticFileHandler's Content-Type, Content-Length, Range and
conditional answers, from the media store's live folder, with the gateway's rules on top."""
from __future__ import annotations

import tornado.web

from .. import byteranges
from .base import BaseHandler


class StoredFile(BaseHandler, tornado.web.StaticFileHandler):
    """A file of the media store: an invalid Range is ignored (RFC 9110), one outside the
    file is a JSON 416 (positions bounded: ``byteranges``); the name is the ETag (stored
    names are never reused); the answer is cached privately and can never be sniffed or
    run as a document."""

    def initialize(self) -> None:  # type: ignore[override]  # the folder is the live one
        super().initialize()                 # BaseHandler's (ApiHandler's chains to it)
        tornado.web.StaticFileHandler.initialize(self, path=str(self.svc.live.media.folder))

    async def send_stored(self, name: str, include_body: bool) -> None:
        spec = self.request.headers.get("Range", "")
        if spec:
            given = byteranges.bounded(spec)
            if given is None:
                del self.request.headers["Range"]
            else:
                self.request.headers["Range"] = given
        self.path_args = [name]
        await tornado.web.StaticFileHandler.get(self, name, include_body)
        if self.get_status() == 416 and not self._finished:
            self.write_json(byteranges.outside(spec).envelope(), 416)

    def compute_etag(self) -> str | None:
        return f'"{self.path_args[0]}"' if self.path_args else None

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
