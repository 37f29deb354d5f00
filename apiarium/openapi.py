"""The OpenAPI 3.1 description of Apiarium's own HTTP API, served at GET /openapi.json.

Built once (``document_bytes`` is cached); pure data, no tornado.  Each operation lists the
fields the gateway reads or validates, its 200 shapes (SSE as ``text/event-stream``) and
every error status it can answer with, all in OpenAI's envelope.  Unknown request fields are
ignored by the gateway (and passed on to OpenAI-compatible upstreams), so request objects
allow additional properties.  ``tests/test_openapi.py`` checks that the paths are exactly the
application's routes and fuzzes the running gateway against this document.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import orjson

from . import __version__, openapi_dialects, openapi_videos
from .embedding import MAX_INPUTS, MAX_TOKEN_ID
from .generation import OPENAI_SIZES, RATIOS, VIDEO_RATIOS, VIDEO_RESOLUTIONS
from .modeltypes import MODEL_TYPES

JSON = "application/json"
SSE = "text/event-stream"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


# ------------------------------------------------------------------------------ errors
# status -> (when, the codes it carries).  Every error body is the same envelope.
ERRORS = {
    400: (("Bad JSON, a missing or invalid field (`param` names it as sent), or a model of the "
           "wrong type for the endpoint."),
          ("invalid_json, invalid_request, invalid_model, missing_messages, invalid_messages, "
           "missing_prompt, invalid_prompt, string_above_max_length, model_type_mismatch, "
           "content_policy_violation, upstream_no_output")),
    401: ("No bearer token; an unknown or revoked key; a key used from another IP.",
          "missing_api_key, invalid_api_key, ip_mismatch"),
    403: ("VPN, proxy, blocklisted network, or an address the operator blocked.",
          "vpn_detected"),
    404: ("Unknown model alias, media file, path, or video job (or another key's).",
          ("model_not_found, media_not_found, not_found, video_not_found, video_not_ready, "
           "video_expired")),
    413: ("The body is over `server.max_body_mb`.", "body_too_large"),
    421: ("The request names a host not in `server.allowed_hosts` (when it is set).",
          "misdirected_request"),
    429: (("Over the key's rate limit (with `Retry-After` and `x-ratelimit-*`), over its daily "
           "credits or its requests in flight (`limits.max_concurrent_requests`), the "
           "upstream's own rate limit or quota; on /v1/keys/me, too many key "
           "requests from the caller's network; too many wrong tokens from the caller's "
           "network (whatever it sends, until `Retry-After`); on a route that needs no key, "
           "too many requests from the caller's network "
           "(`security.public_requests_per_minute`)."),
          ("rate_limit_exceeded, insufficient_quota, too_many_concurrent_requests, "
           "upstream_rate_limited, too_many_failed_attempts")),
    502: (("The upstream cannot be reached, answered garbage or a 5xx, refused the gateway's "
           "own provider key, or made a file of a type the gateway does not serve."),
          "upstream_unreachable, upstream_error, upstream_bad_media"),
    503: (("The upstream is overloaded, its provider has no API key here, its circuit is open, "
           "the gateway is shutting down, its shared rate limiter (Redis) is down, or another "
           "gateway process took over the video job this request waited on."),
          ("upstream_overloaded, provider_not_configured, upstream_cooling_down, "
           "server_shutting_down, "
           "rate_limiter_unavailable, video_moved")),
    504: ("No answer within the provider's `timeout_s`.", "upstream_timeout"),
}
AUTHED = (401, 403, 413, 421, 429)             # any bearer endpoint
UPSTREAM = (400, 401, 403, 404, 413, 421, 429, 502, 503, 504)     # the generating POSTs
PASSTHROUGH = {
    "description": "An upstream 4xx about the request itself, with its status and the "
                   "upstream's message in the envelope.",
    "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
    "content": {JSON: {"schema": ref("Error")}},
}
RATE_HEADERS = {name: {"$ref": f"#/components/headers/{ref_}"} for name, ref_ in (
    ("x-ratelimit-limit-requests", "RateLimitLimit"),
    ("x-ratelimit-remaining-requests", "RateLimitRemaining"),
    ("x-ratelimit-reset-requests", "RateLimitReset"))}


def error_response(status: int) -> dict:
    when, codes = ERRORS[status]
    headers = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}
    if status == 429:
        headers.update({"Retry-After": {"$ref": "#/components/headers/RetryAfter"},
                        **RATE_HEADERS})
    return {"description": f"{when} `code`: {codes}.", "headers": headers,
            "content": {JSON: {"schema": ref("Error")}}}


def ok(description: str, content: dict | None, headers: dict | None = None) -> dict:
    out = {"description": description,
           "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"},
                       **(headers or {})}}
    return {**out, "content": content} if content else out


def operation(op_id: str, tag: str, summary: str, responses: dict, *, auth: bool = False,
              body: str | None = None, params: list | None = None,
              errors: Iterable[int] = (), passthrough: bool = False) -> dict:
    out: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary}
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    out["security"] = [{"bearer": []}] if auth else []
    out["responses"] = {str(s): r for s, r in responses.items()}
    for status in errors:
        out["responses"].setdefault(str(status), {"$ref": f"#/components/responses/E{status}"})
    return {**out, "responses": {**out["responses"], "4XX": PASSTHROUGH}} if passthrough else out


# ------------------------------------------------------------------------------ schemas
def obj(required: list[str], props: dict, **extra: Any) -> dict:
    return {"type": "object", "required": required, "properties": props, **extra}


INT, NUM, STR, BOOL = ({"type": "integer"}, {"type": "number"}, {"type": "string"},
                       {"type": "boolean"})
TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
MODEL = {"type": "string", "minLength": 1, "description": "A model alias from GET /v1/models.",
         "examples": ["gpt-5"]}
STREAM_OPTIONS = nullable(obj([], {"include_usage": BOOL}))
SAMPLING = {"temperature": nullable(NUM), "top_p": nullable(NUM), "max_tokens": nullable(INT),
            "stop": nullable({"anyOf": [STR, {"type": "array", "items": STR}]}),
            "seed": nullable(INT), "user": STR, "presence_penalty": nullable(NUM),
            "frequency_penalty": nullable(NUM), "logit_bias": nullable({"type": "object"})}
IMAGE_URL = {"type": "string",
             "pattern": r"^(https?://\S+|data:image/[\w.+-]+(;[^,;]*)*;base64,)"}
VIDEO_FIELDS = {
    "duration_seconds": {"anyOf": [{"type": "integer", "enum": [4, 6, 8]},
                                   {"type": "string", "pattern": r"^\s*0*[468]\s*$"},
                                   {"type": "null"}],
                         "description": "4, 6 or 8 (a number or a string; default 8)."},
    "resolution": nullable({"type": "string", "enum": list(VIDEO_RESOLUTIONS)}),
    "aspect_ratio": nullable({"type": "string", "enum": list(VIDEO_RATIOS)}),
    "size": nullable({"type": "string", "enum": list(VIDEO_RATIOS),
                      "description": "An alias of `aspect_ratio`."}),
    "image_url": nullable({"anyOf": [IMAGE_URL, obj(["url"], {"url": IMAGE_URL})],
                           "description": "The first frame: an http(s) URL (downloaded by "
                                          "the gateway) or a base64 data: URL."}),
}
TOKEN = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
USAGE = obj(["prompt_tokens", "completion_tokens", "total_tokens"],
            {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT,
             "prompt_tokens_details": obj([], {"cached_tokens": INT, "cache_write_tokens": INT}),
             "completion_tokens_details": obj([], {"reasoning_tokens": INT})},
            description="prompt_tokens counts every input token, cached and cache-written "
                        "ones too; completion_tokens counts the reasoning tokens too.")


def sse_event(chunk: str) -> dict:
    """One event of a stream (the schema describes each event, as before OpenAPI 3.2's
    ``itemSchema``): ``data:`` is a JSON chunk, an error envelope, or ``[DONE]``."""
    return obj(["data"], {
        "event": STR, "id": STR, "retry": INT,
        "data": {"anyOf": [{"const": "[DONE]"}, {
            "type": "string", "contentMediaType": JSON,
            "contentSchema": {"anyOf": [ref(chunk), ref("Error")]}}]}},
        description="One server-sent event; the stream ends with `data: [DONE]`, or with one "
                    "`data: {\"error\": ...}` event if it fails after it started.")


SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": "OpenAI's error envelope: every error, on every path.",
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {"message": STR, "type": STR, "param": nullable(STR),
                           "code": nullable(STR)}}}},
    "Health": obj(["status"], {"status": {"const": "ok"}, "version": STR, "uptime_s": NUM,
                               "models": INT, "keys": INT, "backends": {"type": "object"},
                               "workers": obj(["count", "pid"], {"count": INT, "pid": INT})}),
    "KeyUsage": obj(["object", "data", "credits"], {
        "object": {"const": "list"},
        "data": {"type": "array", "minItems": 1, "maxItems": 90, "items": obj(
            ["date", "requests", "prompt_tokens", "completion_tokens", "images",
             "video_seconds", "credits"], {
                "date": {"type": "string", "format": "date"},
                **{name: {"type": "integer", "minimum": 0} for name in (
                    "requests", "prompt_tokens", "completion_tokens", "images",
                    "video_seconds")},
                "credits": {"type": "number", "minimum": 0}})},
        "credits": obj(["daily_limit", "remaining"], {
            "daily_limit": nullable({"type": "number", "exclusiveMinimum": 0}),
            "remaining": nullable({"type": "number", "minimum": 0})})},
        description="The key's usage on each UTC day of the range, oldest first (the last is "
                    "today), every day present; `credits`: its daily limit and what is left "
                    "today (both null when unlimited, and for the master key)."),
    "ApiKey": obj(["object", "key", "ip", "created", "rate_limit"], {
        "object": {"const": "api_key"},
        "key": {"type": "string", "pattern": "^api-[a-z0-9]{16}$"},
        "ip": STR, "created": INT,
        "rate_limit": obj(["rpm"], {"rpm": {"type": "integer", "minimum": 1}}),
        "usage": {"type": "object", "description": "Today's (UTC) usage of this key."}}),
    "Model": obj(["id", "object", "created", "owned_by", "type", "status", "status_detail",
                  "available_at"], {
        "id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR,
        "type": {"type": "string", "enum": list(MODEL_TYPES)},
        "status": {"type": "string",
                   "enum": ["ready", "not_configured", "demo", "cooling_down"],
                   "description": "Whether the model answers now: ready; not_configured "
                                  "(its provider has no base URL or key); demo (canned "
                                  "answers from the built-in demo provider); cooling_down "
                                  "(its provider is failing and is skipped for a while)."},
        "status_detail": nullable({"type": "string", "description":
                                   "What the status means or what to do, e.g. `set "
                                   "OPENAI_API_KEY`; null when ready."}),
        "available_at": nullable({"type": "integer", "description":
                                  "cooling_down: when (Unix seconds) the provider is tried "
                                  "again; else null."})}),
    "ModelList": obj(["object", "data"], {"object": {"const": "list"},
                                          "data": {"type": "array", "items": ref("Model")}}),
    "Message": obj(["role"], {
        "role": {"type": "string", "examples": ["system", "user", "assistant", "tool"]},
        "content": {"description": "A string, or a list of content parts "
                                   "(text, image_url, ...)."},
        "name": STR, "tool_calls": {"type": "array"}, "tool_call_id": STR}),
    "ChatCompletionRequest": obj(["model", "messages"], {
        "model": MODEL,
        "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
        "stream": nullable(BOOL), "stream_options": STREAM_OPTIONS,
        "max_completion_tokens": nullable(INT), "n": nullable(INT), "tools": {"type": "array"},
        "tool_choice": {}, "response_format": {}, **SAMPLING, **VIDEO_FIELDS},
        description="OpenAI's chat request; any model. With an image or video model the "
                    "user/system turns are the prompt and video fields may be top-level."),
    "ChatCompletion": obj(["id", "object", "created", "model", "choices"], {
        "id": STR, "object": {"const": "chat.completion"}, "created": INT, "model": STR,
        "choices": {"type": "array", "items": obj(["index", "message", "finish_reason"], {
            "index": INT, "finish_reason": nullable(STR),
            "message": obj(["role"], {"role": STR, "content": nullable(STR),
                                      "tool_calls": {"type": "array"}})})},
        "usage": nullable(USAGE)}),
    "ChatCompletionChunk": obj(["id", "object", "created", "model", "choices"], {
        "id": STR, "object": {"const": "chat.completion.chunk"}, "created": INT, "model": STR,
        "choices": {"type": "array", "items": obj(["index", "delta"], {
            "index": INT, "delta": {"type": "object"}, "finish_reason": nullable(STR)})},
        "usage": nullable(USAGE)}),
    "ChatCompletionEvent": sse_event("ChatCompletionChunk"),
    "CompletionRequest": obj(["model", "prompt"], {
        "model": MODEL,
        "prompt": {"anyOf": [STR, {"type": "array", "items": STR, "minItems": 1,
                                   "maxItems": 1}],
                   "description": "One prompt (a string, or a list holding one string)."},
        "stream": nullable(BOOL), "stream_options": STREAM_OPTIONS, "echo": nullable(BOOL),
        **SAMPLING}),
    "TextCompletion": obj(["id", "object", "created", "model", "choices"], {
        "id": STR, "object": {"const": "text_completion"}, "created": nullable(INT),
        "model": nullable(STR),
        "choices": {"type": "array", "items": obj(["text", "index", "finish_reason"], {
            "text": STR, "index": INT, "logprobs": {"type": "null"},
            "finish_reason": nullable(STR)})},
        "usage": nullable(USAGE)}),
    "TextCompletionChunk": obj(["id", "object", "created", "model", "choices"], {
        "id": STR, "object": {"const": "text_completion"}, "created": nullable(INT),
        "model": nullable(STR),
        "choices": {"type": "array", "items": obj(["text", "index"], {
            "text": STR, "index": INT, "finish_reason": nullable(STR)})},
        "usage": nullable(USAGE)}),
    "TextCompletionEvent": sse_event("TextCompletionChunk"),
    "ImageRequest": obj(["model", "prompt"], {
        "model": MODEL, "prompt": TEXT,
        "n": nullable({"type": "integer", "minimum": 1, "maximum": 10}),
        "size": nullable({"type": "string", "enum": list(RATIOS) + list(OPENAI_SIZES),
                          "description": "A ratio or an OpenAI size."}),
        "response_format": nullable({"type": "string", "enum": ["url", "b64_json"]}),
        "user": STR}),
    "ImagesResponse": obj(["created", "data"], {
        "created": INT,
        "data": {"type": "array", "minItems": 1, "maxItems": 10, "items": {
            **obj(["revised_prompt"], {"url": {"type": "string", "format": "uri"},
                                       "b64_json": STR, "revised_prompt": STR}),
            "oneOf": [{"required": ["url"]}, {"required": ["b64_json"]}]}}}),
    "VideoRequest": obj(["model", "prompt"], {"model": MODEL, "prompt": TEXT, **VIDEO_FIELDS}),
    "EmbeddingRequest": obj(["model", "input"], {
        "model": MODEL,
        "input": {"anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
             "items": {"type": "string", "minLength": 1}},
            {"type": "array", "minItems": 1, "items": TOKEN},
            {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS,
             "items": {"type": "array", "minItems": 1, "items": TOKEN}}],
            "description": "A string, a list of strings, a token array or a list of token "
                           "arrays (at most 2048 inputs). Token arrays only for models of "
                           "OpenAI-compatible providers (elsewhere: 400 naming `input`)."},
        "dimensions": nullable({"type": "integer", "minimum": 1}),
        "encoding_format": nullable({"type": "string", "enum": ["float", "base64"],
                                     "description": "Default `float`; `base64` is "
                                                    "little-endian float32."}),
        "user": STR}),
    "EmbeddingList": obj(["object", "data", "model", "usage"], {
        "object": {"const": "list"},
        "data": {"type": "array", "minItems": 1, "items": obj(
            ["object", "index", "embedding"], {
                "object": {"const": "embedding"}, "index": INT,
                "embedding": {"anyOf": [{"type": "array", "items": NUM},
                                        {"type": "string", "contentEncoding": "base64"}]}})},
        "model": STR,
        "usage": obj(["prompt_tokens", "total_tokens"], {"prompt_tokens": INT,
                                                         "total_tokens": INT})},
        description="The vectors in input order (`index`). Usage is the upstream's count, or "
                    "an estimate (4 bytes of text a token) where it gives none (Gemini)."),
    "VideosResponse": obj(["created", "data"], {
        "created": INT,
        "data": {"type": "array", "minItems": 1, "maxItems": 1, "items": obj(
            ["url", "revised_prompt"], {"url": {"type": "string", "format": "uri"},
                                        "revised_prompt": STR})}}),
}


HEADERS = {
    "RequestId": {"description": "This request's id (also in the gateway's log).",
                  "required": True, "schema": STR},
    "RetryAfter": {"description": "Whole seconds to wait.", "schema": INT},
    "RateLimitLimit": {"description": "The key's requests per minute.", "schema": INT},
    "RateLimitRemaining": {"description": "Requests left in the bucket.", "schema": INT},
    "RateLimitReset": {"description": "When the bucket is full again, e.g. `15s`.",
                       "schema": STR},
}


# ------------------------------------------------------------------------------ paths
def _paths() -> dict:
    limited = dict(RATE_HEADERS)
    media_name = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^[^/]+$"}}
    range_header = {"name": "Range", "in": "header", "required": False,
                    "description": "`bytes=START-END`: a part of the file (206).",
                    "schema": {"type": "string", "examples": ["bytes=0-1023"]}}
    media_ok = {t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/*", "video/*", "application/octet-stream")}
    static_types = ["text/css", "text/javascript", "image/svg+xml", "image/png",
                    "image/x-icon", "image/webp"]
    static_ok = {t: {"schema": {"type": "string"}} for t in static_types}
    static_name = {"name": "name", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"}}
    html = {"text/html": {"schema": {"type": "string"}}}

    def head_of(get: dict, op_id: str) -> dict:
        """The same operation without bodies (HEAD)."""
        responses = {}
        for status, resp in get["responses"].items():
            resp = dict(resp) if "$ref" not in resp else {
                "description": ERRORS[int(status)][0],
                "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}}}
            resp.pop("content", None)
            responses[status] = resp
        return {**get, "operationId": op_id, "responses": responses}

    media_get = operation(
        "getMedia", "media", "A generated image or video (Content-Type, Content-Length, Range)",
        {200: ok("The file.", media_ok, {"Content-Length": {"schema": INT}}),
         206: ok("A byte range of the file.", media_ok, {"Content-Range": {"schema": STR}}),
         304: ok("Not modified (ETag).", None),
         416: ok("The range is outside the file (`code`: range_not_satisfiable).",
                 {JSON: {"schema": ref("Error")}}, {"Content-Range": {"schema": STR}})},
        params=[media_name, range_header], errors=(404, 429))
    static_get = operation(
        "getStatic", "pages", "A static file of the homepage (CSS, JS, icons)",
        {200: ok("The file.", static_ok), 304: ok("Not modified (ETag).", None)},
        params=[static_name], errors=(404, 429))
    return {
        "/": {"get": operation(
            "homepage", "pages", "Homepage: the visitor's key, base URL, examples, catalog",
            {200: ok("An HTML page.", html),
             403: ok("VPN, proxy or blocked address: an HTML error page (`vpn_detected`).",
                     html),
             429: ok("Too many key requests from this network: an HTML error page.", html,
                     {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}})}),
              "head": operation("probe", "pages",
                                "A probe of the base URL (agent clients): no key is issued",
                                {200: ok("Up.", None)}, errors=(429,))},
        "/static/{name}": {"get": static_get, "head": head_of(static_get, "headStatic")},
        "/health": {"get": operation("health", "info", "Liveness",
                                     {200: ok("Up.", {JSON: {"schema": ref("Health")}})},
                                     errors=(429,))},
        "/v1/keys/me": {"get": operation(
            "keysMe", "keys", "The caller's IP's key (created on the first call)",
            {200: ok("The key, bound to the caller's IP.", {JSON: {"schema": ref("ApiKey")}})},
            errors=(403, 429))},
        "/v1/keys/me/usage": {"get": operation(
            "keyUsage", "keys", "The caller's key's usage per UTC day, and its credits left",
            {200: ok("The last `days` days, oldest first.", {JSON: {"schema": ref("KeyUsage")}}),
             503: {"description": "The database cannot be read right now (`code`: "
                                  "storage_unavailable).",
                   "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
                   "content": {JSON: {"schema": ref("Error")}}}},
            auth=True, errors=(*AUTHED, 400),
            params=[{"name": "days", "in": "query", "required": False,
                     "description": "How many days, ending today (UTC): 1 to 90.",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 90,
                                "default": 7}}])},
        "/v1/models": {"get": operation(
            "listModels", "models", "The catalog",
            {200: ok("Every model.", {JSON: {"schema": ref("ModelList")}})},
            auth=True, errors=AUTHED)},
        "/v1/models/{model}": {"get": operation(
            "getModel", "models", "One model",
            {200: ok("The model.", {JSON: {"schema": ref("Model")}})}, auth=True,
            params=[{"name": "model", "in": "path", "required": True, "schema": STR}],
            errors=(*AUTHED, 404))},
        "/v1/chat/completions": {"post": operation(
            "createChatCompletion", "generation", "Chat, any model (SSE with `stream: true`)",
            {200: ok("The answer; with `stream: true` an event stream of "
                     "`data: {chat.completion.chunk}` frames ending with `data: [DONE]` "
                     "(a failure after the first frame is one `data: {\"error\": ...}` frame).",
                     {JSON: {"schema": ref("ChatCompletion")},
                      SSE: {"schema": ref("ChatCompletionEvent")}}, limited)},
            auth=True, body="ChatCompletionRequest", errors=UPSTREAM, passthrough=True)},
        "/v1/completions": {"post": operation(
            "createCompletion", "generation", "Legacy text completions, every chat model",
            {200: ok("The completion, or its event stream with `stream: true`.",
                     {JSON: {"schema": ref("TextCompletion")},
                      SSE: {"schema": ref("TextCompletionEvent")}}, limited)},
            auth=True, body="CompletionRequest", errors=UPSTREAM, passthrough=True)},
        "/v1/images/generations": {"post": operation(
            "createImage", "generation", "Images, image models only",
            {200: ok("The images.", {JSON: {"schema": ref("ImagesResponse")}}, limited)},
            auth=True, body="ImageRequest", errors=UPSTREAM, passthrough=True)},
        "/v1/videos/generations": {"post": operation(
            "createVideo", "generation",
            "A video, video models only (the request stays open until it is ready: minutes)",
            {200: ok("The video.", {JSON: {"schema": ref("VideosResponse")}}, limited)},
            auth=True, body="VideoRequest", errors=UPSTREAM, passthrough=True)},
        "/v1/embeddings": {"post": operation(
            "createEmbedding", "generation", "Embeddings, embedding models only",
            {200: ok("One vector per input, as floats or base64 (`encoding_format`).",
                     {JSON: {"schema": ref("EmbeddingList")}}, limited)},
            auth=True, body="EmbeddingRequest", errors=UPSTREAM, passthrough=True)},
        "/media/{name}": {"get": media_get, "head": head_of(media_get, "headMedia")},
        **openapi_dialects.paths(operation, ok, UPSTREAM, AUTHED, limited),
        **openapi_videos.paths(operation, ok, UPSTREAM, AUTHED, limited),
        "/openapi.json": {"get": operation(
            "openapi", "info", "This document",
            {200: ok("OpenAPI 3.1.", {JSON: {"schema": {"type": "object"}}})},
            errors=(429,))},
        "/metrics": {"get": operation(
            "metrics", "info", "Prometheus metrics: for `metrics.allow_cidrs` (loopback by "
            "default), or with `metrics.token` as a bearer token",
            {200: ok("Prometheus text exposition format.",
                     {"text/plain": {"schema": STR}})}, errors=(401, 403, 429))},
    }


def _build() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Apiarium",
            "version": __version__,
            "summary": "A self-hosted gateway that speaks the OpenAI API.",
            "description": (
                "Point any OpenAI SDK at `<base>/v1`. GET /v1/keys/me gives the caller's key "
                "(bound to its IP); send it as `Authorization: Bearer <key>`. Every error is "
                "OpenAI's envelope `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` "
                "and every response carries `x-request-id`. Every route is rate limited (429 "
                "with `Retry-After`): the generating POST endpoints per key "
                "(`rate_limit.rpm`), the other authenticated ones per key "
                "(`rate_limit.lookups_per_minute`), the rest per network."),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": t} for t in ("generation", "responses", "anthropic", "models",
                                       "keys", "media", "info", "pages")],
        "paths": _paths(),
        "components": {
            "schemas": {**SCHEMAS, **openapi_dialects.SCHEMAS, **openapi_videos.SCHEMAS},
            "headers": HEADERS,
            "responses": {f"E{s}": error_response(s) for s in ERRORS},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A key from GET /v1/keys/me (`api-` + 16 characters), or the "
                               "operator's master key."},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                              "description": "The same key, as Anthropic's clients send it "
                                             "(the Messages endpoints)."}},
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as served: built and encoded once per process."""
    return orjson.dumps(_build())


def document() -> dict:
    """A fresh copy of the OpenAPI document (callers may change it)."""
    return orjson.loads(document_bytes())
