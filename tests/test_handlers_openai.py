"""The OpenAI-dialect handlers in-process (pytest-tornado: the real application on a loopback
socket in the test's loop, the fake OpenAI upstream on another): handlers/chat.py (chat and
legacy completions, media models on chat), handlers/media.py (images, /media files),
handlers/info.py (health, models, keys/me, the JSON 404 and 405), handlers/ops.py
(/metrics) and handlers/openapi.py."""
from __future__ import annotations

import base64
import json

import pytest
import tornado.httputil
import tornado.web

from apiarium.app import routes
from apiarium.errors import (
    ApiError,
    BodyTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    QuotaExceeded,
)
from apiarium.handlers import chat, info, media, openapi, ops
from apiarium.handlers.base import ApiHandler, BaseHandler, as_api_error
from apiarium.live import Services
from apiarium.metrics import CONTENT_TYPE
from tests.inprocess import MASTER, InProcess, write_config

LIMIT = 50.0
MSG = [{"role": "user", "content": "tell me about bees"}]


def models(fake) -> dict:
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": fake.base_url, "api_key": fake.api_key,
                   "timeout_s": 5},
            "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "k",
                     "connect_timeout_s": 2},
        },
        "models": {
            "gpt-5": {"provider": "up", "max_output_tokens": 1000},
            "doomed": {"provider": "dead", "fallbacks": ["spare"]},
            "spare": {"provider": "up", "upstream": "spare-id"},
            "gpt-image-1": {"provider": "up", "type": "image"},
        },
    }


@pytest.fixture
def app(io_loop, tmp_path, fake_openai):
    env = InProcess(write_config(tmp_path, models(fake_openai),
                                 rate_limit={"daily_credits": LIMIT}))
    io_loop.run_sync(env.open)
    yield env.app()
    io_loop.run_sync(env.close)


def services(app) -> Services:
    return app.settings["services"]


async def key_of(http_client, base_url) -> str:
    return json.loads((await http_client.fetch(base_url + "/v1/keys/me")).body)["key"]


async def post(http_client, base_url, path: str, body, key: str | None = MASTER, **kw):
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await http_client.fetch(base_url + path, method="POST", body=data,
                                   headers=headers, raise_error=False, **kw)


async def get(http_client, base_url, path: str, key: str | None = MASTER, **kw):
    headers = dict(kw.pop("headers", {}))
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return await http_client.fetch(base_url + path, headers=headers, raise_error=False, **kw)


def error_of(resp) -> dict:
    body = json.loads(resp.body)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def frames(resp) -> list[bytes]:
    return [f for f in resp.body.split(b"\n\n") if f]


def data_frames(resp) -> list[dict]:
    out = []
    for f in frames(resp):
        assert f.startswith(b"data: "), f
        if f != b"data: [DONE]":
            out.append(json.loads(f[len(b"data: "):]))
    return out


# ---------------------------------------------------------------------- handlers/chat.py

@pytest.mark.gen_test(timeout=20)
async def test_chat_answers_and_names_the_model_that_served(app, http_client, base_url,
                                                             fake_openai):
    resp = await post(http_client, base_url, "/v1/chat/completions",
                      {"model": "doomed", "messages": MSG})
    assert resp.code == 200, resp.body
    assert resp.headers["x-apiarium-model"] == "spare"        # the fallback served
    assert resp.headers["Content-Type"] == "application/json"
    answer = json.loads(resp.body)
    assert answer["model"] == "doomed"                         # under the alias asked for
    assert answer["choices"][0]["message"]["content"] == f"echo: {MSG[0]['content']}"
    assert fake_openai.last().json["model"] == "spare-id"


@pytest.mark.gen_test(timeout=20)
async def test_chat_stream_is_sse_ending_with_done(app, http_client, base_url, fake_openai):
    key = await key_of(http_client, base_url)
    resp = await post(http_client, base_url, "/v1/chat/completions",
                      {"model": "gpt-5", "messages": MSG, "stream": True}, key=key)
    assert resp.code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["x-apiarium-model"] == "gpt-5"
    assert frames(resp)[-1] == b"data: [DONE]"
    chunks = data_frames(resp)
    assert all(c["choices"] for c in chunks)                   # no usage frame: not asked
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == f"echo: {MSG[0]['content']}"
    assert services(app).usage.spent_today(
        services(app).keys.verify(key).key_hash).requests == 1


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "gpt-5"}, "messages", "missing_messages"),
    ({"model": "gpt-5", "messages": []}, "messages", "invalid_messages"),
    ({"model": "gpt-5", "messages": "hi"}, "messages", "invalid_messages"),
    ({"model": "gpt-5", "messages": [*MSG, {"content": "no role"}]}, "messages[1]",
     "invalid_messages"),
    ({"model": "gpt-5", "messages": MSG, "stream": "yes"}, "stream", "invalid_request"),
    ({"model": "gpt-5", "messages": MSG, "stream_options": "usage"}, "stream_options",
     "invalid_request"),
    ({"messages": MSG}, "model", "invalid_model"),
    ({"model": "gpt-5", "messages": MSG, "max_tokens": 1001}, "max_tokens", "invalid_request"),
    ({"model": "gpt-5", "messages": MSG, "n": 2}, "n", "invalid_request"),
    ("{not json", None, "invalid_json"),
    ("[1, 2]", None, "invalid_json"),
    ("", None, "invalid_json"),
])
@pytest.mark.gen_test(timeout=20)
async def test_chat_bad_requests_are_400_naming_the_field(app, http_client, base_url,
                                                           fake_openai, body, param, code):
    key = await key_of(http_client, base_url)
    resp = await post(http_client, base_url, "/v1/chat/completions", body, key=key)
    assert resp.code == 400, resp.body
    err = error_of(resp)
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    assert fake_openai.requests == []


@pytest.mark.gen_test(timeout=20)
async def test_legacy_completions_answer_and_stream(app, http_client, base_url, fake_openai):
    resp = await post(http_client, base_url, "/v1/completions",
                      {"model": "gpt-5", "prompt": "bees are"})
    answer = json.loads(resp.body)
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "echo: bees are"
    assert fake_openai.last().path == "/v1/chat/completions"      # asked as a chat
    resp = await post(http_client, base_url, "/v1/completions",
                      {"model": "gpt-5", "prompt": "bees are", "stream": True})
    assert frames(resp)[-1] == b"data: [DONE]"
    chunks = data_frames(resp)
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
        "echo: bees are"


@pytest.mark.gen_test(timeout=20)
async def test_an_image_model_on_chat_answers_with_a_hosted_url(app, http_client, base_url,
                                                               fake_openai):
    body = {"model": "gpt-image-1", "messages": [{"role": "user", "content": "a bee"}]}
    resp = await post(http_client, base_url, "/v1/chat/completions", body)
    assert resp.code == 200, resp.body
    url = json.loads(resp.body)["choices"][0]["message"]["content"]
    assert url.startswith(base_url + "/media/")
    image = await http_client.fetch(url)
    assert image.body == fake_openai.image_bytes
    assert image.headers["Content-Type"] == "image/png"
    resp = await post(http_client, base_url, "/v1/chat/completions", {**body, "stream": True})
    chunks = data_frames(resp)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed.startswith(base_url + "/media/") and streamed != url


# ---------------------------------------------------------------------- handlers/media.py

@pytest.mark.gen_test(timeout=20)
async def test_images_as_base64_and_as_urls(app, http_client, base_url, fake_openai):
    key = await key_of(http_client, base_url)
    resp = await post(http_client, base_url, "/v1/images/generations",
                      {"model": "gpt-image-1", "prompt": "a bee", "n": 2,
                       "response_format": "b64_json"}, key=key)
    assert resp.code == 200, resp.body
    assert resp.headers["x-apiarium-model"] == "gpt-image-1"
    data = json.loads(resp.body)["data"]
    assert [base64.b64decode(d["b64_json"]) for d in data] == [fake_openai.image_bytes] * 2
    resp = await post(http_client, base_url, "/v1/images/generations",
                      {"model": "gpt-image-1", "prompt": "a bee"}, key=key)
    [item] = json.loads(resp.body)["data"]
    assert (await http_client.fetch(item["url"])).body == fake_openai.image_bytes
    resp = await post(http_client, base_url, "/v1/images/generations",
                      {"model": "gpt-image-1", "prompt": "a bee",
                       "n": services(app).settings.max_images + 1}, key=key)
    assert resp.code == 400 and error_of(resp)["param"] == "n"
    resp = await post(http_client, base_url, "/v1/images/generations",
                      {"model": "gpt-image-1"}, key=key)
    assert resp.code == 400 and error_of(resp)["code"] == "missing_prompt"


@pytest.mark.gen_test(timeout=20)
async def test_videos_check_their_fields_before_anything_is_sent(app, http_client, base_url,
                                                                 fake_openai):
    resp = await post(http_client, base_url, "/v1/videos/generations",
                      {"model": "gpt-image-1", "prompt": "a bee"})
    assert resp.code == 400 and error_of(resp)["code"] == "model_type_mismatch"
    assert fake_openai.requests == []


@pytest.mark.gen_test(timeout=20)
async def test_media_files_ranges_and_unknown_names(app, http_client, base_url, fake_openai):
    resp = await post(http_client, base_url, "/v1/images/generations",
                      {"model": "gpt-image-1", "prompt": "a bee"})
    url = json.loads(resp.body)["data"][0]["url"]
    png = fake_openai.image_bytes
    whole = await http_client.fetch(url)
    assert whole.headers["Cache-Control"] == "private, max-age=3600, immutable"
    assert whole.headers["X-Content-Type-Options"] == "nosniff"
    assert whole.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    part = await http_client.fetch(url, headers={"Range": "bytes=0-7"})
    assert part.code == 206 and part.body == png[:8]
    assert part.headers["Content-Range"] == f"bytes 0-7/{len(png)}"
    ignored = await http_client.fetch(url, headers={"Range": "bytes=9-3"})
    assert ignored.code == 200 and ignored.body == png          # an invalid Range: ignored
    outside = await http_client.fetch(url, headers={"Range": f"bytes={len(png) + 10}-"},
                                      raise_error=False)
    assert outside.code == 416 and error_of(outside)["code"] == "range_not_satisfiable"
    same = await http_client.fetch(url, headers={"If-None-Match": whole.headers["Etag"]},
                                   raise_error=False)
    assert same.code == 304
    missing = await get(http_client, base_url, "/media/nope.png", key=None)
    assert missing.code == 404 and error_of(missing)["code"] == "media_not_found"


# ---------------------------------------------------------------------- handlers/info.py

@pytest.mark.gen_test(timeout=20)
async def test_health_models_and_one_model(app, http_client, base_url):
    health = json.loads((await get(http_client, base_url, "/health", key=None)).body)
    assert health["status"] == "ok" and health["models"] == len(services(app).catalog)
    resp = await get(http_client, base_url, "/v1/models")
    assert [m["id"] for m in json.loads(resp.body)["data"]] == list(models_of(app))
    one = json.loads((await get(http_client, base_url, "/v1/models/spare")).body)
    assert one == {"id": "spare", "object": "model", "created": one["created"],
                   "owned_by": "openai", "type": "chat", "status": "ready",
                   "status_detail": None, "available_at": None}
    missing = await get(http_client, base_url, "/v1/models/no-such-model")
    assert missing.code == 404 and error_of(missing)["code"] == "model_not_found"
    anonymous = await get(http_client, base_url, "/v1/models", key=None)
    assert anonymous.code == 401 and error_of(anonymous)["code"] == "missing_api_key"


def models_of(app) -> list[str]:
    return list(services(app).catalog.models)


@pytest.mark.gen_test(timeout=20)
async def test_keys_me_shows_todays_usage_and_the_credits_left(app, http_client, base_url):
    key = await key_of(http_client, base_url)
    await post(http_client, base_url, "/v1/chat/completions",
               {"model": "gpt-5", "messages": MSG}, key=key)
    me = await get(http_client, base_url, "/v1/keys/me", key=None)
    assert me.headers["Cache-Control"] == "no-store"
    body = json.loads(me.body)
    assert body["key"] == key and body["ip"] == "127.0.0.1"
    assert body["usage"]["requests"] == 1 and body["usage"]["credits"] > 0
    assert body["credits"] == {"daily_limit": LIMIT,
                               "remaining": round(LIMIT - body["usage"]["credits"], 4)}


@pytest.mark.gen_test(timeout=20)
async def test_unknown_paths_are_a_json_404_and_wrong_methods_a_405_with_allow(
        app, http_client, base_url):
    resp = await get(http_client, base_url, "/v2/whatever", key=None)
    err = error_of(resp)
    assert resp.code == 404 and err["code"] == "not_found" and "/v2/whatever" in err["message"]
    resp = await get(http_client, base_url, "/v1/chat/completions")
    assert resp.code == 405 and resp.headers["Allow"] == "POST"
    assert error_of(resp)["code"] == "method_not_allowed"
    resp = await http_client.fetch(base_url + "/health", method="DELETE", raise_error=False)
    assert resp.code == 405 and resp.headers["Allow"] == "GET"
    assert resp.headers["x-request-id"].startswith("req_")


# ---------------------------------------------------------------------- ops.py, openapi.py

@pytest.mark.gen_test(timeout=20)
async def test_metrics_count_the_requests_answered(app, http_client, base_url):
    key = await key_of(http_client, base_url)
    for _ in range(2):
        await post(http_client, base_url, "/v1/chat/completions",
                   {"model": "gpt-5", "messages": MSG}, key=key)
    await post(http_client, base_url, "/v1/chat/completions", {"model": "gpt-5"}, key=key)
    resp = await get(http_client, base_url, "/metrics", key=None)
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    text = resp.body.decode()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    chat = 'apiarium_requests_total{dialect="openai",endpoint="chat",model="gpt-5",status='
    assert lines[chat + '"200"}'] == 2
    assert lines[chat + '"400"}'] == 1
    assert lines["apiarium_keys"] == len(services(app).keys) == 1
    assert lines["apiarium_active_streams"] == 0
    assert any(k.startswith('apiarium_upstream_latency_seconds_count{provider="up"}')
               for k in lines)


@pytest.mark.gen_test(timeout=20)
async def test_openapi_document_is_served_as_cacheable_json(app, http_client, base_url):
    resp = await get(http_client, base_url, "/openapi.json", key=None)
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    doc = json.loads(resp.body)
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/models", "/metrics"} <= set(doc["paths"])


def test_each_handler_module_is_the_one_routed():
    """The handler classes exercised above are the ones these modules export, and every
    route answers its errors through handlers/base.py (the JSON envelope, never tornado's
    HTML); every /v1 path but the key issuer authenticates."""
    routed = {r[0]: r[1] for r in routes()}
    assert {chat.ChatHandler, chat.CompletionsHandler, media.ImagesHandler,
            media.VideosHandler, media.MediaFileHandler, info.HealthHandler,
            info.ModelsHandler, info.ModelHandler, info.KeysMeHandler,
            ops.MetricsHandler, openapi.OpenApiHandler} <= set(routed.values())
    assert all(issubclass(h, BaseHandler) for h in routed.values())
    unauthenticated = {p for p, h in routed.items()
                       if p.startswith("/v1/") and not issubclass(h, ApiHandler)}
    assert unauthenticated == {"/v1/keys/me"}


@pytest.mark.parametrize(("exc", "status", "cls", "code"), [
    (None, 404, NotFound, "not_found"),
    (None, 405, MethodNotAllowed, "method_not_allowed"),
    (None, 413, BodyTooLarge, "body_too_large"),
    (tornado.web.HTTPError(400, "Missing argument x"), 400, InvalidRequest, "invalid_request"),
    (None, 431, InvalidRequest, "invalid_request"),
    (RuntimeError("boom"), 500, ApiError, "internal_error"),
])
def test_errors_that_are_not_api_errors_become_envelopes(exc, status, cls, code):
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("PUT", "/v9/thing", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "gw.example"}))
    err = as_api_error(exc, status, request)
    assert type(err) is cls and err.status == status and err.code == code
    assert "Traceback" not in err.message and "boom" not in err.message
    if status in (404, 405):
        assert "/v9/thing" in err.message
    if isinstance(exc, tornado.web.HTTPError):
        assert "Missing argument x" in err.message
    same = QuotaExceeded("out")
    assert as_api_error(same, 500, request) is same          # an ApiError stays itself
