"""`kind: anthropic`: the openai SDK against Apiarium in front of a fake Anthropic Messages
API.  What the client gets (content, tool calls, finish reasons, usage, errors, streams as
they happen), and what the upstream was sent (the translated request)."""
from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from apiarium.providers.anthropic import finish_reason, openai_usage
from tests.fakes import anthropic_error, split_pieces
from tests.support import MASTER_KEY, error_of, wait_for

SECRET = "sk-ant-SECRET-never-show-me-4242"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
def fake(fake_anthropic):
    return fake_anthropic


@pytest.fixture
def gateway(make_gateway, fake):
    return make_gateway({
        "providers": {
            # these tests provoke error after error: no circuit breaker in the way
            "claude": {"kind": "anthropic", "base_url": fake.base_url, "api_key": fake.api_key,
                       "timeout_s": 5, "breaker_failures": 0},
            "slow": {"kind": "anthropic", "base_url": fake.base_url, "api_key": fake.api_key,
                     "timeout_s": 0.5},
            "wrongkey": {"kind": "anthropic", "base_url": fake.base_url, "api_key": SECRET,
                         "breaker_failures": 0},
        },
        "models": {
            "claude-sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5"},
            "claude-slow": {"provider": "slow"},
            "claude-wrongkey": {"provider": "wrongkey"},
        },
    })


@pytest.fixture
def client(gateway):
    return gateway.sdk(MASTER_KEY, timeout=10)


def chat(gateway, body: dict):
    return gateway.post("/v1/chat/completions", {"model": "claude-sonnet", **body},
                        key=MASTER_KEY)


# ---------------------------------------------------------------------- a. plain chat
def test_non_stream_chat_translates_request_and_answer(client, fake):
    fake.reply_text = "Oslo is the capital."
    resp = client.chat.completions.create(
        model="claude-sonnet", temperature=1.7, stop="END", user="user-42",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "developer",
                   "content": [{"type": "text", "text": "Answer in English."}]},
                  {"role": "user", "content": "Capital"},
                  {"role": "user", "content": [{"type": "text", "text": "of Norway?"}]}],
        presence_penalty=0.5, seed=7)
    assert resp.choices[0].message.content == "Oslo is the capital."
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "claude-sonnet" and resp.object == "chat.completion"
    # prompt: 2 + 3 system words, 3 user words; completion: 4 words
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (8, 4)
    assert resp.usage.total_tokens == 12 and resp.usage.prompt_tokens_details.cached_tokens == 0

    sent = fake.last()
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == fake.api_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"].startswith("application/json")
    assert MASTER_KEY not in json.dumps(sent.headers)
    assert sent.json == {
        "model": "claude-sonnet-4-5", "max_tokens": 4096,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital"},
                                                  {"type": "text", "text": "of Norway?"}]}],
        "stop_sequences": ["END"], "temperature": 1.0, "metadata": {"user_id": "user-42"}}


def test_max_tokens_stop_list_and_alternating_turns(client, fake):
    client.chat.completions.create(
        model="claude-sonnet", max_completion_tokens=77, max_tokens=10, stop=["x", "y"],
        temperature=0.3, top_p=0.9,
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "system", "content": "late system note"},
                  {"role": "user", "content": "again"}])
    sent = fake.last().json
    assert sent["max_tokens"] == 77 and sent["stop_sequences"] == ["x", "y"]
    assert sent["temperature"] == 0.3 and sent["top_p"] == 0.9
    assert sent["system"] == "late system note"
    assert sent["messages"] == [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"},
                                {"role": "user", "content": "again"}]
    client.chat.completions.create(model="claude-sonnet", max_tokens=50,
                                   messages=[{"role": "user", "content": "hi"}])
    assert fake.last().json["max_tokens"] == 50 and "system" not in fake.last().json


def test_stream_chat_with_usage(client, fake):
    fake.reply_text = "one two three four five six seven"
    fake.stream_events = 4
    chunks = list(client.chat.completions.create(
        model="claude-sonnet", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Count."}, {"role": "user", "content": "go on"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert pieces == split_pieces(fake.reply_text, 4)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 7)
    assert {c.model for c in chunks} == {"claude-sonnet"} and len({c.id for c in chunks}) == 1
    sent = fake.last().json
    assert sent["stream"] is True and sent["system"] == "Count."
    assert "stream_options" not in sent
    # without include_usage no usage chunk is sent
    chunks = list(client.chat.completions.create(
        model="claude-sonnet", stream=True, messages=[{"role": "user", "content": "x"}]))
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_finish_reason_and_usage_mapping():
    assert [finish_reason(r) for r in ("end_turn", "stop_sequence", "pause_turn", "max_tokens",
                                       "model_context_window_exceeded", "tool_use", "refusal")] \
        == ["stop", "stop", "stop", "length", "length", "tool_calls", "content_filter"]
    u = openai_usage({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100,
                      "cache_read_input_tokens": 1000})
    assert u == {"prompt_tokens": 1110, "completion_tokens": 5, "total_tokens": 1115,
                 "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100},
                 "completion_tokens_details": {"reasoning_tokens": 0}}


# ---------------------------------------------------------------------- b. tools
def test_tool_call_non_stream(client, fake):
    fake.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    resp = client.chat.completions.create(
        model="claude-sonnet", tools=[WEATHER], parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Oslo?"}])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("toolu_fake01", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    sent = fake.last().json
    assert sent["tools"] == [{"name": "get_weather", "description": "Current weather in a city.",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather",
                                   "disable_parallel_tool_use": True}


def test_tool_call_stream_arrives_complete(client, fake):
    args = '{"city": "Oslo", "unit": "celsius", "days": 3}'
    fake.reply_tool_call = {"name": "get_weather", "arguments": args}
    stream = client.chat.completions.create(
        model="claude-sonnet", tools=[WEATHER], tool_choice="required", stream=True,
        messages=[{"role": "user", "content": "Weather in Oslo?"}])
    calls: dict[int, dict] = {}
    text, finish, arg_deltas = "", None, 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function:
                call["name"] = tc.function.name or call["name"]
                call["arguments"] += tc.function.arguments or ""
                arg_deltas += bool(tc.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert text == "Let me check."
    assert calls == {0: {"id": "toolu_fake01", "name": "get_weather", "arguments": args}}
    assert arg_deltas == 3          # the fake sends the arguments in 3 pieces: relayed as such
    assert finish == "tool_calls"
    assert fake.last().json["tool_choice"] == {"type": "any"}


def test_tool_results_become_tool_use_and_tool_result_blocks(client, fake):
    fake.reply_text = "It is 3 degrees in Oslo and 9 in Bergen."
    resp = client.chat.completions.create(
        model="claude-sonnet", tools=[WEATHER], tool_choice="none",
        messages=[
            {"role": "user", "content": "Weather in Oslo and Bergen?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                {"id": "toolu_b", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_a", "content": "3 C"},
            {"role": "tool", "tool_call_id": "toolu_b",
             "content": [{"type": "text", "text": "9 C"}]}])
    assert resp.choices[0].message.content == fake.reply_text
    sent = fake.last().json
    assert sent["tool_choice"] == {"type": "none"}
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather",
             "input": {"city": "Bergen"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "3 C"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "9 C"}]}]


def test_images_and_requests_the_gateway_refuses(gateway, client, fake):
    png = "data:image/png;base64,iVBORw0KGgo="
    client.chat.completions.create(model="claude-sonnet", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": png}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert fake.last().json["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    fake.clear()
    bad_args = [{"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{not json"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "x"}]
    cases = [
        ({"messages": bad_args}, "messages[1].tool_calls[0].function.arguments"),
        ({"n": 2, "messages": [{"role": "user", "content": "hi"}]}, "n"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
         "messages[0].content[0].image_url.url"),
    ]
    for body, param in cases:
        for stream in (False, True):
            status, _, raw = chat(gateway, {**body, "stream": stream})
            err = error_of(raw)
            assert (status, err["param"], err["type"]) == (400, param, "invalid_request_error"), err
            assert param in err["message"]
    assert "one choice" in error_of(chat(gateway, cases[1][0])[2])["message"]
    assert fake.requests == []          # none of these reached the upstream


# ---------------------------------------------------------------------- c. errors
ERRORS = [
    # upstream status, error type, message, headers → client status, code
    (400, "invalid_request_error", "messages.0.content: Field required", {}, 400, None),
    (400, "invalid_request_error", "Your credit balance is too low to access the API", {},
     429, "upstream_rate_limited"),
    (401, "authentication_error", "invalid x-api-key", {}, 502, "upstream_error"),
    (402, "billing_error", "Your account has a billing problem", {}, 429,
     "upstream_rate_limited"),
    (403, "permission_error", "Your API key does not have permission", {}, 502, "upstream_error"),
    (404, "not_found_error", "model: claude-sonnet-4-5 not found", {}, 404, "model_not_found"),
    (413, "request_too_large", "Request exceeds the maximum allowed size", {}, 413,
     "request_too_large"),
    (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit",
     {"retry-after": "7"}, 429, "upstream_rate_limited"),
    (500, "api_error", "Internal server error", {}, 502, "upstream_error"),
    (504, "timeout_error", "Request timed out", {}, 504, "upstream_timeout"),
    (529, "overloaded_error", "Overloaded", {"retry-after": "3"}, 503, "upstream_overloaded"),
]


def test_every_anthropic_error_class_maps_to_the_contract(gateway, fake):
    for up_status, kind, said, headers, status, code in ERRORS:
        for stream in (False, True):
            fake.fail_next(up_status, anthropic_error(kind, said), headers=headers)
            got, h, raw = chat(gateway, {"stream": stream,
                                         "messages": [{"role": "user", "content": "hi"}]})
            err = error_of(raw)
            where = f"{up_status} {kind} stream={stream}: {err}"
            assert (got, err["code"]) == (status, code), where
            assert "claude" in err["message"], where
            # the upstream's words only for a 4xx about the request (exposure 13.6)
            assert (said in err["message"]) is (code in (None, "model_not_found",
                                                          "request_too_large")), where
            if up_status in (429, 529):
                assert h["retry-after"] == headers["retry-after"], where
            if kind in ("billing_error",) or "credit" in said:     # quota: do not retry
                assert h["x-should-retry"] == "false" and "Retrying will not help" in \
                    err["message"], where
            if up_status == 400 and code is None:
                assert err["type"] == "invalid_request_error", where
    assert len(fake.requests) == 2 * len(ERRORS)


def test_sdk_sees_overload_and_rate_limit(client, fake):
    fake.overloaded_next()
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="claude-sonnet",
                                       messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 503 and exc.value.code == "upstream_overloaded"
    fake.rate_limited_next(retry_after=12)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="claude-sonnet",
                                       messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "upstream_rate_limited"
    assert exc.value.response.headers["retry-after"] == "12"
    assert "rate limit" in exc.value.message


def test_garbage_and_timeout(gateway, fake):
    fake.garbage_next()
    status, _, raw = chat(gateway, {"messages": [{"role": "user", "content": "hi"}]})
    assert (status, error_of(raw)["code"]) == (502, "upstream_error")
    fake.garbage_next()
    status, _, raw = chat(gateway, {"stream": True,
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert (status, error_of(raw)["code"]) == (502, "upstream_error")
    assert "event stream" in error_of(raw)["message"]
    fake.hang_next(3)
    started = time.monotonic()
    status, _, raw = gateway.post("/v1/chat/completions", {
        "model": "claude-slow", "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY)
    assert (status, error_of(raw)["code"]) == (504, "upstream_timeout")
    assert time.monotonic() - started < 2.5


# ---------------------------------------------------------------------- d. broken streams
def _read_until_error(client, fake):
    pieces, started = [], time.monotonic()
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(
                model="claude-sonnet", stream=True,
                messages=[{"role": "user", "content": "tell me"}]):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert time.monotonic() - started < 5
    return pieces, exc.value


def test_upstream_dying_mid_stream_ends_with_an_error_event(client, fake):
    fake.reply_text = "alpha beta gamma delta epsilon zeta"
    fake.stream_events = 6
    fake.die_mid_stream_next(4)          # message_start, block start, 2 deltas, then abort
    pieces, err = _read_until_error(client, fake)
    assert pieces == split_pieces(fake.reply_text, 6)[:2]
    assert err.code == "upstream_error" and "claude" in err.message
    assert not isinstance(err, openai.APIStatusError)       # an SSE error, not an HTTP one


def test_error_event_mid_stream_ends_with_an_error_event(client, fake):
    fake.reply_text = "alpha beta gamma delta epsilon zeta"
    fake.stream_events = 6
    fake.error_mid_stream_next(4)
    pieces, err = _read_until_error(client, fake)
    assert pieces == split_pieces(fake.reply_text, 6)[:2]
    assert err.code == "upstream_overloaded" and "overloaded" in err.message
    assert err.body["type"] == "server_error"


def test_error_event_before_anything_is_an_ordinary_http_error(gateway, fake):
    fake.error_mid_stream_next(0)
    status, headers, raw = chat(gateway, {"stream": True,
                                          "messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and headers["content-type"].startswith("application/json")
    assert error_of(raw)["code"] == "upstream_overloaded"


# ---------------------------------------------------------------------- e. no buffering
def _raw_stream(gateway, body: dict):
    """(seconds since the request, parsed chunk) for every `data:` event, read off the wire."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15)
    started = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={
        "Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = []
    try:
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                if line.startswith(b"data: [DONE]"):
                    events.append((time.monotonic() - started, "[DONE]"))
                    break
                events.append((time.monotonic() - started, json.loads(line[6:])))
    finally:
        conn.close()
    return events


def _content(events):
    return [(t, e["choices"][0]["delta"]["content"]) for t, e in events
            if e != "[DONE]" and e["choices"] and e["choices"][0]["delta"].get("content")]


def test_200_upstream_events_reach_the_client_as_200_events(gateway, fake):
    fake.reply_text = " ".join(f"w{i}" for i in range(200))
    fake.stream_events, fake.stream_delay = 200, 0.005
    events = _raw_stream(gateway, {"model": "claude-sonnet", "stream": True,
                                   "messages": [{"role": "user", "content": "go"}]})
    content = _content(events)
    assert len(content) == 200
    assert [c for _, c in content] == split_pieces(fake.reply_text, 200)
    assert events[-1][1] == "[DONE]"


def test_first_event_arrives_before_the_upstream_has_finished(gateway, fake):
    fake.reply_text = " ".join(f"w{i}" for i in range(100))
    fake.stream_events, fake.stream_delay = 40, 0.05
    events = _raw_stream(gateway, {"model": "claude-sonnet", "stream": True,
                                   "messages": [{"role": "user", "content": "go"}]})
    content = _content(events)
    total = events[-1][0]
    assert len(content) == 40 and total >= 40 * 0.05
    assert content[0][0] < 0.6 < total / 2     # the first piece came long before the end
    assert content[-1][0] - content[0][0] > 1.5  # and the rest trickled in as sent


# ---------------------------------------------------------------------- f. legacy
def test_legacy_completions_stream_and_not(client, fake):
    fake.reply_text = "Once upon a time there was a gateway"
    resp = client.completions.create(model="claude-sonnet", prompt="Tell me a story",
                                     max_tokens=20)
    assert resp.object == "text_completion" and resp.model == "claude-sonnet"
    assert resp.choices[0].text == fake.reply_text and resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 4
    sent = fake.last().json
    assert sent["messages"] == [{"role": "user", "content": "Tell me a story"}]
    assert sent["max_tokens"] == 20 and "stream" not in sent
    chunks = list(client.completions.create(model="claude-sonnet", prompt="Tell me a story",
                                            stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake.reply_text
    assert all(c.object == "text_completion" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == 4
    assert fake.last().json["stream"] is True
    assert fake.last().json["max_tokens"] == 4096


# ---------------------------------------------------------------------- g. the upstream key
def test_upstream_key_never_leaks(gateway, client, fake):
    bodies = []
    for stream in (False, True):
        # the fake refuses the wrong key with its own 401
        status, _, raw = gateway.post("/v1/chat/completions", {
            "model": "claude-wrongkey", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY)
        err = error_of(raw)
        assert (status, err["code"]) == (502, "upstream_error")
        assert "providers.wrongkey.api_key" in err["message"]
        assert fake.last().headers["x-api-key"] == SECRET
        bodies.append(raw)
    # an upstream that echoes the key back in its error message
    fake.fail_next(401, anthropic_error("authentication_error", f"invalid x-api-key {SECRET}"))
    status, _, raw = gateway.post("/v1/chat/completions", {
        "model": "claude-wrongkey", "messages": [{"role": "user", "content": "hi"}]},
        key=MASTER_KEY)
    assert status == 502 and "invalid x-api-key" not in error_of(raw)["message"]
    bodies.append(raw)
    # ... and in a 400, whose message the client does see (scrubbed)
    fake.fail_next(400, anthropic_error("invalid_request_error", f"invalid x-api-key {SECRET}"))
    status, _, raw = gateway.post("/v1/chat/completions", {
        "model": "claude-wrongkey", "messages": [{"role": "user", "content": "hi"}]},
        key=MASTER_KEY)
    assert status == 400 and "invalid x-api-key [redacted]" in error_of(raw)["message"]
    bodies.append(raw)
    # a healthy request and stream, with the right key
    bodies.append(client.chat.completions.create(
        model="claude-sonnet", messages=[{"role": "user", "content": "hi"}]).model_dump_json())
    bodies += [c.model_dump_json() for c in client.chat.completions.create(
        model="claude-sonnet", stream=True, messages=[{"role": "user", "content": "hi"}])]
    assert wait_for(lambda: sum("upstream_error" in line for line in gateway.log) >= 3)
    seen = "\n".join(map(str, bodies)) + "\n".join(gateway.log)
    assert SECRET not in seen and fake.api_key not in seen


def test_client_leaving_a_stream_closes_the_upstream_request(gateway, fake):
    fake.reply_text = " ".join(f"w{i}" for i in range(100))
    fake.stream_events, fake.stream_delay = 50, 0.2
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({
        "model": "claude-sonnet", "stream": True,
        "messages": [{"role": "user", "content": "long"}]}),
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    seen = 0
    while seen < 3:                         # role chunk and two content pieces
        seen += resp.readline().startswith(b"data: ")
    dropped = time.monotonic()
    conn.sock.shutdown(2)
    conn.close()
    assert wait_for(lambda: fake.disconnects, timeout=3)
    assert fake.disconnects[0] - dropped < 1.0
