"""Self-test of the fake upstreams (sync; stdlib http.client + the openai SDK)."""
from __future__ import annotations

import base64
import http.client
import json
import struct
import time
import zlib

import openai
import pytest

from tests.fakes import (
    FakeAnthropic,
    FakeGemini,
    FakeOpenAI,
    FakeRag,
    anthropic_error,
    split_pieces,
)

OA_AUTH = {"Authorization": "Bearer sk-fake-openai"}
AN_AUTH = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}
GM_AUTH = {"x-goog-api-key": "gm-fake"}
USER = [{"role": "user", "content": "hello there world"}]


def call(fake, method, path, body=None, headers=None, timeout=5.0):
    """One request (no redirect following) -> (status, lower-case headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def frames(raw: bytes) -> list[tuple[str | None, str]]:
    """Parse SSE bytes into (event name or None, data) pairs."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


def wait_until(cond, timeout=1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def oa():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def an():
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def gm():
    with FakeGemini() as fake:
        yield fake


# ---------------------------------------------------------------- common --
def test_split_pieces():
    assert split_pieces("abcdefghij", 3) == ["abcd", "efg", "hij"]
    assert split_pieces("ab", 5) == ["a", "b"]
    assert split_pieces("", 5) == [""]
    text = "echo: the quick brown fox"
    assert "".join(split_pieces(text, 7)) == text and len(split_pieces(text, 7)) == 7


def test_png_is_valid(oa):
    png = oa.image_bytes
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        tag, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + data) & 0xFFFFFFFF
        chunks[tag] = data
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (8, 8)
    assert len(zlib.decompress(chunks[b"IDAT"])) == 8 * (1 + 8 * 3)
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_recording_and_clear(oa):
    call(oa, "POST", "/v1/chat/completions?x=1", {"model": "m", "messages": USER},
         {**OA_AUTH, "X-Custom": "yes"})
    rec = oa.last()
    assert (rec.method, rec.path, rec.query) == ("POST", "/v1/chat/completions", {"x": "1"})
    assert rec.headers["x-custom"] == "yes" and rec.json["model"] == "m"
    assert json.loads(rec.body) == rec.json and rec.at <= time.monotonic()
    oa.fail_next(500, {"error": "x"})
    oa.clear()
    assert oa.requests == [] and call(oa, "GET", "/v1/models", headers=OA_AUTH)[0] == 200


# ---------------------------------------------------------------- openai --
def test_openai_sdk_non_stream_and_stream(oa):
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    r = client.chat.completions.create(model="gpt-5", messages=USER)
    assert r.object == "chat.completion" and r.model == "gpt-5"
    assert r.choices[0].message.content == "echo: hello there world"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 4, 7)
    oa.reply_text = "The answer is forty two."
    chunks = list(client.chat.completions.create(
        model="gpt-5", messages=USER, stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks
               if c.choices and c.choices[0].delta.content]
    assert len(content) == 5 and "".join(content) == oa.reply_text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_openai_responses_with_the_sdk_and_its_checks(oa):
    """``/v1/responses``: the SDK reads the answer and the events; what OpenAI (or the
    gateway's own rules) would refuse is a 400 naming it."""
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    r = client.responses.create(model="gpt-5", input="hello there world", store=False,
                                reasoning={"effort": "low"}, tools=[{"type": "web_search"}])
    assert r.output_text == "echo: hello there world" and r.model == "gpt-5"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (3, 4 + 4)
    assert r.usage.output_tokens_details.reasoning_tokens == 4
    oa.tool_call_next("f", '{"a": 1}')
    with client.responses.stream(model="gpt-5", input="x", store=False, tools=[
            {"type": "function", "name": "f", "parameters": {}, "strict": False}]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output[0].type == "function_call" and final.output[0].arguments == '{"a": 1}'
    for body, says in [({"model": "m", "input": "x"}, "store: false"),
                       ({"model": "m", "input": "x", "store": False, "bogus": 1}, "bogus"),
                       ({"model": "m", "input": [{"type": "function_call_output"}],
                         "store": False}, "input"),
                       ({"model": "m", "input": "x", "store": False,
                         "previous_response_id": "resp_1"}, "previous_response_id")]:
        status, _, raw = call(oa, "POST", "/v1/responses", body, OA_AUTH)
        assert status == 400 and says in json.loads(raw)["error"]["message"], raw


def test_openai_raw_stream_framing(oa):
    oa.stream_events = 3
    status, headers, raw = call(oa, "POST", "/v1/chat/completions",
                                {"model": "m", "messages": USER, "stream": True}, OA_AUTH)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    fr = frames(raw)
    assert fr[-1] == (None, "[DONE]") and all(e is None for e, _ in fr)
    objs = [json.loads(d) for _, d in fr[:-1]]
    assert len(objs) == 1 + 3 + 1 and all("usage" not in o for o in objs)
    assert b'", "' not in raw and b'": ' not in raw  # compact JSON


def test_openai_sdk_tool_call(oa):
    oa.reply_tool_call = {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"C"}'}
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    r = client.chat.completions.create(model="m", messages=USER, tools=tools)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert r.choices[0].message.tool_calls[0].function.arguments == oa.reply_tool_call["arguments"]
    chunks = list(client.chat.completions.create(model="m", messages=USER, tools=tools,
                                                 stream=True))
    frags = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert len(frags) == 4 and frags[0].id == "call_fake01"
    assert "".join(f.function.arguments for f in frags) == oa.reply_tool_call["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # without tools in the request: a normal text answer
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content


def test_openai_legacy_completions(oa):
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert r.object == "text_completion" and r.choices[0].text == "echo: say hi"
    assert r.usage.prompt_tokens == 2
    chunks = list(client.completions.create(model="i", prompt="say hi", stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 5 and "".join(texts) == "echo: say hi"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5


def test_openai_images_models_and_auth(oa):
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    img = client.images.generate(model="gpt-image-1", prompt="a red fox", n=2, size="1024x1024")
    assert len(img.data) == 2 and base64.b64decode(img.data[1].b64_json) == oa.image_bytes
    assert img.output_format == "png" and img.usage.input_tokens == 3
    assert "gpt-5" in [m.id for m in client.models.list()]
    bad = openai.OpenAI(base_url=oa.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model="m", messages=USER)
    assert ei.value.code == "invalid_api_key"
    status, _, body = call(oa, "POST", "/v1/chat/completions", {"model": "m", "messages": USER})
    assert status == 401 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


# ------------------------------------------------------------- scripting --
def test_fail_next_fifo_and_path_filter(oa):
    oa.fail_next(429, {"error": {"message": "slow down"}}, headers={"retry-after": "3"},
                 path_contains="/completions")
    oa.fail_next(503, "plain text")
    status, _, _ = call(oa, "GET", "/v1/models", headers=OA_AUTH)
    assert status == 503  # the first entry did not match /v1/models; the second did
    status, headers, body = call(oa, "POST", "/v1/chat/completions",
                                 {"model": "m", "messages": USER}, OA_AUTH)
    assert (status, headers["retry-after"]) == (429, "3")
    assert json.loads(body)["error"]["message"] == "slow down"
    assert call(oa, "POST", "/v1/chat/completions", {"model": "m", "messages": USER},
                OA_AUTH)[0] == 200
    assert len(oa.requests) == 3


def test_garbage_and_hang(oa):
    oa.garbage_next()
    status, headers, body = call(oa, "GET", "/v1/models", headers=OA_AUTH)
    assert (status, body) == (200, b"<html>not json")
    assert headers["content-type"].startswith("text/html")
    oa.hang_next(2.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        call(oa, "GET", "/v1/models", headers=OA_AUTH, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 1.5 and len(oa.requests) == 2
    oa.hang_next(0.3)
    t0 = time.monotonic()
    assert call(oa, "GET", "/v1/models", headers=OA_AUTH)[0] == 200  # answers after the hang
    assert time.monotonic() - t0 >= 0.3


def test_die_mid_stream(oa):
    oa.die_mid_stream_next(3)
    conn = http.client.HTTPConnection("127.0.0.1", oa.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": USER, "stream": True}), OA_AUTH)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as ei:
        resp.read()
    conn.close()
    got = frames(ei.value.partial)
    assert len(got) == 3 and b"[DONE]" not in ei.value.partial
    streamed = {"model": "m", "messages": USER, "stream": True}
    assert call(oa, "POST", "/v1/chat/completions", streamed,
                OA_AUTH)[2].endswith(b"data: [DONE]\n\n")  # one-shot
    oa.die_mid_stream_next(1)  # taken by a non-stream request: connection dropped, no response
    with pytest.raises(http.client.RemoteDisconnected):
        call(oa, "POST", "/v1/chat/completions", {"model": "m", "messages": USER}, OA_AUTH)


def test_openai_error_mid_stream_sdk(oa):
    client = openai.OpenAI(base_url=oa.base_url, api_key="sk-fake-openai", max_retries=0)
    oa.error_mid_stream_next(3)
    got = []
    with pytest.raises(openai.APIError) as ei:
        for c in client.chat.completions.create(model="m", messages=USER, stream=True):
            got.append(c.choices[0].delta.content)
    assert got == ["", "echo:", " hell"] and "server had an error" in ei.value.message


def test_disconnect_detection(oa):
    oa.stream_delay = 0.2
    conn = http.client.HTTPConnection("127.0.0.1", oa.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "m", "messages": USER, "stream": True}), OA_AUTH)
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: {")
    resp.close()
    conn.close()
    t0 = time.monotonic()
    assert wait_until(lambda: oa.disconnects, timeout=1.0), "disconnect not noticed"
    assert len(oa.disconnects) == 1 and oa.disconnects[0] >= t0 - 0.05


# ------------------------------------------------------------- anthropic --
def test_anthropic_non_stream_and_validation(an):
    body = {"model": "claude-x", "max_tokens": 100, "system": "be brief now", "messages": USER}
    status, headers, raw = call(an, "POST", "/v1/messages", body, AN_AUTH)
    msg = json.loads(raw)
    assert status == 200 and headers["request-id"].startswith("req_")
    assert msg["type"] == "message" and msg["stop_reason"] == "end_turn"
    assert msg["content"] == [{"type": "text", "text": "echo: hello there world"}]
    assert msg["usage"]["input_tokens"] == 6 and msg["usage"]["output_tokens"] == 4
    for bad, needle in [({**body, "max_tokens": None}, "max_tokens"),
                        ({**body, "messages": USER * 2}, "alternate"),
                        ({**body, "messages": [{"role": "system", "content": "x"}, *USER]},
                         "system")]:
        status, _, raw = call(an, "POST", "/v1/messages", bad, AN_AUTH)
        err = json.loads(raw)
        assert status == 400 and err["error"]["type"] == "invalid_request_error", bad
        assert needle in err["error"]["message"] and err["request_id"].startswith("req_")
    status, _, raw = call(an, "POST", "/v1/messages", body, {"x-api-key": "sk-ant-fake"})
    assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"


def test_anthropic_stream(an):
    body = {"model": "c", "max_tokens": 9, "messages": USER, "stream": True}
    _status, _, raw = call(an, "POST", "/v1/messages", body, AN_AUTH)
    fr = frames(raw)
    names = [e for e, _ in fr]
    assert names[:2] == ["message_start", "content_block_start"] and "ping" in names[2:-3]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(d)["type"] == e for e, d in fr)
    texts = [json.loads(d)["delta"]["text"] for e, d in fr if e == "content_block_delta"]
    assert len(texts) == 5 and "".join(texts) == "echo: hello there world"
    assert json.loads(fr[0][1])["message"]["usage"]["input_tokens"] == 3
    assert json.loads(fr[-2][1])["usage"]["output_tokens"] == 4


def test_anthropic_tool_call(an):
    an.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    body = {"model": "c", "max_tokens": 9, "messages": USER,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    msg = json.loads(call(an, "POST", "/v1/messages", body, AN_AUTH)[2])
    assert msg["stop_reason"] == "tool_use" and msg["content"][0]["text"] == "Let me check."
    assert msg["content"][1] == {"type": "tool_use", "id": "toolu_fake01", "name": "get_weather",
                                 "input": {"city": "Oslo"}}
    fr = frames(call(an, "POST", "/v1/messages", {**body, "stream": True}, AN_AUTH)[2])
    data = [json.loads(d) for _, d in fr]
    parts = [d["delta"]["partial_json"] for d in data
             if d["type"] == "content_block_delta" and d["index"] == 1]
    assert len(parts) == 3 and json.loads("".join(parts)) == {"city": "Oslo"}
    assert [d["content_block"]["type"] for d in data if d["type"] == "content_block_start"] == \
        ["text", "tool_use"]
    assert data[-2]["delta"]["stop_reason"] == "tool_use"


def test_tool_call_next_is_one_shot(oa, an, gm):
    """``tool_call_next``: the next request with tools gets the call, the one after gets text;
    on each fake, in its own wire format."""
    an.tool_call_next("Bash", '{"command": "echo hi"}')
    body = {"model": "c", "max_tokens": 9, "messages": USER,
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}]}
    first = json.loads(call(an, "POST", "/v1/messages", body, AN_AUTH)[2])
    assert first["content"][1]["input"] == {"command": "echo hi"}
    again = json.loads(call(an, "POST", "/v1/messages", body, AN_AUTH)[2])
    assert again["stop_reason"] == "end_turn" and again["content"][0]["text"].startswith("echo:")

    gm.tool_call_next("Bash", '{"command": "echo hi"}')
    tbody = {**GM_BODY, "tools": [{"functionDeclarations": [{"name": "Bash"}]}]}
    path = "/v1beta/models/g:generateContent"
    parts = json.loads(call(gm, "POST", path, tbody, GM_AUTH)[2])["candidates"][0]["content"]
    assert parts["parts"] == [{"functionCall": {"name": "Bash", "args": {"command": "echo hi"}}}]
    parts = json.loads(call(gm, "POST", path, tbody, GM_AUTH)[2])["candidates"][0]["content"]
    assert "text" in parts["parts"][0]

    oa.tool_call_next("Bash", '{"command": "echo hi"}')
    obody = {"model": "m", "messages": USER,
             "tools": [{"type": "function", "function": {"name": "Bash"}}]}
    msg = json.loads(call(oa, "POST", "/v1/chat/completions", obody, OA_AUTH)[2])
    assert msg["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "Bash"
    msg = json.loads(call(oa, "POST", "/v1/chat/completions", obody, OA_AUTH)[2])
    assert msg["choices"][0]["message"]["content"].startswith("echo:")


def test_anthropic_errors(an):
    an.overloaded_next()
    status, _, raw = call(an, "POST", "/v1/messages", {}, AN_AUTH)
    assert status == 529 and json.loads(raw)["error"]["type"] == "overloaded_error"
    assert anthropic_error("api_error", "boom")["error"] == {"type": "api_error", "message": "boom"}
    an.error_mid_stream_next(2)
    body = {"model": "c", "max_tokens": 9, "messages": USER, "stream": True}
    fr = frames(call(an, "POST", "/v1/messages", body, AN_AUTH)[2])  # ends cleanly
    assert [e for e, _ in fr] == ["message_start", "content_block_start", "error"]
    assert json.loads(fr[-1][1])["error"]["type"] == "overloaded_error"


# ---------------------------------------------------------------- gemini --
GM_BODY = {"systemInstruction": {"parts": [{"text": "be brief"}]},
           "contents": [{"role": "user", "parts": [{"text": "hello there world"}]}]}


def test_gemini_generate_and_stream(gm):
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _, raw = call(gm, "POST", path, GM_BODY, GM_AUTH)
    r = json.loads(raw)
    assert status == 200 and r["modelVersion"] == "gemini-2.5-flash" and r["responseId"]
    cand = r["candidates"][0]
    assert cand["content"] == {"role": "model", "parts": [{"text": "echo: hello there world"}]}
    assert cand["finishReason"] == "STOP"
    assert r["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 4,
                                  "totalTokenCount": 9}
    spath = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    status, headers, raw = call(gm, "POST", spath, GM_BODY, GM_AUTH)
    chunks = [json.loads(d) for _, d in frames(raw)]
    assert headers["content-type"].startswith("text/event-stream") and b"[DONE]" not in raw
    assert len(chunks) == 5
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == \
        "echo: hello there world"
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None] * 4 + ["STOP"]
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 9


def test_gemini_image_tool_and_auth(gm):
    path = "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    body = {**GM_BODY, "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}}
    answer = json.loads(call(gm, "POST", path, body, GM_AUTH)[2])
    parts = answer["candidates"][0]["content"]["parts"]
    img = next(p["inlineData"] for p in parts if "inlineData" in p)
    assert img["mimeType"] == "image/png" and base64.b64decode(img["data"]) == gm.image_bytes
    assert any("text" in p for p in parts)
    gm.reply_tool_call = {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    tbody = {**GM_BODY, "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
    spath = "/v1beta/models/g:streamGenerateContent?alt=sse"
    chunks = [json.loads(d) for _, d in frames(call(gm, "POST", spath, tbody, GM_AUTH)[2])]
    assert len(chunks) == 1 and chunks[0]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[0]["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]
    status, _, raw = call(gm, "POST", path, GM_BODY, {"x-goog-api-key": "nope"})
    err = json.loads(raw)["error"]
    assert status == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["details"][0]["reason"] == "API_KEY_INVALID"


def test_gemini_scripted_errors(gm):
    path = "/v1beta/models/g:generateContent"
    gm.rate_limited_next("12s", per_day=True)
    status, _, raw = call(gm, "POST", path, GM_BODY, GM_AUTH)
    err = json.loads(raw)["error"]
    assert (status, err["code"], err["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    by_type = {d["@type"].rsplit(".", 1)[1]: d for d in err["details"]}
    assert by_type["RetryInfo"]["retryDelay"] == "12s"
    assert "PerDay" in by_type["QuotaFailure"]["violations"][0]["quotaId"]
    gm.overloaded_next()
    status, _, raw = call(gm, "POST", path, GM_BODY, GM_AUTH)
    assert status == 503 and json.loads(raw)["error"]["status"] == "UNAVAILABLE"
    gm.error_mid_stream_next(2)
    spath = "/v1beta/models/g:streamGenerateContent?alt=sse"
    chunks = [json.loads(d) for _, d in frames(call(gm, "POST", spath, GM_BODY, GM_AUTH)[2])]
    assert len(chunks) == 3 and "candidates" in chunks[1]
    assert chunks[2] == {"error": {"code": 503, "message": "The model is overloaded.",
                                   "status": "UNAVAILABLE"}}


def test_veo_flow(gm):
    body = {"instances": [{"prompt": "a paper boat"}], "parameters": {"durationSeconds": 8}}
    status, _, raw = call(gm, "POST", "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
                          body, GM_AUTH)
    name = json.loads(raw)["name"]
    op = name.rsplit("/", 1)[1]
    assert status == 200 and name == f"models/veo-3.0-generate-001/operations/{op}"
    assert gm.last().json == body
    for _ in range(2):
        assert json.loads(call(gm, "GET", f"/v1beta/{name}", headers=GM_AUTH)[2]) == {"name": name}
    done = json.loads(call(gm, "GET", f"/v1beta/{name}", headers=GM_AUTH)[2])
    assert done["done"] is True and gm.veo_polls[op] == 3
    uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert uri == f"{gm.root}/v1beta/files/{op}:download?alt=media"
    dl_path = uri[len(gm.root):]
    assert call(gm, "GET", dl_path)[0] == 400  # key required
    status, headers, _ = call(gm, "GET", dl_path, headers=GM_AUTH)
    assert status == 302 and headers["location"] == f"{gm.root}/blob/{op}.mp4"
    status, headers, video = call(gm, "GET", f"/blob/{op}.mp4")  # CDN: no key needed
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert video == gm.video_bytes and len(video) > 4096 and video[4:8] == b"ftyp"
    assert b"moov" in video[:200] and b"mvhd" in video[:200]
    status, headers, part = call(gm, "GET", f"/blob/{op}.mp4", headers={"Range": "bytes=100-199"})
    assert status == 206 and part == video[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(video)}"


def test_veo_filtered_and_error(gm):
    gm.veo_polls_until_done = 0
    start = "/v1beta/models/veo-3:predictLongRunning"
    body = {"instances": [{"prompt": "x"}]}
    gm.veo_filtered_next()
    gm.veo_error_next(3, "bad prompt")
    names = [json.loads(call(gm, "POST", start, body, GM_AUTH)[2])["name"] for _ in range(3)]
    results = [json.loads(call(gm, "GET", f"/v1beta/{n}", headers=GM_AUTH)[2]) for n in names]
    vr = results[0]["response"]["generateVideoResponse"]
    assert vr["raiMediaFilteredCount"] == 1 and vr["raiMediaFilteredReasons"]
    assert "generatedSamples" not in vr
    assert results[1]["done"] and results[1]["error"] == {"code": 3, "message": "bad prompt"}
    assert "generatedSamples" in results[2]["response"]["generateVideoResponse"]
    bad = {"instances": [{"image": {"inlineData": {"mimeType": "image/png", "data": "AA=="}}}]}
    assert call(gm, "POST", start, bad, GM_AUTH)[0] == 400


# ------------------------------------------------------------------- rag --
def test_rag():
    with FakeRag() as rag:
        auth = {"Authorization": "Bearer rag-fake"}
        status, _, raw = call(rag, "POST", "/query", {"query": "what is x", "model": "g3"}, auth)
        assert status == 200 and json.loads(raw) == {
            "answer": "echo: what is x",
            "sources": [{"title": "Doc A", "url": "https://example.com/a"}]}
        rag.reply_text, rag.sources = "X is Y.", []
        assert json.loads(call(rag, "POST", "/query", {"query": "q", "model": "g3"}, auth)[2]) \
            == {"answer": "X is Y.", "sources": []}
        assert rag.last().json == {"query": "q", "model": "g3"}
        assert call(rag, "POST", "/query", {"query": "q", "model": "g3"})[0] == 401
    assert rag.base_url == rag.root


def test_openai_embeddings(oa):
    from tests.fakes.base import embedding_vector
    client = openai.OpenAI(base_url=oa.base_url, api_key=oa.api_key, max_retries=0)
    got = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert oa.last().json["encoding_format"] == "base64"       # the SDK's default, decoded
    assert [len(d.embedding) for d in got.data] == [256, 256]
    assert max(abs(a - b) for a, b in zip(got.data[1].embedding, embedding_vector("c", 256),
                                          strict=True)) < 1e-6
    assert got.usage.prompt_tokens == 3
    cut = client.embeddings.create(model="m", input=[1, 2], dimensions=8,
                                   encoding_format="float")
    assert len(cut.data[0].embedding) == 8
    assert abs(sum(v * v for v in cut.data[0].embedding) - 1.0) < 1e-9    # scaled again
    for bad in ({"input": "x", "dimensions": 257}, {"input": "x", "encoding_format": "hex"},
                {"input": ["x"] * 2049}, {"input": [["x"]]}):
        status, _, raw = call(oa, "POST", "/v1/embeddings", {"model": "m", **bad}, OA_AUTH)
        assert status == 400, (bad, raw)


def test_gemini_batch_embed_refuses_over_100_and_checks_with_the_sdk_types(gm):
    from tests.fakes.base import embedding_vector
    path = "/v1beta/models/gemini-embedding-001:batchEmbedContents"

    def req(text, **extra):
        return {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]},
                **extra}

    status, _, raw = call(gm, "POST", path, {"requests": [req(str(i)) for i in range(101)]},
                          GM_AUTH)
    assert status == 400 and b"at most 100 requests" in raw
    status, _, raw = call(gm, "POST", path, {"requests": [req(str(i), outputDimensionality=8)
                                                          for i in range(100)]}, GM_AUTH)
    assert status == 200
    values = [e["values"] for e in json.loads(raw)["embeddings"]]
    assert len(values) == 100 and values[7] == embedding_vector("7", 256)[:8]   # not scaled
    for bad in ([req("x", outputDimensionalty=8)], [req("x", outputDimensionality=257)],
                [{**req("x"), "model": "models/other"}], [req("")], "nope"):
        status, _, raw = call(gm, "POST", path, {"requests": bad}, GM_AUTH)
        assert status == 400, (bad, raw)
    assert call(gm, "POST", path, {"requests": [req("x")]})[0] == 400        # no key
