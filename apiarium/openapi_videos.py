"""The OpenAPI description of the video jobs (``handlers/videos.py``), in the OpenAI SDK's
shape: ``POST/GET /v1/videos``, ``GET/DELETE /v1/videos/{video_id}`` and
``GET /v1/videos/{video_id}/content``.  Kept apart from ``openapi.py``, which merges these
paths and schemas into the document with its own ``operation`` and ``ok`` helpers."""
from __future__ import annotations

from typing import Any

from .generation import JOB_SECONDS, JOB_SIZES
from .services.videojobs import LIST_MAX

JSON = "application/json"
MULTIPART = "multipart/form-data"
INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
STATUSES = ["queued", "in_progress", "completed", "failed"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict, **extra: Any) -> dict:
    return {"type": "object", "required": required, "properties": props, **extra}


def _null(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_FIELDS = {
    "model": {"type": "string", "minLength": 1, "description": "A video model alias from "
              "GET /v1/models.", "examples": ["veo-3.1-fast"]},
    "prompt": TEXT,
    "seconds": {"enum": list(JOB_SECONDS), "description": "Clip length (default \"8\")."},
    "size": {"enum": list(JOB_SIZES), "description": "Width x height: 16:9 or 9:16, 720p "
             "(1280x720, 720x1280) or 1080p (the others); default 1280x720."},
}

SCHEMAS: dict[str, Any] = {
    "VideoJobRequest": _obj(["model", "prompt"], {
        **_FIELDS,
        "input_reference": _obj([], {"image_url": {
            "type": "string", "description": "An http(s) URL (fetched now, public addresses "
            "only) or a data: URL of a PNG, JPEG or WebP image: the first frame."}})},
        description="A video job. `seconds` and `size` map to Veo's duration, aspect ratio "
                    "and resolution; anything else is a 400 naming the field."),
    "VideoJobForm": _obj(["model", "prompt"], {
        **_FIELDS,
        "input_reference": {"type": "string", "format": "binary",
                            "description": "A PNG, JPEG or WebP file: the first frame."}}),
    "VideoJob": _obj(
        ["id", "object", "model", "status", "progress", "created_at", "seconds", "size"], {
            "id": {"type": "string", "pattern": "^video_"},
            "object": {"const": "video"}, "model": STR,
            "status": {"enum": STATUSES, "description": "A completed job's file is kept "
                       "`media.ttl_hours` (until `expires_at`), then its content is a 404."},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "created_at": INT, "completed_at": _null(INT), "expires_at": _null(INT),
            "prompt": _null(STR), "seconds": STR, "size": STR,
            "remixed_from_video_id": {"type": "null"},
            "error": _null(_obj(["code", "message"], {"code": STR, "message": STR}))}),
    "VideoJobList": _obj(["object", "data", "has_more"], {
        "object": {"const": "list"}, "data": {"type": "array", "items": _ref("VideoJob")},
        "has_more": BOOL, "first_id": _null(STR), "last_id": _null(STR)}),
    "VideoJobDeleted": _obj(["id", "object", "deleted"], {
        "id": STR, "object": {"const": "video.deleted"}, "deleted": {"const": True}}),
}


def paths(operation: Any, ok: Any, upstream_errors: tuple[int, ...],
          authed_errors: tuple[int, ...], rate_headers: dict) -> dict:
    """The video jobs' paths, built with ``openapi.py``'s ``operation`` and ``ok``."""
    poll = {"openai-poll-after-ms": {"description": "While the job is queued or in "
                                     "progress: milliseconds to wait before asking again.",
                                     "schema": INT}}
    job = {JSON: {"schema": _ref("VideoJob")}}
    video_id = {"name": "video_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[^/]+$"}}
    create = operation(
        "createVideoJob", "generation", "Start a video job (JSON or multipart/form-data)",
        {200: ok("The job, `queued`; poll GET /v1/videos/{video_id}.", job,
                 {**rate_headers, **poll})},
        auth=True, body="VideoJobRequest", errors=upstream_errors)
    create["requestBody"]["content"][MULTIPART] = {"schema": _ref("VideoJobForm")}
    listing = operation(
        "listVideoJobs", "generation", "The caller's video jobs (cursor paging)",
        {200: ok("A page of jobs.", {JSON: {"schema": _ref("VideoJobList")}})}, auth=True,
        params=[{"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": LIST_MAX}},
                {"name": "order", "in": "query", "required": False,
                 "schema": {"enum": ["asc", "desc"]}},
                {"name": "after", "in": "query", "required": False, "schema": STR,
                 "description": "The last id of the previous page."}],
        errors=(*authed_errors, 400))
    content_ok = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
    content = operation(
        "getVideoJobContent", "generation",
        "The MP4 of a completed job (Range supported; 404 until completed and once expired)",
        {200: ok("The video.", content_ok, {"Content-Length": {"schema": INT}}),
         206: ok("A byte range of the video.", content_ok, {"Content-Range": {"schema": STR}}),
         304: ok("Not modified (ETag).", None),
         416: ok("The range is outside the file (`code`: range_not_satisfiable).",
                 {JSON: {"schema": _ref("Error")}}, {"Content-Range": {"schema": STR}})},
        auth=True, errors=(*authed_errors, 400, 404),
        params=[video_id, {"name": "variant", "in": "query", "required": False,
                           "schema": {"enum": ["video"]}},
                {"name": "Range", "in": "header", "required": False, "schema": STR}])
    head = {**content, "operationId": "headVideoJobContent", "responses": {
        status: {k: v for k, v in resp.items() if k != "content"} if "$ref" not in resp
        else resp for status, resp in content["responses"].items()}}
    return {
        "/v1/videos": {"post": create, "get": listing},
        "/v1/videos/{video_id}": {
            "get": operation("getVideoJob", "generation", "One of the caller's video jobs",
                             {200: ok("The job.", job, poll)}, auth=True, params=[video_id],
                             errors=(*authed_errors, 404)),
            "delete": operation("deleteVideoJob", "generation",
                                "Delete one of the caller's video jobs and its file",
                                {200: ok("Deleted.", {JSON: {"schema": _ref("VideoJobDeleted")}})},
                                auth=True, params=[video_id], errors=(*authed_errors, 404))},
        "/v1/videos/{video_id}/content": {"get": content, "head": head},
    }
