"""Video jobs in the OpenAI SDK's shape (``services/videojobs.py``):

    POST   /v1/videos                 JSON or multipart/form-data; the job (``queued``)
    GET    /v1/videos                 the key's jobs, newest first, cursor paging (``after``)
    GET    /v1/videos/{id}            the job
    DELETE /v1/videos/{id}            ``{"id", "object": "video.deleted", "deleted": true}``
    GET    /v1/videos/{id}/content    the MP4 (Range supported)

Job answers carry ``openai-poll-after-ms`` (the SDK's ``poll`` waits that long).  POST takes
the ``videos`` per-endpoint rate limit and the key's credits, as /v1/videos/generations does;
the GETs and DELETE are authenticated and not limited.
"""
from __future__ import annotations

import base64
import re

import tornado.httputil

from ..errors import InvalidRequest
from ..generation import job_request
from ..jsonbody import parse_object
from ..services.videojobs import LIST_MAX, POLL_AFTER_MS, view
from ..storage import VideoJob
from .admission import admits, lookup, request
from .base import ApiHandler
from .files import StoredFile

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
_TEXT_FIELDS = ("prompt", "model", "seconds", "size", "input_reference",
                "input_reference[image_url]", "input_reference[file_id]")


def image_type(data: bytes) -> str | None:
    """PNG, JPEG or WebP by their first bytes (None: none of them)."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class _JobAnswer(ApiHandler):
    def answer(self, job: VideoJob, status: int = 200) -> None:
        body = view(job)
        if body["status"] in ("queued", "in_progress"):
            self.set_header("openai-poll-after-ms", str(POLL_AFTER_MS))
        self.write_json(body, status)


@admits(POST=request("one video render job, run in the background and polled until done "
                     "(the provider's timeout_s)"),
        GET=lookup("one page of the key's jobs, at most LIST_MAX"))
class VideoJobsHandler(_JobAnswer):
    endpoint = "videos"

    async def post(self) -> None:
        fields, upload = self._fields()
        self.model_alias = str(fields.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(fields.get("model"), "/v1/videos/generations")
        jobs = self.svc.jobs
        image_url, ref = upload, None
        if upload is None:
            ref = fields.get("input_reference")
            if isinstance(ref, dict):
                if ref.get("file_id") is not None:
                    raise InvalidRequest("`input_reference.file_id` is not supported here (this "
                                         "gateway has no file store): upload the image as "
                                         "`input_reference` or give `input_reference.image_url`.",
                                         param="input_reference")
                ref = ref.get("image_url")
            if ref is not None and (not isinstance(ref, str) or
                                    not re.match(r"^(https?://\S+|data:image/)", ref)):
                raise InvalidRequest("`input_reference` must be an image file (multipart), "
                                     "or an http(s) or data: URL of an image.",
                                     param="input_reference")
        most = self.svc.settings.max_prompt_bytes
        req = job_request(fields, model.upstream, None, most)   # checked before a fetch
        if image_url is None and isinstance(ref, str):
            image_url = await jobs.reference(model, ref)
        if image_url is not None:
            req = job_request(fields, model.upstream, image_url, most)
        job = await jobs.submit(model, req, self.key_hash, str(fields.get("size") or "")
                                or None)
        self.answer(job)

    def _fields(self) -> tuple[dict, str | None]:
        """The request's fields (JSON, or a form's text fields) and an uploaded
        ``input_reference`` file as a data: URL (checked: PNG, JPEG or WebP, size-capped)."""
        ctype = self.request.headers.get("Content-Type", "")
        raw = self.raw_body()
        if not ctype.lower().startswith("multipart/form-data"):
            return parse_object(raw), None
        args: dict[str, list[bytes]] = {}
        files: dict[str, list[tornado.httputil.HTTPFile]] = {}
        try:
            tornado.httputil.parse_body_arguments(ctype, raw, args, files, self.request.headers)
        except tornado.httputil.HTTPInputError:
            raise InvalidRequest("The multipart/form-data body cannot be read (check its "
                                 "boundary and parts).", code="invalid_multipart") from None
        if not args and not files:
            raise InvalidRequest("The multipart/form-data body holds no fields; send `prompt` "
                                 "(and `model`, `seconds`, `size`, `input_reference`).",
                                 code="invalid_multipart")
        fields: dict = {}
        for name in _TEXT_FIELDS:
            if name in args:
                try:
                    fields[name] = args[name][0].decode()
                except UnicodeDecodeError:
                    raise InvalidRequest(f"`{name}` must be UTF-8 text.", param=name) from None
        if "input_reference[image_url]" in fields or "input_reference[file_id]" in fields:
            fields["input_reference"] = {
                "image_url": fields.pop("input_reference[image_url]", None),
                "file_id": fields.pop("input_reference[file_id]", None)}
        upload = files.get("input_reference")
        if not upload:
            return fields, None
        data = upload[0].body
        limit = self.svc.settings.image_url_max_bytes
        mime = image_type(data)
        if mime is None or len(data) > limit:
            raise InvalidRequest(f"`input_reference` must be a PNG, JPEG or WebP image of at "
                                 f"most {limit:,} bytes (got {len(data):,} bytes"
                                 f"{'' if mime else ' of another type'}).",
                                 param="input_reference")
        return fields, f"data:{mime};base64,{base64.b64encode(data).decode()}"

    async def get(self) -> None:
        limit_arg = self.get_query_argument("limit", "20")
        if not limit_arg.isdigit() or not 1 <= int(limit_arg) <= LIST_MAX:
            raise InvalidRequest(f"`limit` must be a whole number from 1 to {LIST_MAX} (got "
                                 f"{limit_arg[:20]!r}).", param="limit")
        order = self.get_query_argument("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"`order` must be `asc` or `desc` (got {order[:20]!r}).",
                                 param="order")
        after = self.get_query_argument("after", None) or None
        jobs, more = await self.svc.jobs.page(self.key_hash, after, int(limit_arg), order)
        data = [view(j) for j in jobs]
        self.write_json({"object": "list", "data": data, "has_more": more,
                         "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None})


@admits(GET=lookup("one job of the key's"), DELETE=lookup("one job of the key's, and its file"))
class VideoJobHandler(_JobAnswer):
    endpoint = "video_jobs"

    async def get(self, job_id: str) -> None:
        self.answer(await self.svc.jobs.get(job_id, self.key_hash))

    async def delete(self, job_id: str) -> None:
        await self.svc.jobs.delete(job_id, self.key_hash)
        self.write_json({"id": job_id, "object": "video.deleted", "deleted": True})


@admits(GET=lookup("one stored file of the key's, read in chunks"),
        HEAD=lookup("one stored file's headers"))
class VideoContentHandler(StoredFile, ApiHandler):
    """The MP4 of a completed job, from the media store (``files.StoredFile``)."""
    endpoint = "video_jobs"

    async def get(self, job_id: str, include_body: bool = True) -> None:
        variant = self.get_query_argument("variant", "video")
        if variant != "video":
            raise InvalidRequest(f"`variant` {variant[:20]!r} is not available: this gateway "
                                 f"keeps the video only (variant=video).", param="variant")
        await self.send_stored(await self.svc.jobs.content(job_id, self.key_hash), include_body)


routes = [
    (r"/v1/videos", VideoJobsHandler),
    (r"/v1/videos/([^/]+)/content", VideoContentHandler),
    (r"/v1/videos/([^/]+)", VideoJobHandler),
]
