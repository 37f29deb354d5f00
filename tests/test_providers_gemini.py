"""`kind: gemini` as units: the OpenAI chat → ``generateContent`` body (gemini_request.py), the
answer and stream translation (gemini.py), and images and Veo videos (gemini_media.py), each
against wire-formats §5-6.

Request bodies are checked with the google-genai SDK's own types (which take the REST
camelCase names and forbid unknown fields); answers with the openai SDK's ChatCompletion and
ChatCompletionChunk.  The upstream is a small aiohttp server on loopback, answering with
bodies that google-genai's GenerateContentResponse accepts."""
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
from google.genai import types as g
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apiarium import sse
from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.errors import (
    ApiError,
    InvalidRequest,
    NoOutput,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from apiarium.generation import ImageRequest, VideoRequest
from apiarium.providers import gemini_media
from apiarium.providers.gemini import GeminiProvider
from apiarium.providers.gemini_request import to_gemini
from tests.fakes.base import loopback

KEY = "AIza-test-key-0123456789"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
                       "hQGAhKmMIQAAAABJRU5ErkJggg==")
PNG_B64 = base64.b64encode(PNG).decode()
MP4 = b"\x00\x00\x00\x18ftypisom" + bytes(range(64))
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOP_LEVEL = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
             "safetySettings", "cachedContent", "serviceTier"}        # wire-formats §5.2


# ---------------------------------------------------------------------------- checks

def check_request(body: dict) -> dict:
    """A generateContent body, checked field by field with google-genai's types."""
    assert set(body) <= TOP_LEVEL, set(body) - TOP_LEVEL
    assert body["contents"], "contents is required"
    for content in body["contents"]:
        assert g.Content.model_validate(content).role in ("user", "model")
    if "systemInstruction" in body:
        g.Content.model_validate(body["systemInstruction"])
    for tool in body.get("tools", []):
        g.Tool.model_validate(tool)
    if "toolConfig" in body:
        g.ToolConfig.model_validate(body["toolConfig"])
    if "generationConfig" in body:
        config = dict(body["generationConfig"])
        image = config.pop("imageConfig", None)        # in the REST GenerationConfig, not the
        if image is not None:                          # SDK's class of that name
            g.ImageConfig.model_validate(image)
        g.GenerationConfig.model_validate(config)
    return body


def answer(parts: list[dict] | None = None, finish: str | None = "STOP", usage: dict | None = None,
           **extra: Any) -> dict:
    """A GenerateContentResponse with one candidate (checked with google-genai's type)."""
    out: dict[str, Any] = {"modelVersion": "gemini-2.5-flash", "responseId": "xYz123", **extra}
    if parts is not None:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        out["candidates"] = [cand]
    if usage is not None:
        out["usageMetadata"] = usage
    g.GenerateContentResponse.model_validate(out)
    return out


def completion(out: dict) -> ChatCompletion:
    parsed = ChatCompletion.model_validate(out)
    assert out["object"] == "chat.completion" and out["model"] == "gem"
    return parsed


def chunks(frames: list[bytes]) -> list[dict]:
    """The JSON chunks of a translated stream, each checked; ``[DONE]`` must end it."""
    assert frames[-1] == sse.DONE
    out = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        obj = orjson.loads(sse.parse(frame)[1])
        ChatCompletionChunk.model_validate(obj)
        out.append(obj)
    assert len({(c["id"], c["created"], c["model"]) for c in out}) == 1      # repeated as-is
    return out


def refused(call: Callable[[], Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        call()
    assert exc.value.status == 400
    return exc.value


# ---------------------------------------------------------------------------- the upstream

class Upstream:
    """An HTTP server on loopback: ``script(request, body)`` gives each answer; every request
    is recorded as (method, path with query, headers, JSON body or None)."""

    def __init__(self, script: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]):
        self.script = script
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.seen.append((request.method, request.path_qs,
                          {k.lower(): v for k, v in request.headers.items()}, body))
        return await self.script(request, body)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        async with loopback(self._handle) as self.url:
            yield self


def json_reply(obj: Any, status: int = 200):
    async def reply(request: web.Request, body: Any) -> web.Response:
        return web.json_response(obj, status=status)
    return reply


def sse_reply(*objs: Any):
    """An event stream of ``data:`` events (no [DONE]: Gemini ends by closing)."""
    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for obj in objs:
            await resp.write(b"data: " + orjson.dumps(obj) + b"\r\n\r\n")
        return resp
    return reply


def run(script, test: Callable[[GeminiProvider, Upstream], Awaitable[Any]], **spec: Any):
    async def main() -> Any:
        async with Upstream(script).running() as up, aiohttp.ClientSession() as session:
            settings = {"api_key": KEY, "timeout_s": 5.0, **spec}
            provider = GeminiProvider(ProviderSpec(name="google", kind="gemini",
                                                   base_url=up.url, **settings), session)
            return await test(provider, up)
    return asyncio.run(main())


def model(upstream: str = "gemini-2.5-flash", kind: str = "chat") -> ModelSpec:
    return ModelSpec(alias="gem", provider=ProviderSpec(name="google", kind="gemini",
                                                        base_url="", api_key=KEY),
                     upstream=upstream, type=kind)


def chat(reply_obj: dict, body: dict | None = None) -> tuple[dict, list]:
    body = body or {"model": "gem", "messages": [{"role": "user", "content": "Hi"}]}

    async def test(p: GeminiProvider, up: Upstream):
        return await p.chat(model(), body, None), up.seen
    return run(json_reply(reply_obj), test)


def stream(*events: Any, body: dict | None = None) -> tuple[list[bytes], list]:
    body = body or {"model": "gem", "stream": True,
                    "messages": [{"role": "user", "content": "Hi"}]}

    async def test(p: GeminiProvider, up: Upstream):
        frames = [f async for f in p.chat_stream(model(), body, None)]
        return frames, up.seen
    return run(sse_reply(*events), test)


# ============================================================================ the request

def test_the_reference_request_translates():
    """The composed example of wire-formats §5.2, from the OpenAI request that means it."""
    body = {"model": "gem", "messages": [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe this image."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]},
        {"role": "assistant", "content": "A red bicycle."},
        {"role": "user", "content": "What colour is the seat?"}],
        "tools": [WEATHER], "tool_choice": "auto",
        "temperature": 0.3, "top_p": 0.95, "max_tokens": 300, "stop": ["END"], "n": 1}
    out = check_request(to_gemini(body))
    assert out == {
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Describe this image."},
                                       {"inlineData": {"mimeType": "image/png",
                                                       "data": PNG_B64}}]},
            {"role": "model", "parts": [{"text": "A red bicycle."}]},
            {"role": "user", "parts": [{"text": "What colour is the seat?"}]}],
        "tools": [{"functionDeclarations": [{
            "name": "get_weather", "description": "Weather in a city",
            "parametersJsonSchema": WEATHER["function"]["parameters"]}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {"temperature": 0.3, "topP": 0.95, "maxOutputTokens": 300,
                             "stopSequences": ["END"], "candidateCount": 1}}


def test_system_and_developer_turns_all_go_to_the_system_instruction():
    out = check_request(to_gemini({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]}]}))
    assert out["systemInstruction"] == {"parts": [{"text": "Be terse."},
                                                  {"text": "Use metric units."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert "generationConfig" not in out and "tools" not in out


def test_a_system_only_conversation_is_asked_as_the_user():
    out = check_request(to_gemini({"messages": [{"role": "system", "content": "Say hello."}]}))
    assert out == {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}


def test_tool_calls_and_results_round_trip():
    """Assistant tool_calls → model functionCall parts (args parsed); tool messages → one user
    turn of functionResponse parts, the name recovered from the call's id, a result that is
    not a JSON object wrapped as {"result": ...} (wire-formats §5.2)."""
    body = {"messages": [
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_01", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            {"id": "call_02", "type": "function",
             "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_01", "content": "{\"temp_c\": 21}"},
        {"role": "tool", "tool_call_id": "call_02", "content": "Sunny, 21 C"},
        {"role": "assistant", "content": "Oslo: 21 C."},
        {"role": "user", "content": "Thanks"}], "tools": [WEATHER]}
    out = check_request(to_gemini(body))
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Oslo and Bergen?"}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_time",
                                  "response": {"result": "Sunny, 21 C"}}}]},
        {"role": "model", "parts": [{"text": "Oslo: 21 C."}]},
        {"role": "user", "parts": [{"text": "Thanks"}]}]


@pytest.mark.parametrize("content, response", [
    ("42", {"result": 42}), ("[1, 2]", {"result": [1, 2]}), ("", {"result": ""}),
    ([{"type": "text", "text": "from "}, {"type": "text", "text": "parts"}],
     {"result": "from parts"})])
def test_tool_results_that_are_not_objects_are_wrapped(content, response):
    out = check_request(to_gemini({"messages": [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": content}]}))
    assert out["contents"][1] == {"role": "user", "parts": [
        {"functionResponse": {"name": "f", "response": response}}]}


def test_assistant_text_and_calls_share_one_model_turn_and_users_merge():
    out = check_request(to_gemini({"messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}))
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "Let me check."},
                                    {"functionCall": {"name": "f", "args": {}}}]}]


@pytest.mark.parametrize("choice, config", [
    ("none", {"mode": "NONE"}), ("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"mode": "ANY", "allowedFunctionNames": ["get_weather"]})])
def test_tool_choice(choice, config):
    out = check_request(to_gemini({"messages": [{"role": "user", "content": "x"}],
                                   "tools": [WEATHER], "tool_choice": choice}))
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_a_tool_without_parameters_declares_only_its_name():
    out = check_request(to_gemini({"messages": [{"role": "user", "content": "x"}],
                                   "tools": [{"type": "function",
                                              "function": {"name": "now"}}]}))
    assert out["tools"] == [{"functionDeclarations": [{"name": "now"}]}]


def test_generation_config_renames():
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0,
            "max_tokens": 50, "max_completion_tokens": 100, "stop": "END", "seed": 7,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 2}
    assert check_request(to_gemini(body))["generationConfig"] == {
        "temperature": 0, "maxOutputTokens": 100, "stopSequences": ["END"], "seed": 7,
        "presencePenalty": 0.5, "frequencyPenalty": -0.5, "candidateCount": 2}


@pytest.mark.parametrize("fmt, config", [
    ({"type": "json_object"}, {"responseMimeType": "application/json"}),
    ({"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}}}},
     {"responseMimeType": "application/json", "responseJsonSchema": {
         "type": "object", "properties": {"name": {"type": "string"}}}}),
    ({"type": "text"}, None)])
def test_response_format(fmt, config):
    out = check_request(to_gemini({"messages": [{"role": "user", "content": "x"}],
                                   "response_format": fmt}))
    assert out.get("generationConfig") == config


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": ""}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
     "messages[0].content[1].image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "tool", "tool_call_id": "nobody", "content": "x"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
     "tools[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"},
     "tool_choice"),
])
def test_what_gemini_cannot_take_is_400_naming_the_field(body, param):
    assert refused(lambda: to_gemini(body)).param == param


# ============================================================================ answers

def test_a_text_answer():
    """The answer of wire-formats §5.3: thoughts count as completion (reasoning) tokens."""
    out, seen = chat(answer([{"text": "The seat is black."}], usage={
        "promptTokenCount": 270, "candidatesTokenCount": 6, "thoughtsTokenCount": 40,
        "totalTokenCount": 316}, modelVersion="gemini-2.5-flash"))
    parsed = completion(out)
    assert parsed.choices[0].message.content == "The seat is black."
    assert parsed.choices[0].finish_reason == "stop" and parsed.choices[0].index == 0
    assert out["usage"] == {"prompt_tokens": 270, "completion_tokens": 46, "total_tokens": 316,
                            "prompt_tokens_details": {"cached_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 40}}
    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/v1beta/models/gemini-2.5-flash:generateContent")
    assert headers["x-goog-api-key"] == KEY and "authorization" not in headers
    check_request(body)


def test_usage_counts_tool_prompts_and_cached_tokens():
    out, _ = chat(answer([{"text": "ok"}], usage={
        "promptTokenCount": 100, "toolUsePromptTokenCount": 20, "candidatesTokenCount": 5,
        "cachedContentTokenCount": 64, "totalTokenCount": 125}))
    # totalTokenCount = prompt + candidates + toolUsePrompt + thoughts (wire-formats §5.3)
    assert out["usage"]["total_tokens"] == 125
    assert (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]) == (120, 5)
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}


def test_thought_parts_are_not_content():
    out, _ = chat(answer([{"text": "Let me think about seats...", "thought": True},
                          {"text": "Black."}]))
    assert completion(out).choices[0].message.content == "Black."


def test_function_calls_become_tool_calls_with_minted_ids():
    out, _ = chat(answer([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                          {"functionCall": {"name": "get_weather",
                                            "args": {"city": "Bergen"}}}], "STOP"))
    choice = completion(out).choices[0]
    assert choice.finish_reason == "tool_calls"       # STOP with calls (wire-formats §5.5)
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Oslo"}),
        ("function", "get_weather", {"city": "Bergen"})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


def test_text_next_to_a_call_is_kept():
    out, _ = chat(answer([{"text": "Checking."},
                          {"functionCall": {"name": "f", "args": {}}}]))
    msg = completion(out).choices[0].message
    assert msg.content == "Checking." and msg.tool_calls[0].function.arguments == "{}"


@pytest.mark.parametrize("finish, want", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"),
    ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
    ("SPII", "content_filter"), ("IMAGE_SAFETY", "content_filter"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop"), ("LANGUAGE", "stop"),
    ("FINISH_REASON_UNSPECIFIED", "stop"), (None, "stop")])
def test_finish_reasons(finish, want):
    out, _ = chat(answer([{"text": "x"}], finish))
    assert completion(out).choices[0].finish_reason == want


def test_a_blocked_prompt_is_an_empty_content_filter_answer():
    out, _ = chat(answer(None, promptFeedback={"blockReason": "SAFETY"},
                         usage={"promptTokenCount": 9, "totalTokenCount": 9}))
    choice = completion(out).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("", "content_filter")
    assert out["usage"]["prompt_tokens"] == 9 and out["usage"]["completion_tokens"] == 0


def test_an_answer_without_candidates_is_502():
    with pytest.raises(UpstreamError) as exc:
        chat(answer(None))
    assert exc.value.status == 502 and "without candidates" in exc.value.message


def test_several_candidates_are_several_choices():
    two = answer([{"text": "one"}])
    two["candidates"].append({"content": {"role": "model", "parts": [{"text": "two"}]},
                              "finishReason": "MAX_TOKENS", "index": 1})
    out, seen = chat(two, {"model": "gem", "n": 2,
                           "messages": [{"role": "user", "content": "x"}]})
    parsed = completion(out)
    assert [(c.index, c.message.content, c.finish_reason) for c in parsed.choices] == [
        (0, "one", "stop"), (1, "two", "length")]
    assert seen[0][3]["generationConfig"] == {"candidateCount": 2}


# ============================================================================ streams

THE_SEAT = [
    answer([{"text": "The seat"}], None, usage={"promptTokenCount": 270, "totalTokenCount": 270}),
    answer([{"text": " is black."}], "STOP", usage={
        "promptTokenCount": 270, "candidatesTokenCount": 6, "totalTokenCount": 276})]


def test_the_reference_stream_with_usage():
    """The stream of wire-formats §5.4 → OpenAI chunks (§1.4): role, the text pieces as they
    came, the finish chunk, the usage chunk (asked for), [DONE]."""
    frames, seen = stream(*THE_SEAT, body={
        "model": "gem", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "What colour is the seat?"}]})
    got = chunks(frames)
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in got] == [
        {"role": "assistant", "content": ""}, {"content": "The seat"},
        {"content": " is black."}, {}, None]
    assert [c["choices"][0]["finish_reason"] if c["choices"] else None for c in got] == [
        None, None, None, "stop", None]
    assert got[-1]["usage"]["prompt_tokens"] == 270
    assert got[-1]["usage"]["completion_tokens"] == 6
    assert got[-1]["usage"]["total_tokens"] == 276
    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST",
                              "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert headers["x-goog-api-key"] == KEY
    check_request(body)


def test_a_stream_without_include_usage_has_no_usage_chunk():
    got = chunks(stream(*THE_SEAT)[0])
    assert all(c["choices"] for c in got) and "usage" not in got[-1]
    assert got[-1]["choices"][0]["finish_reason"] == "stop"


def test_streamed_function_calls():
    frames, _ = stream(
        answer([{"text": "thinking", "thought": True}], None),
        answer([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}], None),
        answer([{"functionCall": {"name": "get_time", "args": {}}}], "STOP"))
    got = chunks(frames)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in got
             if "tool_calls" in c["choices"][0]["delta"]]
    assert [(c["index"], c["type"], c["function"]["name"], c["function"]["arguments"])
            for c in calls] == [(0, "function", "get_weather", '{"city":"Oslo"}'),
                                (1, "function", "get_time", "{}")]
    assert calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]
    assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(c["choices"][0]["delta"].get("content") == "thinking" for c in got)


def test_a_stream_stopped_at_the_token_limit():
    got = chunks(stream(answer([{"text": "long"}], "MAX_TOKENS"))[0])
    assert got[-1]["choices"][0]["finish_reason"] == "length"


def test_a_blocked_prompt_in_a_stream():
    got = chunks(stream(answer(None, promptFeedback={"blockReason": "PROHIBITED_CONTENT"}))[0])
    assert got[-1]["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("error, cls, status", [
    ({"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
     ServiceUnavailable, 503),
    ({"message": "quota", "status": "RESOURCE_EXHAUSTED"}, RateLimited, 429),
    ({"code": 500, "message": "internal", "status": "INTERNAL"}, UpstreamError, 502)])
def test_an_error_event_mid_stream_raises_after_what_came_before(error, cls, status):
    got: list[bytes] = []

    async def test(p: GeminiProvider, up: Upstream):
        body = {"model": "gem", "messages": [{"role": "user", "content": "x"}]}
        async for frame in p.chat_stream(model(), body, None):
            got.append(frame)
    with pytest.raises(ApiError) as exc:
        run(sse_reply(THE_SEAT[0], {"error": error}), test)
    assert isinstance(exc.value, cls) and exc.value.status == status
    assert [orjson.loads(sse.parse(f)[1])["choices"][0]["delta"] for f in got] == [
        {"role": "assistant", "content": ""}, {"content": "The seat"}]


def test_a_stream_that_ends_without_a_finish_reason_is_incomplete():
    with pytest.raises(UpstreamError) as exc:
        stream(THE_SEAT[0])
    assert "before it was complete" in exc.value.message


def test_a_stream_of_several_choices_is_refused_before_calling_upstream():
    async def test(p: GeminiProvider, up: Upstream):
        body = {"model": "gem", "n": 2, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(InvalidRequest) as exc:
            async for _ in p.chat_stream(model(), body, None):
                pass
        return exc.value, up.seen
    err, seen = run(sse_reply(*THE_SEAT), test)
    assert err.param == "n" and seen == []


# ============================================================================ images

def image(req: ImageRequest, reply: dict) -> tuple[list, list]:
    async def test(p: GeminiProvider, up: Upstream):
        return await gemini_media.generate_image(p, model("gemini-3-pro-image-preview",
                                                          "image"), req), up.seen
    return run(json_reply(reply), test)


IMAGE_ANSWER = answer([{"text": "Here is your fox."},
                       {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}],
                      usage={"promptTokenCount": 7, "candidatesTokenCount": 1290,
                             "totalTokenCount": 1297,
                             "candidatesTokensDetails": [{"modality": "IMAGE",
                                                          "tokenCount": 1290}]})


@pytest.mark.parametrize("size, ratio", [
    ("auto", "1:1"), ("1024x1024", "1:1"), ("1536x1024", "3:2"), ("1024x1536", "2:3"),
    ("1792x1024", "16:9"), ("1024x1792", "9:16"), ("16:9", "16:9"), ("9:16", "9:16"),
    ("4:3", "4:3"), ("3:4", "3:4"), ("512x512", "1:1")])
def test_an_image_request_asks_for_the_nearest_ratio(size, ratio):
    media, seen = image(ImageRequest("A watercolor fox in snow", size=size), IMAGE_ANSWER)
    ((method, path, _, body),) = seen
    assert (method, path) == ("POST",
                              "/v1beta/models/gemini-3-pro-image-preview:generateContent")
    assert check_request(body) == {
        "contents": [{"role": "user", "parts": [{"text": "A watercolor fox in snow"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": {"aspectRatio": ratio}}}
    assert [(m.data, m.mime, m.revised_prompt) for m in media] == [
        (PNG, "image/png", "A watercolor fox in snow")]


def test_the_pro_variant_asks_for_a_larger_image():
    _, seen = image(ImageRequest("fox", high_quality=True), IMAGE_ANSWER)
    config = check_request(seen[0][3])["generationConfig"]["imageConfig"]
    assert config == {"aspectRatio": "1:1", "imageSize": "2K"}


@pytest.mark.parametrize("reply", [
    answer([{"text": "I can't draw that."}], "IMAGE_SAFETY"),
    answer(None, promptFeedback={"blockReason": "PROHIBITED_CONTENT"}),
    answer([], "SAFETY")])
def test_a_refused_image_is_a_content_policy_400(reply):
    with pytest.raises(InvalidRequest) as exc:
        image(ImageRequest("fox"), reply)
    assert (exc.value.code, exc.value.param) == ("content_policy_violation", "prompt")


@pytest.mark.parametrize("reply", [answer([{"text": "no picture"}], "STOP"),
                                   answer([{"text": "no picture"}], "NO_IMAGE"),
                                   answer(None)])
def test_an_answer_without_an_image_is_the_requests_own_400(reply):
    with pytest.raises(NoOutput) as exc:
        image(ImageRequest("fox"), reply)
    assert (exc.value.status, exc.value.code, exc.value.param) == (
        400, "upstream_no_output", "prompt")
    assert "no image" in exc.value.message


# ============================================================================ Veo

OP = "models/veo-3.1-fast-generate-preview/operations/abc123"


def veo(ops: list[dict], req: VideoRequest | None = None, *, download: bytes = MP4,
        ctype: str = "video/mp4", **spec: Any):
    """Start a Veo operation answered by ``ops`` in turn (the start, then each poll); the
    video is served at /v1beta/files/abc123:download (after a redirect)."""
    answers = iter(ops)

    async def script(request: web.Request, body: Any) -> web.StreamResponse:
        if request.path.startswith("/v1beta/files/"):
            raise web.HTTPFound("/blob/abc123.mp4")
        if request.path.startswith("/blob/"):
            return web.Response(body=download, content_type=ctype)
        return web.json_response(next(answers))

    async def test(p: GeminiProvider, up: Upstream):
        for op in ops:                              # the uri points at this server
            for s in op.get("response", {}).get("generateVideoResponse", {}).get(
                    "generatedSamples", []):
                if s.get("video", {}).get("uri") == "UPSTREAM":
                    s["video"]["uri"] = f"{up.url}/v1beta/files/abc123:download?alt=media"
        media = await gemini_media.generate_video(
            p, model("veo-3.1-fast-generate-preview", "video"), req or VideoRequest("a boat"))
        return media, up.seen
    return run(script, test, **{"poll_interval_s": 0.01, **spec})


def done(**result: Any) -> dict:
    return {"name": OP, "done": True, "response": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                 "PredictLongRunningResponse", "generateVideoResponse": result}}


def sample() -> dict:
    """A finished operation's one sample, its uri filled in by ``veo`` with the server's."""
    return {"generatedSamples": [{"video": {"uri": "UPSTREAM"}}]}


def test_a_video_is_started_polled_and_downloaded_with_the_key():
    media, seen = veo([{"name": OP}, {"name": OP}, {"name": OP, "done": False}, done(**sample())],
                      VideoRequest("A paper boat", duration_seconds=6, resolution="720p",
                                   aspect_ratio="9:16"))
    assert (media.data, media.mime, media.revised_prompt) == (MP4, "video/mp4", "A paper boat")
    method, path, headers, body = seen[0]
    assert (method, path) == ("POST",
                              "/v1beta/models/veo-3.1-fast-generate-preview:predictLongRunning")
    assert headers["x-goog-api-key"] == KEY
    # wire-formats §6.1: instances[0].prompt; parameters the Gemini API accepts, the
    # duration a JSON number
    assert body == {"instances": [{"prompt": "A paper boat"}],
                    "parameters": {"aspectRatio": "9:16", "resolution": "720p",
                                   "durationSeconds": 6, "sampleCount": 1}}
    assert isinstance(body["parameters"]["durationSeconds"], int)
    polls = [s for s in seen if s[0] == "GET" and "operations" in s[1]]
    assert [p[1] for p in polls] == [f"/v1beta/{OP}"] * 3
    downloads = [s for s in seen if s[1].startswith(("/v1beta/files/", "/blob/"))]
    assert [d[1] for d in downloads] == ["/v1beta/files/abc123:download?alt=media",
                                         "/blob/abc123.mp4"]
    assert all(d[2]["x-goog-api-key"] == KEY for d in downloads)


def test_the_first_frame_is_sent_as_bytes_base64_encoded():
    """Veo on the Gemini API takes {bytesBase64Encoded, mimeType}, not inlineData (§6.1)."""
    req = VideoRequest("the cat jumps", image_url=f"data:image/png;base64,{PNG_B64}")
    _, seen = veo([{"name": OP, "done": False}, done(**sample())], req)
    instance = seen[0][3]["instances"][0]
    assert instance == {"prompt": "the cat jumps",
                        "image": {"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"}}


def test_a_first_frame_url_is_not_fetched_when_fetching_is_off():
    req = VideoRequest("x", image_url="https://example.com/first.png")
    with pytest.raises(InvalidRequest) as exc:
        veo([{"name": OP}], req)
    assert exc.value.param == "image_url"


def test_an_inline_video_needs_no_download():
    media, seen = veo([{"name": OP, "done": True, "response": {"generateVideoResponse": {
        "generatedSamples": [{"video": {"encodedVideo": base64.b64encode(MP4).decode(),
                                        "encoding": "video/mp4"}}]}}}])
    assert media.data == MP4 and media.mime == "video/mp4"
    assert [s[0] for s in seen] == ["POST"]                    # done at once: no poll


def test_a_download_served_as_something_else_is_still_mp4():
    media, _ = veo([{"name": OP}, done(**sample())], ctype="application/octet-stream")
    assert media.mime == "video/mp4"


@pytest.mark.parametrize("result", [
    {"name": OP, "done": True, "error": {"code": 400, "message": "The prompt violates our "
                                         "Responsible AI practices."}},
    done(raiMediaFilteredCount=1, raiMediaFilteredReasons=["Celebrity likeness."])])
def test_a_filtered_video_is_a_content_policy_400(result):
    with pytest.raises(InvalidRequest) as exc:
        veo([{"name": OP}, result])
    assert (exc.value.code, exc.value.param) == ("content_policy_violation", "prompt")


@pytest.mark.parametrize("ops, words", [
    ([{"metadata": {}}], "did not start a video operation"),
    ([{"name": OP}, {"name": OP, "done": True, "error": {"code": 13, "message": "Internal"}}],
     "failed at the upstream provider `google`: Internal"),
])
def test_a_video_operation_that_fails_is_502(ops, words):
    with pytest.raises(UpstreamError) as exc:
        veo(ops)
    assert exc.value.status == 502 and words in exc.value.message


@pytest.mark.parametrize("result", [done(), done(generatedSamples=[{"video": {}}])])
def test_an_operation_done_without_a_video_is_the_requests_own_400(result):
    with pytest.raises(NoOutput) as exc:
        veo([{"name": OP}, result])
    assert (exc.value.status, exc.value.code, exc.value.param) == (
        400, "upstream_no_output", "prompt")


def test_an_operation_that_never_finishes_times_out():
    with pytest.raises(UpstreamTimeout) as exc:
        veo([{"name": OP}] + [{"name": OP, "done": False}] * 200, timeout_s=0.3,
            poll_interval_s=0.02)
    assert exc.value.status == 504 and "0.3 s" in exc.value.message
