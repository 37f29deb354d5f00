"""The openai SDK against Apiarium in front of a fake Gemini API (kind: gemini): request
translation, answers, tool calls, streams, and the mapping of Google's errors."""
from __future__ import annotations

import base64
import http.client
import json
import time

import openai
import pytest

from tests.fakes import google_error, make_png, split_pieces
from tests.support import MASTER_KEY, error_of

UPSTREAM = "gemini-2.5-pro"
BAD_KEY = "AIza-wrong-key-0123456789"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
def gw(make_gateway, fake_gemini):
    return make_gateway({
        "providers": {
            # these tests provoke error after error: no circuit breaker in the way
            "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                       "api_key": fake_gemini.api_key, "timeout_s": 5, "breaker_failures": 0},
            "badkey": {"kind": "gemini", "base_url": fake_gemini.base_url, "api_key": BAD_KEY},
        },
        "models": {"gem": {"provider": "google", "upstream": UPSTREAM},
                   "gem-badkey": {"provider": "badkey"}},
    })


def sdk(gw) -> openai.OpenAI:
    return gw.sdk(MASTER_KEY, timeout=15)


def no_key_leak(gw, fake, *bodies) -> None:
    for secret in (fake.api_key, BAD_KEY):
        assert all(secret not in (b if isinstance(b, str) else b.decode()) for b in bodies)
        assert secret not in "\n".join(gw.log)


def stream_raw(gw, body: dict):
    """POST a stream request with http.client; yield (monotonic time, line) per SSE line."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                 {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    try:
        while line := resp.readline():
            if line.strip():
                yield time.monotonic(), line.strip()
    finally:
        conn.close()


# ---------------------------------------------------------------------- plain chat
def test_chat_translates_request_and_answer(gw, fake_gemini):
    resp = sdk(gw).chat.completions.create(
        model="gem", temperature=0.3, max_tokens=120, stop="END", top_p=0.9, seed=7,
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "developer", "content": "Be kind."},
                  {"role": "user", "content": "Hello there"},
                  {"role": "assistant", "content": "Hi!"},
                  {"role": "user", "content": "What is"},
                  {"role": "user", "content": [{"type": "text", "text": "the capital of Peru?"}]}])
    msg = resp.choices[0]
    assert msg.message.content == "echo: What is the capital of Peru?"
    assert msg.finish_reason == "stop" and msg.message.role == "assistant"
    assert resp.model == "gem"
    # the fake counts words of every text sent: 2 + 2 + 2 + 1 + 2 + 4
    assert resp.usage.prompt_tokens == 13 and resp.usage.completion_tokens == 7
    assert resp.usage.total_tokens == 20
    sent = fake_gemini.last()
    assert sent.path == f"/v1beta/models/{UPSTREAM}:generateContent"
    assert sent.headers["x-goog-api-key"] == fake_gemini.api_key
    assert "authorization" not in sent.headers
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Answer briefly."},
                                                        {"text": "Be kind."}]}
    assert sent.json["contents"] == [
        {"role": "user", "parts": [{"text": "Hello there"}]},
        {"role": "model", "parts": [{"text": "Hi!"}]},
        {"role": "user", "parts": [{"text": "What is"}, {"text": "the capital of Peru?"}]}]
    assert sent.json["generationConfig"] == {"temperature": 0.3, "topP": 0.9, "seed": 7,
                                             "maxOutputTokens": 120, "stopSequences": ["END"]}
    assert "tools" not in sent.json and "toolConfig" not in sent.json


def test_chat_options_images_and_bad_image_urls(gw, fake_gemini):
    client = sdk(gw)
    png = "data:image/png;base64," + base64.b64encode(make_png()).decode()
    client.chat.completions.create(
        model="gem", max_completion_tokens=50, n=2, presence_penalty=0.5, frequency_penalty=0.2,
        stop=["A", "B"], response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": png}}]}])
    sent = fake_gemini.last().json
    assert sent["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png",
                                                              "data": png.split(",", 1)[1]}}
    assert sent["generationConfig"] == {
        "candidateCount": 2, "presencePenalty": 0.5, "frequencyPenalty": 0.2,
        "maxOutputTokens": 50, "stopSequences": ["A", "B"],
        "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    err = exc.value.body
    assert "data: URL" in err["message"] and err["param"].endswith("image_url.url")
    n_before = len(fake_gemini.requests)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}])
    assert len(fake_gemini.requests) == n_before      # refused before any upstream call


def test_thoughts_usage_limits_and_blocked_prompts(gw, fake_gemini):
    client = sdk(gw)
    fake_gemini.fail_next(200, {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think about it...", "thought": True},
            {"text": "The answer"}, {"text": " is 42."}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5,
                          "thoughtsTokenCount": 30, "cachedContentTokenCount": 8,
                          "totalTokenCount": 55}})
    resp = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "?"}])
    assert resp.choices[0].message.content == "The answer is 42."
    assert resp.usage.prompt_tokens == 20 and resp.usage.completion_tokens == 35
    assert resp.usage.total_tokens == 55
    assert resp.usage.completion_tokens_details.reasoning_tokens == 30
    assert resp.usage.prompt_tokens_details.cached_tokens == 8

    fake_gemini.fail_next(200, {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Once upon"}]}, "finishReason": "MAX_TOKENS", "index": 0}]})
    resp = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "?"}])
    assert resp.choices[0].finish_reason == "length"

    fake_gemini.fail_next(200, {"promptFeedback": {"blockReason": "SAFETY"},
                                "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}})
    resp = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "?"}])
    assert resp.choices[0].finish_reason == "content_filter"
    assert resp.choices[0].message.content == "" and resp.usage.prompt_tokens == 4

    blocked = b'data: {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}\n\n'
    fake_gemini.fail_next(200, blocked, headers={"Content-Type": "text/event-stream"})
    chunks = list(client.chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "?"}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert not any(c.choices[0].delta.content for c in chunks)


# ---------------------------------------------------------------------- streams
def test_stream_with_usage(gw, fake_gemini):
    fake_gemini.reply_text = "one two three four five six seven"
    fake_gemini.stream_events = 4
    chunks = list(sdk(gw).chat.completions.create(
        model="gem", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Count."}, {"role": "user", "content": "go on"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert pieces == split_pieces(fake_gemini.reply_text, 4)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].usage.total_tokens == 10
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"gem"}
    sent = fake_gemini.last()
    assert sent.path == f"/v1beta/models/{UPSTREAM}:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Count."}]}
    # no include_usage: no usage chunk
    chunks = list(sdk(gw).chat.completions.create(
        model="gem", stream=True, messages=[{"role": "user", "content": "go on"}]))
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None


def test_streamed_tool_call_and_follow_up(gw, fake_gemini):
    fake_gemini.reply_tool_call = {"name": "get_weather",
                                   "arguments": '{"city": "Oslo", "days": 2}'}
    client = sdk(gw)
    question = [{"role": "user", "content": "Weather in Oslo?"}]
    stream = client.chat.completions.create(
        model="gem", messages=question, tools=[WEATHER_TOOL], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls, finish = {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        for tc in (delta.tool_calls or []) if delta else []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Oslo", "days": 2}
    sent = fake_gemini.last().json
    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather in a city",
        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}

    # the same call, not streamed
    resp = client.chat.completions.create(model="gem", messages=question, tools=[WEATHER_TOOL],
                                          tool_choice="required")
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].message.content is None
    tc = resp.choices[0].message.tool_calls[0]
    assert tc.id.startswith("call_") and tc.id != call["id"]
    assert json.loads(tc.function.arguments) == {"city": "Oslo", "days": 2}
    assert fake_gemini.last().json["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    # the follow-up with the results: the function names come back from the tool calls
    fake_gemini.reply_tool_call = None
    fake_gemini.reply_text = "It is 7 degrees and sunny."
    follow = client.chat.completions.create(model="gem", tools=[WEATHER_TOOL], messages=[
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": call["arguments"]}},
            {"id": "call_other", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 7, "sky": "sunny"}'},
        {"role": "tool", "tool_call_id": "call_other", "content": "12:00"}])
    assert follow.choices[0].message.content == "It is 7 degrees and sunny."
    contents = fake_gemini.last().json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo", "days": 2}}},
        {"functionCall": {"name": "get_time", "args": {}}}]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 7, "sky": "sunny"}}},
        {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}}]

    # a tool result whose call id matches nothing is refused before reaching Google
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gem", messages=[
            *question, {"role": "tool", "tool_call_id": "call_nowhere", "content": "x"}])
    assert "call_nowhere" in exc.value.body["message"]


def test_stream_that_dies_or_errors_half_way(gw, fake_gemini):
    fake_gemini.reply_text = "alpha beta gamma delta epsilon zeta"
    fake_gemini.stream_events = 6
    client = sdk(gw)
    messages = [{"role": "user", "content": "x"}]
    for script in (fake_gemini.die_mid_stream_next, fake_gemini.error_mid_stream_next):
        script(3)
        got = []
        started = time.monotonic()
        with pytest.raises(openai.APIError) as exc:
            for chunk in client.chat.completions.create(model="gem", messages=messages,
                                                        stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
        assert got == split_pieces(fake_gemini.reply_text, 6)[:3]
        assert time.monotonic() - started < 5
    assert "overloaded" in str(exc.value)

    # seen on the wire: the error event is the last one, with the mapped code, and no [DONE]
    fake_gemini.error_mid_stream_next(2)
    lines = [line for _, line in stream_raw(gw, {"model": "gem", "messages": messages})]
    last = json.loads(lines[-1][len(b"data: "):])
    assert last["error"]["code"] == "upstream_overloaded" and b"[DONE]" not in b"".join(lines)
    fake_gemini.die_mid_stream_next(2)
    lines = [line for _, line in stream_raw(gw, {"model": "gem", "messages": messages})]
    assert json.loads(lines[-1][len(b"data: "):])["error"]["code"] == "upstream_error"

    # an error as the very first event is an ordinary HTTP error
    fake_gemini.error_mid_stream_next(0)
    status, _headers, body = gw.post("/v1/chat/completions", {
        "model": "gem", "messages": messages, "stream": True}, key=MASTER_KEY)
    assert status == 503 and error_of(body)["code"] == "upstream_overloaded"


def test_stream_is_relayed_event_by_event(gw, fake_gemini):
    fake_gemini.reply_text = " ".join(f"w{i:03d}" for i in range(200))
    fake_gemini.stream_events = 200
    body = {"model": "gem", "messages": [{"role": "user", "content": "long"}]}
    lines = [line for _, line in stream_raw(gw, body)]
    assert all(line.startswith(b"data: ") for line in lines)
    content = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines
               if b'"content"' in line and b'"role"' not in line]
    assert content == split_pieces(fake_gemini.reply_text, 200)
    assert len(lines) == 1 + 200 + 1 + 1             # role, 200 pieces, finish, [DONE]

    fake_gemini.stream_events, fake_gemini.stream_delay = 40, 0.05   # ~2 s upstream
    first = end = None
    for at, line in stream_raw(gw, body):
        if first is None and b'"content":"w' in line:
            first = at
        end = at
    assert first is not None and end - first > 1.2   # content arrived while upstream ran


# ---------------------------------------------------------------------- errors
ERRORS = [
    # (upstream status, upstream body, client status, client code, words in the message)
    (400, google_error(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0]' (top_k)."),
     400, None, "Invalid value at 'contents[0]'"),
    (400, google_error(400, "FAILED_PRECONDITION", "User location is not supported."),
     400, None, "User location is not supported"),
    (403, google_error(403, "PERMISSION_DENIED", "Permission denied on this model."),
     502, "upstream_error", "providers.google.api_key"),
    (404, google_error(404, "NOT_FOUND", "models/gemini-2.5-pro is not found."),
     404, "model_not_found", "is not found"),
    # the upstream's own words only for a 4xx about the request (exposure 13.6)
    (500, google_error(500, "INTERNAL", "An internal error has occurred."),
     502, "upstream_error", "failed with HTTP 500"),
    (503, google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     503, "upstream_overloaded", "overloaded"),
    (504, google_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation."),
     504, "upstream_timeout", "timed out"),
]


def test_google_errors_are_mapped(gw, fake_gemini):
    req = {"model": "gem", "messages": [{"role": "user", "content": "hi"}]}
    for up_status, up_body, status, code, said in ERRORS:
        for stream in (False, True):
            fake_gemini.fail_next(up_status, up_body)
            got, headers, body = gw.post("/v1/chat/completions", {**req, "stream": stream},
                                         key=MASTER_KEY)
            err = error_of(body)
            assert (got, err["code"], stream) == (status, code, stream), err
            assert said in err["message"], err
            assert "retry-after" not in headers

    fake_gemini.rate_limited_next("37s")
    status, headers, body = gw.post("/v1/chat/completions", req, key=MASTER_KEY)
    err = error_of(body)
    assert (status, err["code"]) == (429, "upstream_rate_limited")
    assert headers["retry-after"] == "37" and "37 s" in err["message"]
    assert "x-should-retry" not in headers
    fake_gemini.rate_limited_next("1.2s", per_day=True)
    status, headers, body = gw.post("/v1/chat/completions", req, key=MASTER_KEY)
    assert (status, headers["retry-after"], headers["x-should-retry"]) == (429, "2", "false")
    fake_gemini.fail_next(503, google_error(503, "UNAVAILABLE", "High demand.", [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"}]))
    status, headers, body = gw.post("/v1/chat/completions", req, key=MASTER_KEY)
    assert (status, headers.get("retry-after")) == (503, "4")

    with pytest.raises(openai.RateLimitError) as exc:
        fake_gemini.rate_limited_next("37s")
        sdk(gw).chat.completions.create(**req)
    assert exc.value.response.headers["retry-after"] == "37"

    fake_gemini.garbage_next()
    status, _, body = gw.post("/v1/chat/completions", req, key=MASTER_KEY)
    assert (status, error_of(body)["code"]) == (502, "upstream_error")


def test_invalid_upstream_key_is_the_gateways_fault_and_never_leaks(gw, fake_gemini):
    bodies = []
    for stream in (False, True):
        status, _, body = gw.post("/v1/chat/completions", {
            "model": "gem-badkey", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY)
        err = error_of(body)
        assert (status, err["code"]) == (502, "upstream_error")
        assert "providers.badkey.api_key" in err["message"]
        bodies.append(body)
    assert fake_gemini.last().headers["x-goog-api-key"] == BAD_KEY
    fake_gemini.reply_text = "fine"
    ok = sdk(gw).chat.completions.create(model="gem",
                                         messages=[{"role": "user", "content": "hi"}])
    fake_gemini.overloaded_next()
    _, _, overloaded = gw.post("/v1/chat/completions", {
        "model": "gem", "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY)
    fake_gemini.error_mid_stream_next(1)
    streamed = b"\n".join(line for _, line in stream_raw(gw, {
        "model": "gem", "messages": [{"role": "user", "content": "hi"}]}))
    no_key_leak(gw, fake_gemini, *bodies, ok.model_dump_json(), overloaded, streamed)


# ---------------------------------------------------------------------- legacy completions
def test_legacy_completions(gw, fake_gemini):
    fake_gemini.reply_text = "Once upon a time"
    client = sdk(gw)
    resp = client.completions.create(model="gem", prompt="Tell me a story", max_tokens=20)
    assert resp.object == "text_completion" and resp.choices[0].text == "Once upon a time"
    assert resp.choices[0].finish_reason == "stop" and resp.usage.prompt_tokens == 4
    sent = fake_gemini.last().json
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Tell me a story"}]}]
    assert sent["generationConfig"] == {"maxOutputTokens": 20}
    chunks = list(client.completions.create(model="gem", prompt="Tell me a story", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Once upon a time"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 4
