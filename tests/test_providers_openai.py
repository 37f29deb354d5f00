"""`kind: openai` as a unit (apiarium/providers/openai.py): the body sent upstream (``_payload``:
the client's bytes as they are, or only ``model`` rewritten), the alias put back into answers
and into every stream frame, the relay's end conditions, and images.  Answers are checked
with the openai SDK's ChatCompletion / ChatCompletionChunk; the upstream is a small aiohttp
server on loopback."""
from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apiarium import sse
from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.errors import ApiError, NoOutput, RateLimited, UpstreamError
from apiarium.generation import ImageRequest
from apiarium.providers.openai import IMAGE_SIZES, OpenAIProvider
from tests.fakes.base import loopback

KEY = "sk-test-0123456789abcdef"
ALIAS, UPSTREAM = "gpt-renamed", "gpt-upstream-id"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


# ---------------------------------------------------------------------------- the upstream

class Upstream:
    """An HTTP server on loopback: ``script(request)`` gives each answer; every request is
    recorded as (method, path, headers, raw body)."""

    def __init__(self, script: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs,
                          {k.lower(): v for k, v in request.headers.items()},
                          await request.read()))
        return await self.script(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        async with loopback(self._handle) as self.url:
            yield self


def json_reply(obj: Any):
    async def reply(request: web.Request) -> web.Response:
        return web.json_response(obj)
    return reply


def raw_events(*events: bytes):
    """An event stream of these raw events, each followed by a blank line."""
    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(event + b"\n\n")
        return resp
    return reply


def run(script, test: Callable[[OpenAIProvider, Upstream], Awaitable[Any]]):
    async def main() -> Any:
        async with Upstream(script).running() as up, aiohttp.ClientSession() as session:
            spec = ProviderSpec(name="up", kind="openai", base_url=f"{up.url}/v1", api_key=KEY,
                                timeout_s=5)
            return await test(OpenAIProvider(spec, session), up)
    return asyncio.run(main())


def model(alias: str = ALIAS, upstream: str = UPSTREAM, kind: str = "chat") -> ModelSpec:
    return ModelSpec(alias=alias, upstream=upstream, type=kind, provider=ProviderSpec(
        name="up", kind="openai", base_url="", api_key=KEY))


def provider() -> OpenAIProvider:
    """A provider whose session is never used (for ``_payload``)."""
    return OpenAIProvider(ProviderSpec(name="up", kind="openai", base_url="http://x",
                                       api_key=KEY), session=None)  # type: ignore[arg-type]


def upstream_answer(model_id: str = UPSTREAM) -> dict:
    """A chat.completion as an OpenAI upstream answers (wire-formats §1.3)."""
    return {"id": "chatcmpl-up-1", "object": "chat.completion", "created": 1767225600,
            "model": model_id, "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi there.",
                                     "refusal": None}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}


def frame(model_id: str, delta: dict, finish=None, usage="absent", choices=True) -> bytes:
    obj: dict[str, Any] = {"id": "chatcmpl-gw-9", "object": "chat.completion.chunk",
                           "created": 1767225600, "model": model_id,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}] if choices else []}
    if usage != "absent":
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj)


def reference_stream(model_id: str) -> list[bytes]:
    """The stream of wire-formats §1.4 (with include_usage), event by event."""
    return [frame(model_id, {"role": "assistant", "content": ""}, usage=None),
            frame(model_id, {"content": "Hi"}, usage=None),
            frame(model_id, {}, "stop", usage=None),
            frame(model_id, {}, usage={"prompt_tokens": 9, "completion_tokens": 1,
                                       "total_tokens": 10}, choices=False),
            b"data: [DONE]"]


def relay(events: list[bytes], alias: str = ALIAS, upstream: str = UPSTREAM,
          body: dict | None = None, raw: bytes | None = None):
    """(frames the client gets, the error that ended the stream or None, what upstream saw)."""
    body = body or {"model": alias, "stream": True, "messages": [{"role": "user", "content": "x"}]}

    async def test(p: OpenAIProvider, up: Upstream):
        got, error = [], None
        try:
            async for f in p.chat_stream(model(alias, upstream), body, raw):
                got.append(f)
        except ApiError as exc:
            error = exc
        return got, error, up.seen
    return run(raw_events(*events), test)


# ---------------------------------------------------------------------------- _payload

def test_the_clients_bytes_go_upstream_untouched_when_the_alias_is_the_upstream_id():
    raw = b'{ "messages":[{"role":"user","content":"x"}],  "model":"gpt-5" }'
    body = orjson.loads(raw)
    assert provider()._payload(model("gpt-5", "gpt-5"), body, raw) is raw


def test_only_the_model_is_rewritten_for_a_renamed_alias():
    body = {"model": ALIAS, "messages": [{"role": "user", "content": "x"}], "temperature": 0.2,
            "stream": True, "stream_options": {"include_usage": True}}
    raw = orjson.dumps(body)
    sent = orjson.loads(provider()._payload(model(), body, raw))
    assert sent == {**body, "model": UPSTREAM}
    assert body["model"] == ALIAS                    # the caller's dict is left as it was


def test_a_body_without_its_bytes_is_encoded():
    body = {"model": "gpt-5", "messages": []}
    assert orjson.loads(provider()._payload(model("gpt-5", "gpt-5"), body, None)) == body


# ---------------------------------------------------------------------------- answers

def test_an_answer_carries_the_alias_and_the_rest_as_the_upstream_sent_it():
    async def test(p: OpenAIProvider, up: Upstream):
        body = {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}]}
        return await p.chat(model(), body, orjson.dumps(body)), up.seen
    out, seen = run(json_reply(upstream_answer()), test)
    ChatCompletion.model_validate(out)
    assert out == {**upstream_answer(), "model": ALIAS}
    ((method, path, headers, sent),) = seen
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert orjson.loads(sent)["model"] == UPSTREAM


def test_a_passthrough_answer_sends_the_exact_bytes():
    raw = b'{"model":"gpt-5","messages":[{"role":"user","content":"caf\\u00e9"}],"x_extra":1}'

    async def test(p: OpenAIProvider, up: Upstream):
        return await p.chat(model("gpt-5", "gpt-5"), orjson.loads(raw), raw), up.seen
    out, seen = run(json_reply(upstream_answer("gpt-5-2026-08-07")), test)
    assert seen[0][3] == raw
    assert out["model"] == "gpt-5"                   # the alias, not the dated snapshot


def test_an_answer_without_choices_is_502():
    async def test(p: OpenAIProvider, up: Upstream):
        return await p.chat(model(), {"model": ALIAS, "messages": []}, None)
    with pytest.raises(UpstreamError) as exc:
        run(json_reply({"object": "list", "data": []}), test)
    assert exc.value.status == 502 and "`choices`" in exc.value.message


# ---------------------------------------------------------------------------- streams

def test_a_renamed_stream_shows_the_alias_in_every_frame():
    frames, error, seen = relay(reference_stream(UPSTREAM))
    assert error is None
    assert frames[-1] == sse.DONE
    expected = [e.replace(UPSTREAM.encode(), ALIAS.encode()) + b"\n\n"
                for e in reference_stream(UPSTREAM)]
    assert frames == expected                         # otherwise byte for byte
    for f in frames[:-1]:
        chunk = ChatCompletionChunk.model_validate(orjson.loads(sse.parse(f)[1]))
        assert chunk.model == ALIAS
    assert orjson.loads(seen[0][3])["model"] == UPSTREAM


def test_a_stream_under_its_own_name_is_relayed_byte_for_byte():
    events = reference_stream("gpt-5")
    frames, error, _ = relay(events, alias="gpt-5", upstream="gpt-5")
    assert error is None and frames == [e + b"\n\n" for e in events]


def test_a_frame_with_other_spacing_is_renamed_through_a_parse():
    spaced = (b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, '
              b'"model": "' + UPSTREAM.encode() + b'", "choices": [{"index": 0, '
              b'"delta": {"content": "a"}, "finish_reason": null}]}')
    frames, error, _ = relay([spaced, b"data: [DONE]"])
    assert error is None
    obj = orjson.loads(sse.parse(frames[0])[1])
    assert obj["model"] == ALIAS and obj["choices"][0]["delta"] == {"content": "a"}
    ChatCompletionChunk.model_validate(obj)
    assert frames[0].endswith(b"}\n\n") and not frames[0].endswith(b"\n\n\n")


def test_text_that_quotes_the_upstream_id_is_not_rewritten():
    text = f'I am "model":"{UPSTREAM}", they say.'
    frames, _, _ = relay([frame(UPSTREAM, {"content": text}), b"data: [DONE]"])
    obj = orjson.loads(sse.parse(frames[0])[1])
    assert obj["model"] == ALIAS and obj["choices"][0]["delta"]["content"] == text


def test_comments_and_frames_without_a_model_pass_untouched():
    events = [b": keep-alive", frame(UPSTREAM, {"content": "a"}), b"data: [DONE]"]
    frames, error, _ = relay(events)
    assert error is None and frames[0] == b": keep-alive\n\n"


def test_a_stream_that_ends_without_done_is_an_error_after_its_frames():
    frames, error, _ = relay(reference_stream(UPSTREAM)[:2])
    assert len(frames) == 2
    assert isinstance(error, UpstreamError) and "before it was complete" in error.message


@pytest.mark.parametrize("error, cls, status", [
    ({"message": "Upstream is overloaded, retry later.", "type": "server_error",
      "param": None, "code": "overloaded"}, UpstreamError, 502),
    ({"message": "Rate limit reached.", "type": "requests", "param": None,
      "code": "rate_limit_exceeded"}, RateLimited, 429)])
def test_an_error_frame_ends_the_stream_with_that_error(error, cls, status):
    """A ``data: {"error": …}`` frame mid-stream (wire-formats §1.4) is the upstream failing:
    the frames before it have gone out, the stream ends with the error it stands for, in the
    gateway's own words (an upstream's 5xx and 429 texts may hold org ids: issue 13)."""
    err = b"data: " + orjson.dumps({"error": error})
    frames, raised, _ = relay([frame(UPSTREAM, {"content": "a"}), err,
                               frame(UPSTREAM, {"content": "never"}), b"data: [DONE]"])
    assert len(frames) == 1 and b'"content":"a"' in frames[0]
    assert isinstance(raised, cls) and raised.status == status
    assert error["message"].rstrip(".") not in raised.message
    assert "upstream provider `" in raised.message


# ---------------------------------------------------------------------------- images

def images(req: ImageRequest, reply: dict, alias: str = "gpt-image-1"):
    async def script(request: web.Request) -> web.Response:
        if request.path.startswith("/cdn/"):
            return web.Response(body=PNG, content_type="image/png")
        return web.json_response(reply)

    async def test(p: OpenAIProvider, up: Upstream):
        for item in reply.get("data", []):
            if item.get("url") == "CDN":
                item["url"] = f"{up.url}/cdn/img-1.png"
        return await p.image(model(alias, "gpt-image-1", "image"), req), up.seen
    return run(script, test)


@pytest.mark.parametrize("size, sent", [
    ("auto", "auto"), ("1024x1024", "1024x1024"), ("1536x1024", "1536x1024"),
    ("1024x1536", "1024x1536"), ("1792x1024", "1536x1024"), ("1024x1792", "1024x1536"),
    ("512x512", "1024x1024"), ("256x256", "1024x1024"), ("1:1", "1024x1024"),
    ("16:9", "1536x1024"), ("4:3", "1536x1024"), ("9:16", "1024x1536"),
    ("3:4", "1024x1536")])
def test_image_sizes_are_ones_gpt_image_models_take(size, sent):
    # gpt-image sizes (wire-formats §3.2): auto, 1024x1024, 1536x1024, 1024x1536
    assert sent == "auto" or sent in IMAGE_SIZES
    reply = {"created": 1767225600, "data": [{"b64_json": base64.b64encode(PNG).decode()}],
             "output_format": "png"}
    media, seen = images(ImageRequest("a fox", n=2, size=size), reply)
    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/v1/images/generations")
    assert headers["authorization"] == f"Bearer {KEY}"
    assert orjson.loads(body) == {"model": "gpt-image-1", "prompt": "a fox", "n": 2,
                                  "size": sent}
    assert [(m.data, m.mime, m.revised_prompt) for m in media] == [(PNG, "image/png", "a fox")]


def test_the_pro_variant_asks_for_high_quality_and_jpeg_is_image_jpeg():
    reply = {"created": 1, "output_format": "jpeg", "data": [
        {"b64_json": base64.b64encode(b"jpeg-1").decode(), "revised_prompt": "a red fox"},
        {"b64_json": base64.b64encode(b"jpeg-2").decode()}]}
    media, seen = images(ImageRequest("a fox", n=2, high_quality=True), reply)
    assert orjson.loads(seen[0][3])["quality"] == "high"
    assert [(m.data, m.mime, m.revised_prompt) for m in media] == [
        (b"jpeg-1", "image/jpeg", "a red fox"), (b"jpeg-2", "image/jpeg", "a fox")]


def test_an_image_url_answer_is_downloaded_without_the_providers_key():
    media, seen = images(ImageRequest("a fox"), {"created": 1, "data": [{"url": "CDN"}]})
    assert [(m.data, m.mime) for m in media] == [(PNG, "image/png")]
    (download,) = [s for s in seen if s[1].startswith("/cdn/")]
    assert download[0] == "GET" and "authorization" not in download[2]


def test_an_answer_without_images_is_the_requests_own_400():
    with pytest.raises(NoOutput) as exc:
        images(ImageRequest("a fox"), {"created": 1, "data": []})
    assert (exc.value.status, exc.value.code, exc.value.param) == (
        400, "upstream_no_output", "prompt")
