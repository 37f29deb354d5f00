"""The Responses dialect's pure half: requests → chat, chat answers and streams → Responses,
compaction.  Every answer is checked with the openai SDK's own pydantic types; the requests
are what Codex CLI 0.171.0 really sent (tests/fixtures/codex_responses.json)."""
from __future__ import annotations

import base64
import copy
import json
import pathlib
import zlib

import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.compacted_response import CompactedResponse

from apiarium.dialects import responses as R
from apiarium.dialects import responses_compaction
from apiarium.errors import (
    ApiError,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

CODEX = json.loads((pathlib.Path(__file__).parent / "fixtures" / "codex_responses.json")
                   .read_text())
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}
# Codex CLI acts on these response.failed codes; openai-python's ResponseError.code Literal
# does not list them (it lists server_error, rate_limit_exceeded, invalid_prompt, ...).
CODEX_ONLY_CODES = {"context_length_exceeded", "insufficient_quota"}
SEAL = R.CompactionSeal(b"k" * 32, "key-hash-a")       # what the handler makes per request


def codex(name: str) -> dict:
    return copy.deepcopy(CODEX[name])


def base(**extra) -> dict:
    return {"model": "m", "input": "hi", **extra}


# ---------------------------------------------------------------------------- to_chat

def test_codex_text_turn_translates():
    body = codex("text_turn")
    chat = R.to_chat(body)
    roles = [item["role"] for item in body["input"]]
    assert [m["role"] for m in chat["messages"]] == roles
    assert chat["messages"][-1]["content"] == body["input"][-1]["content"][0]["text"]
    two_parts = body["input"][1]["content"]           # the developer message with two parts
    assert [p["text"] for p in chat["messages"][1]["content"]] == [p["text"] for p in two_parts]
    expected = [t["name"] for t in body["tools"] if t["type"] == "function"]
    expected += [f"{t['name']}__{m['name']}" for t in body["tools"] if t["type"] == "namespace"
                 for m in t["tools"]]
    assert sorted(t["function"]["name"] for t in chat["tools"]) == sorted(expected)
    exec_tool = next(t for t in body["tools"] if t.get("name") == "exec_command")
    chat_exec = next(t for t in chat["tools"] if t["function"]["name"] == "exec_command")
    assert chat_exec["function"]["parameters"] == exec_tool["parameters"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is True
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    for ignored in ("store", "include", "prompt_cache_key", "client_metadata", "input"):
        assert ignored not in chat


def test_codex_tool_turn_translates_the_call_and_its_output():
    body = codex("tool_turn_result")
    call, output = body["input"][-2], body["input"][-1]
    chat = R.to_chat(body)
    assistant, tool = chat["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert assistant["tool_calls"] == [{"id": call["call_id"], "type": "function", "function": {
        "name": call["name"], "arguments": call["arguments"]}}]
    assert tool == {"role": "tool", "tool_call_id": output["call_id"],
                    "content": output["output"]}


def test_codex_title_request_asks_for_structured_output_without_tools():
    body = codex("title")
    chat = R.to_chat(body)
    fmt = body["text"]["format"]
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": fmt["name"], "schema": fmt["schema"], "strict": fmt["strict"]}}
    for absent in ("tools", "tool_choice", "parallel_tool_calls"):   # OpenAI refuses them
        assert absent not in chat                                     # without tools


def test_custom_tool_becomes_a_one_string_function_and_its_history_follows():
    body = codex("builtin_tool_call")
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch\n"
    body["input"] += [
        {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": patch},
        {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"}]
    chat = R.to_chat(body)
    custom = next(t for t in body["tools"] if t["type"] == "custom")
    fn = next(t["function"] for t in chat["tools"] if t["function"]["name"] == custom["name"])
    assert fn["parameters"]["required"] == ["input"]
    assert fn["parameters"]["properties"]["input"]["type"] == "string"
    assert custom["format"]["definition"] in fn["parameters"]["properties"]["input"][
        "description"]
    assert {t["function"]["name"] for t in chat["tools"]}.isdisjoint({"web_search",
                                                                      "tool_search"})
    assistant, tool = chat["messages"][-2:]
    (call,) = assistant["tool_calls"]
    assert call["function"]["name"] == "apply_patch"
    assert json.loads(call["function"]["arguments"]) == {"input": patch}
    assert tool == {"role": "tool", "tool_call_id": "call_p", "content": "Done!"}


def test_history_items_group_as_chat_turns():
    body = base(instructions="Be brief.", input=[
        {"type": "message", "role": "user", "content": "list files"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                         "text": "I should run ls."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Running it."}]},
        {"type": "function_call", "call_id": "c1", "name": "sh", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call", "call_id": "c2", "name": "sh", "arguments": '{"cmd":"pwd"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
        {"type": "function_call_output", "call_id": "c2", "output": "/ws"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-opaque"},
        {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
    ])
    messages = R.to_chat(body)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool",
                                             "user"]
    assert messages[0]["content"] == "Be brief."
    assistant = messages[2]
    assert assistant["content"] == "Running it."
    assert assistant["reasoning_content"] == "I should run ls."
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert [m["tool_call_id"] for m in messages[3:5]] == ["c1", "c2"]
    assert all("reasoning_content" not in m for m in messages if m is not assistant)


def test_namespaced_history_call_uses_the_flattened_tool_name():
    body = codex("text_turn")
    body["input"] += [
        {"type": "function_call", "call_id": "c9", "name": "spawn_agent",
         "namespace": "multi_agent_v1", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c9", "output": "agent-1"}]
    chat = R.to_chat(body)
    name = chat["messages"][-2]["tool_calls"][0]["function"]["name"]
    assert name in {t["function"]["name"] for t in chat["tools"]}
    assert R.from_chat(_answer(tool_calls=[("c10", name, "{}")]), body)["output"][0][
        "namespace"] == "multi_agent_v1"


PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def test_images_in_messages_and_in_tool_output():
    body = base(input=[
        {"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": PNG, "detail": "low"},
            {"type": "input_image", "image_url": "https://example.com/a.jpg"}]},
        {"type": "function_call", "call_id": "v1", "name": "view_image", "arguments": "{}"},
        {"type": "function_call", "call_id": "v2", "name": "view_image", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "v1", "output": [
            {"type": "input_image", "image_url": PNG}]},
        {"type": "function_call_output", "call_id": "v2", "output": [
            {"type": "input_text", "text": "second"}]},
    ])
    messages = R.to_chat(body)["messages"]
    assert messages[0]["content"][1:] == [
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert messages[3]["content"] == "second"
    assert {"type": "image_url", "image_url": {"url": PNG}} in messages[4]["content"]


@pytest.mark.parametrize(("extra", "expected"), [
    ({"reasoning": {"effort": "high", "summary": "auto"}}, {"reasoning_effort": "high"}),
    ({"max_output_tokens": 300}, {"max_completion_tokens": 300}),
    ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
    ({"user": "u-1"}, {"user": "u-1"}),
    ({"safety_identifier": "s-1"}, {"user": "s-1"}),
    ({"text": {"format": {"type": "json_object"}, "verbosity": "low"}},
     {"response_format": {"type": "json_object"}}),
    ({"text": {"format": {"type": "text"}}}, {}),
    ({"metadata": {"a": "b"}, "store": True, "include": ["reasoning.encrypted_content"],
      "prompt_cache_key": "k", "service_tier": "auto", "truncation": "auto"}, {}),
    ({"stream": False}, {}),
])
def test_scalar_fields(extra, expected):
    chat = R.to_chat(base(**extra))
    assert {k: v for k, v in chat.items() if k not in ("model", "messages")} == expected


FN = {"type": "function", "name": "sh", "parameters": {"type": "object", "properties": {}}}
PATCH = {"type": "custom", "name": "apply_patch"}
NS = {"type": "namespace", "name": "crm", "description": "d", "tools": [
    {"type": "function", "name": "find", "parameters": {"type": "object"}}]}


@pytest.mark.parametrize(("choice", "expected", "names"), [
    ("required", "required", ["sh", "apply_patch", "crm__find"]),
    ({"type": "function", "name": "sh"}, {"type": "function", "function": {"name": "sh"}},
     ["sh", "apply_patch", "crm__find"]),
    ({"type": "custom", "name": "apply_patch"},
     {"type": "function", "function": {"name": "apply_patch"}},
     ["sh", "apply_patch", "crm__find"]),
    ({"type": "function", "name": "find", "namespace": "crm"},
     {"type": "function", "function": {"name": "crm__find"}}, ["sh", "apply_patch", "crm__find"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "sh"}]},
     "required", ["sh"]),
])
def test_tool_choice(choice, expected, names):
    chat = R.to_chat(base(tools=[FN, PATCH, NS], tool_choice=choice, parallel_tool_calls=False))
    assert chat["tool_choice"] == expected
    assert [t["function"]["name"] for t in chat["tools"]] == names
    assert chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(("field", "value"), [
    ("previous_response_id", "resp_123"),
    ("conversation", "conv_123"),
    ("conversation", {"id": "conv_123"}),
    ("prompt", {"id": "pmpt_123"}),
    ("background", True),
])
def test_stateful_fields_are_refused_by_name(field, value):
    with pytest.raises(InvalidRequest) as caught:
        R.to_chat(base(**{field: value}))
    assert caught.value.status == 400 and caught.value.param == field
    assert field in caught.value.message
    with pytest.raises(InvalidRequest):
        R.compact(base(**{field: value}), SEAL)
    R.check_portable(base(**{field: value}), native_ok=True)      # not a tools matter


def test_stateless_equivalents_are_accepted():
    chat = R.to_chat(base(store=False, previous_response_id=None, background=False))
    assert chat["messages"] == [{"role": "user", "content": "hi"}]


def _item(**fields) -> list:
    return [{"type": "message", "role": "user", "content": "hi"}, fields]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi"}, "model"),
    (base(input=42), "input"),
    (base(input=None), "input"),
    (base(input=_item(type="item_reference", id="msg_1")), "input[1]"),
    (base(input=_item(type="mcp_call", id="m")), "input[1].type"),
    (base(input=_item(role="user")), "input[1].content"),
    (base(input=_item(type="message", role="robot", content="x")), "input[1].role"),
    (base(input=[{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "a"}, {"type": "input_video", "url": "x"}]}]),
     "input[0].content[1].type"),
    (base(input=[{"role": "user", "content": [{"type": "input_image",
                                               "image_url": "ftp://x/y.png"}]}]),
     "input[0].content[0].image_url"),
    (base(input=[{"role": "user", "content": [{"type": "input_image",
                                               "image_url": "data:image/png;base64,@@"}]}]),
     "input[0].content[0].image_url"),
    (base(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]),
     "input[0].content[0].file_id"),
    (base(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
     "input[0].content[0].file_id"),
    (base(input=[{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]),
     "input[0].content[0].type"),
    (base(input=_item(type="function_call", name="sh", arguments="{}")), "input[1].call_id"),
    (base(input=_item(type="function_call", call_id="c", name="sh", arguments="{oops")),
     "input[1].arguments"),
    (base(input=_item(type="function_call_output", call_id="c")), "input[1].output"),
    (base(input=_item(type="reasoning", summary=[{"type": "summary_text", "text": 3}])),
     "input[1].summary[0].text"),
    (base(input=_item(type="compaction_trigger")), "input[1]"),
    (base(input=_item(type="compaction", encrypted_content=responses_compaction
                      .COMPACTION_PREFIX + "not-base64!")), "input[1].encrypted_content"),
    (base(input=["hi"]), "input[0]"),
    (base(tools=[FN, {"type": "code_interpreter", "container": {"type": "auto"}}]), "tools[1]"),
    (base(tools=[{"type": "namespace", "name": "n", "tools": [
        FN, {"type": "web_search"}]}]), "tools[0].tools[1].type"),
    (base(tools=[{"type": "function", "parameters": {}}]), "tools[0].name"),
    (base(tools={"type": "function"}), "tools"),
    (base(tools=[FN], tool_choice={"type": "function", "name": "nope"}), "tool_choice.name"),
    (base(tools=[FN], tool_choice={"type": "web_search"}), "tool_choice"),
    (base(tool_choice="required"), "tool_choice"),
    (base(temperature=3), "temperature"),
    (base(top_p="high"), "top_p"),
    (base(max_output_tokens=0), "max_output_tokens"),
    (base(stream="yes"), "stream"),
    (base(text={"format": {"type": "xml"}}), "text.format.type"),
    (base(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
    (base(reasoning={"effort": "max"}), "reasoning.effort"),
    (base(instructions=["a"]), "instructions"),
])
def test_bad_requests_are_refused_naming_the_field(body, param):
    with pytest.raises(InvalidRequest) as caught:
        R.to_chat(body)
    assert caught.value.param == param
    assert caught.value.envelope()["error"]["param"] == param
    assert caught.value.status == 400


@pytest.mark.parametrize("hosted", ["file_search", "code_interpreter", "local_shell",
                                    "image_generation", "computer_use_preview", "mcp"])
def test_hosted_tools_are_refused_unless_the_upstream_is_openai(hosted):
    body = base(tools=[FN, {"type": hosted}])
    with pytest.raises(InvalidRequest) as caught:
        R.check_portable(body)
    assert caught.value.param == "tools[1]" and hosted in caught.value.message
    R.check_portable(body, native_ok=True)


def test_codex_default_hosted_tools_are_dropped_unless_asked_to_refuse():
    body = codex("builtin_tool_call")
    index = next(i for i, t in enumerate(body["tools"]) if t["type"] == "tool_search")
    R.check_portable(body)
    with pytest.raises(InvalidRequest) as caught:
        R.check_portable(body, skip=())
    assert caught.value.param == f"tools[{index}]"
    with pytest.raises(InvalidRequest):
        R.to_chat(body, skip=())


# -------------------------------------------------------------------------- from_chat

def _answer(content=None, tool_calls=(), finish="stop", usage=None, reasoning=None) -> dict:
    message = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [{"id": i, "type": "function",
                                  "function": {"name": n, "arguments": a}}
                                 for i, n, a in tool_calls]
    if reasoning:
        message["reasoning_content"] = reasoning
    out = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_800_000_000,
           "model": "m", "choices": [{"index": 0, "message": message, "logprobs": None,
                                      "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


def _valid(response: dict) -> Response:
    return Response.model_validate(response)


def test_text_answer_validates_and_echoes_the_request():
    request = base(instructions="Be brief.", temperature=0.3, tools=[FN], tool_choice="auto",
                   metadata={"k": "v"}, max_output_tokens=50)
    response = _valid(R.from_chat(_answer("Hello there."), request))
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.output_text == "Hello there."
    assert response.instructions == "Be brief." and response.temperature == 0.3
    assert [t.name for t in response.tools] == ["sh"] and response.tool_choice == "auto"
    assert response.metadata == {"k": "v"} and response.max_output_tokens == 50
    assert response.created_at == 1_800_000_000


def test_tool_call_answer_gives_function_call_items():
    calls = [("call_a", "sh", '{"cmd":"ls"}'), ("call_b", "sh", '{"cmd":"pwd"}')]
    response = _valid(R.from_chat(_answer(None, calls, "tool_calls"), base(tools=[FN])))
    assert [(o.type, o.call_id, o.name, o.arguments, o.status) for o in response.output] == [
        ("function_call", i, n, a, "completed") for i, n, a in calls]
    assert len({o.id for o in response.output}) == 2


def test_custom_tool_answer_gives_custom_tool_call_items():
    patch = "*** Begin Patch\n*** End Patch\n"
    answer = _answer(None, [("call_p", "apply_patch", json.dumps({"input": patch}))],
                     "tool_calls")
    (item,) = _valid(R.from_chat(answer, codex("builtin_tool_call"))).output
    assert (item.type, item.call_id, item.name, item.input) == (
        "custom_tool_call", "call_p", "apply_patch", patch)


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter")])
def test_finish_reasons(finish, status, reason):
    response = _valid(R.from_chat(_answer("partial", finish=finish), base()))
    assert response.status == status
    assert (response.incomplete_details and response.incomplete_details.reason) == reason
    assert response.output[0].status == ("completed" if status == "completed" else "incomplete")


def test_usage_with_cached_and_reasoning_tokens():
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
             "prompt_tokens_details": {"cached_tokens": 1024},
             "completion_tokens_details": {"reasoning_tokens": 256}}
    response = _valid(R.from_chat(_answer("ok", usage=usage, reasoning="Thinking."), base()))
    u = response.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (1200, 300, 1500)
    assert u.input_tokens_details.cached_tokens == 1024
    assert u.output_tokens_details.reasoning_tokens == 256
    assert [o.type for o in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Thinking."


def test_refusal_answer():
    answer = _answer(None)
    answer["choices"][0]["message"]["refusal"] = "I can't help with that."
    (item,) = _valid(R.from_chat(answer, base())).output
    assert item.content[0].type == "refusal"


# ----------------------------------------------------------------------------- streams

def _chunk(delta=None, finish=None, usage=None) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": "m", "choices": [] if delta is None else [
                 {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk)


def _call_delta(index, piece, call_id=None, name=None) -> dict:
    fn = {"arguments": piece}
    tc = {"index": index, "function": fn}
    if call_id:
        tc.update(id=call_id, type="function")
        fn["name"] = name
    return {"tool_calls": [tc]}


def _run(stream: R.ResponsesStream, frames) -> list[dict]:
    """Feed ``frames``, then ``finish()`` (a no-op after [DONE] or a failure); the events,
    checked by ``_check``."""
    raw = []
    for frame in frames:
        raw += stream.feed(frame)
    return _check(raw + stream.finish())


def _check(raw: list[bytes]) -> list[dict]:
    """Parse and check every event: the SDK type, ``event:`` = ``type``, sequence numbers
    0, 1, 2, ..., exactly one terminal event, last."""
    events = []
    for blob in raw:
        assert blob.endswith(b"\n\n")
        head, data = blob[:-2].split(b"\n", 1)
        event = orjson.loads(data.removeprefix(b"data: "))
        assert head == b"event: " + event["type"].encode()
        checked = copy.deepcopy(event)
        error = (checked.get("response") or {}).get("error")
        if error and error["code"] in CODEX_ONLY_CODES:
            error["code"] = "server_error"       # see CODEX_ONLY_CODES
        EVENTS.validate_python(checked)
        if event["type"] in TERMINAL | {"response.created", "response.in_progress"}:
            Response.model_validate(checked["response"])
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] in TERMINAL for e in events].count(True) == 1
    assert events[-1]["type"] in TERMINAL and events[0]["type"] == "response.created"
    return events


def _types(events, prefix="") -> list[str]:
    return [e["type"] for e in events if e["type"].startswith(prefix)]


def _deltas(events, kind, item_id) -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind and e["item_id"] == item_id)


def test_stream_text_only():
    pieces = ["Hel", "lo, ", "wörld", "!"]
    usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
             "prompt_tokens_details": {"cached_tokens": 8}}
    frames = [_chunk({"role": "assistant", "content": ""}), b": keep-alive"]
    frames += [_chunk({"content": p}) for p in pieces]
    frames += [_chunk({}, "stop"), _chunk(usage=usage), b"data: [DONE]"]
    events = _run(R.ResponsesStream(codex("text_turn")), frames)
    assert _types(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(pieces),
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    item_id = events[2]["item"]["id"]
    assert _deltas(events, "response.output_text.delta", item_id) == "".join(pieces)
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "".join(pieces)
    assert final["usage"]["input_tokens"] == 12 and final["usage"]["total_tokens"] == 16
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 8
    assert final["id"] == events[0]["response"]["id"]


def test_stream_text_then_two_parallel_tool_calls():
    args_a, args_b = '{"cmd": "echo hello"}', '{"cmd": "pwd"}'
    frames = [_chunk({"role": "assistant", "content": "Running "}), _chunk({"content": "both."}),
              _chunk(_call_delta(0, "", "call_a", "exec_command")),
              _chunk(_call_delta(0, args_a[:8])),
              _chunk(_call_delta(1, "", "call_b", "exec_command")),
              _chunk(_call_delta(1, args_b[:5])),
              _chunk(_call_delta(0, args_a[8:])),               # interleaved, as some do
              _chunk(_call_delta(1, args_b[5:])),
              _chunk({}, "tool_calls"), b"data: [DONE]"]
    events = _run(R.ResponsesStream(codex("text_turn")), frames)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = {e["item"]["id"]: e for e in events if e["type"] == "response.output_item.done"}
    assert [i["type"] for i in added] == ["message", "function_call", "function_call"]
    message_done = events.index(done[added[0]["id"]])
    first_call_added = next(i for i, e in enumerate(events)
                            if e["type"] == "response.output_item.added"
                            and e["item"]["type"] == "function_call")
    assert message_done < first_call_added          # the text item closes before the calls
    for item, call_id, args in ((added[1], "call_a", args_a), (added[2], "call_b", args_b)):
        assert _deltas(events, "response.function_call_arguments.delta", item["id"]) == args
        final = done[item["id"]]["item"]
        assert (final["call_id"], final["name"], final["arguments"], final["status"]) == (
            call_id, "exec_command", args, "completed")
        (args_done,) = [e for e in events if e["type"] ==
                        "response.function_call_arguments.done" and e["item_id"] == item["id"]]
        assert args_done["arguments"] == args
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call", "function_call"]
    assert [e["output_index"] for e in events if "output_index" in e and e["type"] ==
            "response.output_item.added"] == [0, 1, 2]


def test_stream_tool_call_then_text_closes_the_call_first():
    frames = [_chunk(_call_delta(0, "{}", "call_x", "get_goal")),
              _chunk({"content": "Checked."}), _chunk({}, "stop"), b"data: [DONE]"]
    events = _run(R.ResponsesStream(codex("text_turn")), frames)
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in events
             if e["type"].startswith("response.output_item")]
    assert kinds == [("response.output_item.added", "function_call"),
                     ("response.output_item.done", "function_call"),
                     ("response.output_item.added", "message"),
                     ("response.output_item.done", "message")]


def test_stream_reasoning_then_text():
    thoughts, answer = ["The user ", "greets me."], ["Hi", "!"]
    frames = [_chunk({"role": "assistant", "reasoning_content": t}) for t in thoughts]
    frames += [_chunk({"content": a}) for a in answer]
    frames += [_chunk({}, "stop"), _chunk(usage={
        "prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
        "completion_tokens_details": {"reasoning_tokens": 6}}), b"data: [DONE]"]
    events = _run(R.ResponsesStream(base(reasoning={"summary": "auto"})), frames)
    assert _types(events, "response.reasoning_summary") == [
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * len(thoughts),
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done"]
    reasoning, message = (e["item"] for e in events if e["type"] == "response.output_item.done")
    assert reasoning["summary"][0]["text"] == "".join(thoughts)
    assert _deltas(events, "response.reasoning_summary_text.delta", reasoning["id"]) == \
        "".join(thoughts)
    assert message["content"][0]["text"] == "".join(answer)
    last_reasoning = max(i for i, e in enumerate(events) if "reasoning" in e["type"])
    first_text = min(i for i, e in enumerate(events) if e["type"] == "response.output_text.delta")
    assert last_reasoning < first_text
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] == 6


def test_stream_custom_tool_call():
    patch = "*** Begin Patch\n*** Add File: b.txt\n+x\n*** End Patch\n"
    arguments = json.dumps({"input": patch})
    frames = [_chunk(_call_delta(0, "", "call_p", "apply_patch")),
              *[_chunk(_call_delta(0, arguments[i:i + 7])) for i in range(0, len(arguments), 7)],
              _chunk({}, "tool_calls"), b"data: [DONE]"]
    events = _run(R.ResponsesStream(codex("builtin_tool_call")), frames)
    (done,) = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done["input"] == patch
    item = events[-2]["item"]
    assert (item["type"], item["name"], item["input"], item["call_id"]) == (
        "custom_tool_call", "apply_patch", patch, "call_p")
    assert not _types(events, "response.function_call_arguments")


def test_stream_length_is_incomplete():
    frames = [_chunk({"content": "cut sh"}), _chunk({}, "length"), b"data: [DONE]"]
    events = _run(R.ResponsesStream(base(max_output_tokens=3)), frames)
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize(("error", "code"), [
    (RateLimited("Upstream rate limit.", retry_after=1.5, code="upstream_rate_limited"),
     "rate_limit_exceeded"),
    (QuotaExceeded("You exceeded your quota."), "insufficient_quota"),
    (InvalidRequest("prompt is too long: 250000 tokens > 200000 maximum"),
     "context_length_exceeded"),
    (UpstreamError("The upstream answered 500."), "server_error"),
    (UpstreamTimeout("No answer in 600 s."), "server_error"),
    (InvalidRequest("Bad image."), "invalid_prompt"),
])
def test_stream_fails_mid_stream(error, code):
    stream = R.ResponsesStream(codex("text_turn"))
    frames = [_chunk({"content": "Half an ans"}), _chunk(_call_delta(0, '{"c', "c1", "sh"))]
    raw = []
    for frame in frames:
        raw += stream.feed(frame)
    raw += stream.fail(error)
    assert stream.fail(error) == [] and stream.finish() == [] and stream.feed(frames[0]) == []
    events = _check(raw)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == code
    if code == "rate_limit_exceeded":
        assert "try again in 1.5s" in failed["response"]["error"]["message"]
    partial = failed["response"]["output"]
    assert partial[0]["content"][0]["text"] == "Half an ans"
    assert partial[0]["status"] == "completed"          # closed when the call began
    assert partial[1]["status"] == "incomplete" and partial[1]["arguments"] == '{"c'
    assert _types(events).count("response.failed") == 1


def test_stream_error_frame_fails_it():
    error = {"error": {"message": "Rate limited upstream.", "type": "rate_limit_error",
                       "param": None, "code": "upstream_rate_limited"}}
    frames = [_chunk({"content": "partial"}), b"data: " + orjson.dumps(error),
              _chunk({"content": "never seen"})]
    events = _run(R.ResponsesStream(base()), frames)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "rate_limit_exceeded",
                                               "message": "Rate limited upstream."}
    assert "never seen" not in json.dumps(events)


def test_stream_without_done_or_frames():
    events = _run(R.ResponsesStream(base()), [_chunk({"content": "a"})])    # finish() ends it
    assert events[-1]["type"] == "response.completed"
    assert _run(R.ResponsesStream(base()), [])[-1]["response"]["output"] == []


def test_failed_event_alone():
    blob = R.failed_event(UpstreamError("Nobody answered."), base())
    event = orjson.loads(blob.split(b"data: ", 1)[1])
    EVENTS.validate_python(event)
    assert blob.startswith(b"event: response.failed\n")
    assert event["response"]["error"] == {"code": "server_error", "message": "Nobody answered."}


def test_failure_codes_from_plain_api_errors():
    assert R.failure(ApiError("x", code="context_length_exceeded", status=400))["code"] == \
        "context_length_exceeded"
    assert R.failure(ApiError("boom"))["code"] == "server_error"


# -------------------------------------------------------------------------- compaction

def test_codex_compaction_trigger_round_trip():
    trigger = codex("compaction_trigger")
    assert R.is_compaction_trigger(trigger) and not R.is_compaction_trigger(codex("text_turn"))
    response = _valid(R.compaction_response(trigger, SEAL))
    (item,) = response.output
    assert item.type == "compaction" and item.encrypted_content
    events = [orjson.loads(b.split(b"data: ", 1)[1]) for b in R.stream_response(
        R.compaction_response(trigger, SEAL))]
    for event in events:
        EVENTS.validate_python(event)
    assert _types(events) == ["response.created", "response.in_progress",
                              "response.output_item.added", "response.output_item.done",
                              "response.completed"]               # what Codex was answered
    assert [e["sequence_number"] for e in events] == list(range(5))
    # The next turn, as Codex sent it: its prompts again (new ids), then the compaction item.
    after = codex("after_compaction")
    after["input"][-1] = item.model_dump()
    original = copy.deepcopy(trigger)
    original["input"] = original["input"][:-1]
    assert R.to_chat(after, seal=SEAL)["messages"] == R.to_chat(original)["messages"]


def test_compact_endpoint_round_trip():
    body = codex("tool_turn_result")
    compacted = CompactedResponse.model_validate(
        R.compact({"model": body["model"], "input": body["input"], "instructions": "Compact."},
                  SEAL))
    assert compacted.object == "response.compaction"
    (item,) = compacted.output
    later = codex("tool_turn_result")
    later["input"] = [item.model_dump(), {"role": "user", "content": "and now?"}]
    messages = R.to_chat(later, seal=SEAL)["messages"]
    assert messages[:-1] == R.to_chat(body)["messages"]
    assert messages[-1] == {"role": "user", "content": "and now?"}


def test_compaction_summary_and_foreign_items():
    summary = R.compaction_item(summary="The user ran echo hello; it printed hello.",
                                seal=SEAL)
    foreign = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAAB-openai"}
    chat = R.to_chat(base(input=[foreign, summary, {"role": "user", "content": "next?"}]),
                     seal=SEAL)
    assert [m["role"] for m in chat["messages"]] == ["user", "user"]
    assert chat["messages"][0]["content"].endswith("it printed hello.")


def _signed(payload: object, seal: R.CompactionSeal = SEAL) -> dict:
    """A compaction item holding ``payload`` as the gateway would sign it (whatever it is)."""
    return {"type": "compaction",
            "encrypted_content": seal.seal(zlib.compress(orjson.dumps(payload)))}


def _refusal(items: list, seal: R.CompactionSeal | None = SEAL) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        R.to_chat(base(input=items), seal=seal)
    assert caught.value.status == 400
    return caught.value


def test_compaction_is_size_bounded(monkeypatch):
    monkeypatch.setattr(responses_compaction, "MAX_COMPACTION_BYTES", 1000)
    with pytest.raises(InvalidRequest) as caught:
        R.compact(base(input=[{"role": "user", "content": "x" * 2000}]), SEAL)
    assert caught.value.status == 400 and caught.value.param == "input"
    big = _signed({"items": [{"role": "user", "content": "y" * 5000}]})
    assert _refusal([big]).param == "input[0].encrypted_content"
    # the cap is the request's, over all its compaction items
    half = _signed({"items": [{"role": "user", "content": "z" * 600}]})
    R.to_chat(base(input=[half]), seal=SEAL)
    err = _refusal([half, half])
    assert err.param == "input[1].encrypted_content" and "in all" in err.message
    monkeypatch.setattr(responses_compaction, "MAX_COMPACTION_ITEMS", 3)
    two = _signed({"items": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    R.to_chat(base(input=[two]), seal=SEAL)
    assert _refusal([two, two]).param == "input[1].encrypted_content"
    with pytest.raises(InvalidRequest):
        R.compact(base(input=[{"role": "user", "content": "a"}] * 4), SEAL)


def test_compaction_items_are_signed_for_their_key():
    item = R.compact(base(input=[{"role": "user", "content": "the word is honey"}]),
                     SEAL)["output"][0]
    content = item["encrypted_content"]
    assert content.startswith("apiarium.compaction.v2:")
    assert "honey" in json.dumps(R.to_chat(base(input=[item]), seal=SEAL))
    other = R.CompactionSeal(b"k" * 32, "key-hash-b")               # another key
    rotated = R.CompactionSeal(b"j" * 32, "key-hash-a")             # another secret
    for seal in (other, rotated, None):
        err = _refusal([item], seal)
        assert err.param == "input[0].encrypted_content"
        assert err.code == "invalid_encrypted_content" and "this API key" in err.message
    packed, tag = content.rsplit(".", 1)
    altered = packed[:-2] + ("A" if packed[-2] != "A" else "B") + packed[-1]
    for forged in (f"{altered}.{tag}", packed, f"{packed}.{tag[:-1]}",
                   f"{packed}.{tag}x", content.replace("v2:", "v3:", 1)):
        assert _refusal([{**item, "encrypted_content": forged}]).param in (
            "input[0].encrypted_content", "input")    # v3 is nobody's: dropped, no message
    # an unsigned (v1) item, as this gateway used to make them, is refused by name
    v1 = "apiarium.compaction.v1:" + base64.urlsafe_b64encode(zlib.compress(orjson.dumps(
        {"items": [{"role": "user", "content": "hi"}]}))).decode()
    err = _refusal([{"type": "compaction", "encrypted_content": v1}])
    assert err.param == "input[0].encrypted_content" and "v1" in err.message


def test_what_a_compaction_holds_is_checked_like_direct_input():
    def nested(depth: int) -> object:
        value: object = "deep"
        for _ in range(depth):
            value = [value]
        return value
    ok = {"role": "user", "content": [{"type": "input_text", "text": "x", "n": nested(120)}]}
    R.to_chat(base(input=[_signed({"items": [ok]})]), seal=SEAL)
    deep = {"role": "user", "content": [{"type": "input_text", "text": "x", "n": nested(600)}]}
    packed = zlib.compress(json.dumps({"items": [deep]}).encode())   # orjson would not write it
    err = _refusal([{"type": "compaction", "encrypted_content": SEAL.seal(packed)}])
    assert err.param == "input[0].encrypted_content" and "levels deep" in err.message
    assert _refusal([_signed({"items": [{"type": "item_reference", "id": "msg_1"}]})]
                    ).param == "input[0]"
    assert _refusal([_signed({"items": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]})]).param == "input[0].content[0].file_id"
    nest = _signed({"items": [_signed({"items": [{"role": "user", "content": "hi"}]})]})
    assert _refusal([nest]).code == "invalid_encrypted_content"
    for held in ({"items": "no"}, ["a"], {"items": [3]}):
        assert _refusal([_signed(held)]).code == "invalid_encrypted_content"


def test_compactions_drop_what_they_repeat_in_one_pass():
    def msg(text: str, **extra) -> dict:
        return {"role": "user", "content": text, **extra}
    first = R.compaction_item([msg("x"), msg("y")], seal=SEAL)
    second = R.compaction_item([msg("y"), msg("z")], seal=SEAL)
    items = [msg("x", id="m0"), first, msg("y", id="m2"), second, msg("z", id="m4"),
             {"type": "compaction", "encrypted_content": "gAAAA-openai"}]
    got = responses_compaction.expand_compactions(items, SEAL, keep_foreign=True)
    # the x before the first is held by it; the y after it is held by the second, and so is
    # the first's y; the z after the second stands; OpenAI's item is kept as it is
    assert got == [("input[1]", msg("x")), ("input[3]", msg("y")), ("input[3]", msg("z")),
                   ("input[4]", msg("z", id="m4")), ("input[5]", items[5])]


def test_compact_checks_the_items_it_keeps():
    with pytest.raises(InvalidRequest) as caught:
        R.compact(base(input=_item(type="function_call", name="x", arguments="{}")), SEAL)
    assert caught.value.param == "input[1].call_id"
