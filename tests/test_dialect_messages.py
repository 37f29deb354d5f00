"""The Anthropic Messages dialect, translation only (no server): requests shaped like Claude
Code's → the internal chat request; chat answers and chunk streams → Anthropic Messages and
events, checked with the anthropic SDK's own types and, through an in-memory transport, its
own client; errors → Anthropic's envelope; the count_tokens estimate.

Test inputs are checked too: Anthropic requests against the SDK's MessageCreateParams, chat
answers and chunks against the openai SDK's types, so the fixtures are what real peers send."""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
from pathlib import Path

import anthropic
import httpx2
import openai.types.chat as oa
import pydantic
import pytest
from anthropic.types import Message, MessageCreateParams, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from openai.types.chat import completion_create_params as chat_params

from apiarium.dialects import anthropic_answer as answer
from apiarium.dialects import anthropic_messages as messages
from apiarium.dialects import anthropic_stream as stream_mod
from apiarium.errors import (
    ApiError,
    AuthError,
    BodyTooLarge,
    Forbidden,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamPassthrough,
    UpstreamTimeout,
)

# the captures of what Claude Code sent, in the project's shared/ folder (beside the checkout,
# as CI lays it out; or the workplace's)
CAPTURES = next((p for p in (Path(__file__).resolve().parents[2] / "shared",
                             Path("/work/shared")) if p.is_dir()),
                Path("/work/shared")) / "reference" / "agent-captures"
ANTHROPIC_REQUEST = pydantic.TypeAdapter(MessageCreateParams)
CHAT_REQUEST = {True: pydantic.TypeAdapter(chat_params.CompletionCreateParamsStreaming),
                False: pydantic.TypeAdapter(chat_params.CompletionCreateParamsNonStreaming)}
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
BASH = {"name": "Bash", "description": "Run a shell command.",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}


# ---------------------------------------------------------------------- helpers
def _force(value):
    """Walk a pydantic-validated TypedDict, consuming its lazy iterables (so every nested
    item is really validated)."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    return [_force(v) for v in value]


def valid_anthropic_request(body: dict) -> dict:
    _force(ANTHROPIC_REQUEST.validate_python(body))
    return body


def chat_of(body: dict, **kw) -> dict:
    """to_chat, with both its input and its output checked by the vendors' SDK types."""
    valid_anthropic_request(body)
    chat = messages.to_chat(body, **kw)
    _force(CHAT_REQUEST[bool(chat.get("stream"))].validate_python(chat))
    return chat


def request(*msgs, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": list(msgs), **extra}


def user(*content) -> dict:
    return {"role": "user", "content": list(content) if len(content) != 1
            or not isinstance(content[0], str) else content[0]}


def text(t: str, **extra) -> dict:
    return {"type": "text", "text": t, **extra}


def captured(name: str) -> list[dict]:
    if not (CAPTURES / name).is_file():
        pytest.skip(f"the Claude Code capture {name} is not here (shared/ is not beside this "
                    f"checkout)")
    return [r["body"] for r in json.loads((CAPTURES / name).read_text())]


def refused(body: dict, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        messages.to_chat(body, **kw)
    assert caught.value.status == 400
    return caught.value


# ---------------------------------------------------------------------- requests
@pytest.mark.parametrize("name, turn, effort", [
    ("claude-code-text.json", 0, "high"),            # adaptive + output_config.effort high
    ("claude-code-tool-call.json", 0, "high"),
    ("claude-code-tool-call.json", 1, "high"),
    ("claude-code-haiku-model.json", 0, "high"),     # enabled, budget_tokens 31999
    ("claude-code-nonstream-fallback.json", 1, "high"),
])
def test_claude_code_requests_translate(name, turn, effort):
    body = captured(name)[turn]
    chat = chat_of(body)
    assert chat["model"] == body["model"]
    assert chat["max_completion_tokens"] == body["max_tokens"]
    assert chat["reasoning_effort"] == effort
    assert chat.get("stream", False) == body.get("stream", False)
    if body.get("stream"):
        assert chat["stream_options"] == {"include_usage": True}
    assert chat["user"] == body["metadata"]["user_id"]
    # the system blocks, less the per-session billing line, are the first message
    first = chat["messages"][0]
    assert first["role"] == "system"
    assert "x-anthropic-billing-header" not in first["content"]
    for block in body["system"][1:]:
        assert block["text"] in first["content"]
    # every custom tool is a function tool with its schema as parameters
    assert [t["function"]["name"] for t in chat["tools"]] == [t["name"] for t in body["tools"]]
    for tool, fn in zip(body["tools"], chat["tools"], strict=False):
        assert fn["type"] == "function" and fn["function"]["parameters"] == tool["input_schema"]
    # the mid-conversation `role: system` message stays where Claude Code put it
    roles = [m["role"] for m in chat["messages"]]
    sent_roles = [m["role"] for m in body["messages"]]
    if "system" in sent_roles:
        assert roles.count("system") == 2
    assert "thinking" not in json.dumps(chat["messages"])


def test_claude_code_tool_round_trip():
    body = captured("claude-code-tool-call.json")[1]
    chat = chat_of(body)
    sent_use = body["messages"][-2]["content"][0]
    sent_result = body["messages"][-1]["content"][0]
    call_msg, result_msg = chat["messages"][-2:]
    assert call_msg["role"] == "assistant" and not call_msg["content"]
    (call,) = call_msg["tool_calls"]
    assert call["id"] == sent_use["id"] and call["function"]["name"] == sent_use["name"]
    assert json.loads(call["function"]["arguments"]) == sent_use["input"]
    assert result_msg == {"role": "tool", "tool_call_id": sent_result["tool_use_id"],
                          "content": sent_result["content"]}


def test_tool_results_come_first_then_the_users_other_blocks():
    body = request(
        user("Look at both files."),
        {"role": "assistant", "content": [
            text("Reading them."),
            {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"path": "a.png"}},
            {"type": "tool_use", "id": "toolu_b", "name": "Read", "input": {"path": "b.txt"}}]},
        user({"type": "tool_result", "tool_use_id": "toolu_a", "content": [
                  text("a.png, 16 bytes"),
                  {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                               "data": PNG}}]},
             {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": True,
              "content": "No such file", "cache_control": {"type": "ephemeral"}},
             text("Now compare them.")),
        tools=[dict(BASH, name="Read")])
    chat = chat_of(body)
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    assert chat["messages"][1]["content"] == "Reading them."
    a, b, after = chat["messages"][2:]
    assert (a["tool_call_id"], a["content"]) == ("toolu_a", "a.png, 16 bytes")
    assert b["tool_call_id"] == "toolu_b"
    assert b["content"].startswith("Error") and "No such file" in b["content"]
    # the tool's image rides in the next user message, before the user's own text
    kinds = [p["type"] for p in after["content"]]
    assert kinds == ["text", "image_url", "text"]
    assert "toolu_a" in after["content"][0]["text"]
    assert after["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert after["content"][2]["text"] == "Now compare them."


THINKING_TURN = {"role": "assistant", "content": [
    {"type": "thinking", "thinking": "The user wants the date.", "signature": "EqQBCkYIBxgC"},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    text("Let me check."),
    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "date"}}]}


def test_thinking_blocks_are_dropped_or_carried_as_reasoning_content():
    body = request(user("What day is it?"), THINKING_TURN,
                   user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "Mon"}),
                   tools=[BASH], thinking={"type": "enabled", "budget_tokens": 2048})
    plain = chat_of(body)["messages"][1]
    assert plain["content"] == "Let me check." and "reasoning_content" not in plain
    assert plain["tool_calls"][0]["function"]["name"] == "Bash"
    kept = chat_of(body, keep_reasoning=True)["messages"][1]
    assert kept["reasoning_content"] == "The user wants the date."
    # an assistant turn of thinking only leaves nothing to send
    only = request(user("hi"), {"role": "assistant", "content": THINKING_TURN["content"][:2]},
                   user("well?"))
    assert [m["role"] for m in chat_of(only)["messages"]] == ["user", "user"]


@pytest.mark.parametrize("source, url", [
    ({"type": "base64", "media_type": "image/png", "data": PNG}, f"data:image/png;base64,{PNG}"),
    ({"type": "url", "url": "https://example.com/cat.jpg"}, "https://example.com/cat.jpg"),
])
def test_images(source, url):
    chat = chat_of(request(user({"type": "image", "source": source}, text("What is this?"))))
    (msg,) = chat["messages"]
    assert msg["content"] == [{"type": "image_url", "image_url": {"url": url}},
                              {"type": "text", "text": "What is this?"}]


def test_text_documents_become_text_and_all_text_turns_one_string():
    body = request(user({"type": "document", "title": "notes.txt",
                         "source": {"type": "text", "media_type": "text/plain",
                                    "data": "Buy milk."}},
                        text("Summarise.", cache_control={"type": "ephemeral"})),
                   system="Be brief.")
    chat = chat_of(body)
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    content = chat["messages"][1]["content"]
    assert isinstance(content, str)
    assert content.index("notes.txt") < content.index("Buy milk.") < content.index("Summarise.")


@pytest.mark.parametrize("choice, tools_out", [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "Bash"},
     {"tool_choice": {"type": "function", "function": {"name": "Bash"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True},
     {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "any", "disable_parallel_tool_use": True},
     {"tool_choice": "required", "parallel_tool_calls": False}),
    ({"type": "tool", "name": "Bash", "disable_parallel_tool_use": False},
     {"tool_choice": {"type": "function", "function": {"name": "Bash"}}}),
])
def test_tool_choice(choice, tools_out):
    chat = chat_of(request(user("go"), tools=[BASH], tool_choice=choice))
    assert {k: chat[k] for k in ("tool_choice", "parallel_tool_calls") if k in chat} == tools_out


def test_tool_choice_without_tools_is_not_sent():
    chat = chat_of(request(user("go"), tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat and "tools" not in chat


@pytest.mark.parametrize("thinking, config, effort", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 4095}, None, "low"),
    ({"type": "enabled", "budget_tokens": 4096}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 16383}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 16384}, None, "high"),
    ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
    ({"type": "enabled", "budget_tokens": 31999}, {"effort": "low"}, "low"),
    ({"type": "adaptive"}, None, None),
    ({"type": "adaptive"}, {"effort": "medium"}, "medium"),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "adaptive"}, {"effort": "xhigh"}, "high"),
    ({"type": "disabled"}, {"effort": "high"}, None),
    (None, {"effort": "low"}, "low"),
    (None, None, None),
])
def test_thinking_to_reasoning_effort(thinking, config, effort):
    extra = {k: v for k, v in (("thinking", thinking), ("output_config", config)) if v}
    chat = chat_of(request(user("think"), max_tokens=32000, **extra))
    assert chat.get("reasoning_effort") == effort


def test_sampling_fields():
    body = request(user("count"), stop_sequences=["\n\nHuman:", "END"], temperature=0.3,
                   top_p=0.9, top_k=40, metadata={"user_id": "u-42"},
                   output_config={"format": {"type": "json_schema", "schema": {
                       "type": "object", "properties": {"n": {"type": "integer"}}}}})
    chat = chat_of(body)
    assert chat["stop"] == ["\n\nHuman:", "END"]
    assert (chat["temperature"], chat["top_p"], chat["user"]) == (0.3, 0.9, "u-42")
    assert "top_k" not in chat and "stream" not in chat
    assert chat["response_format"]["type"] == "json_schema"
    assert chat["response_format"]["json_schema"]["schema"] == \
        body["output_config"]["format"]["schema"]


def _without(key):
    def change(body):
        del body[key]
    return change


def _set(path: str, value):
    def change(body):
        *keys, last = re.findall(r"\w+", path)
        node = body
        for key in keys:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return change


GOOD = request(user(text("hi"), text("there")),
               {"role": "assistant", "content": [
                   {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                    "input": {"command": "ls"}}]},
               user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "a b"}),
               tools=[BASH], system=[text("sys")], thinking={"type": "enabled",
                                                           "budget_tokens": 2048})


@pytest.mark.parametrize("change, param", [
    (_without("max_tokens"), "max_tokens"),
    (_set("max_tokens", "100"), "max_tokens"),
    (_set("max_tokens", 0), "max_tokens"),
    (_without("messages"), "messages"),
    (_set("messages", []), "messages"),
    (_without("model"), "model"),
    (_set("messages.0", "hello"), "messages[0]"),
    (_set("messages.0.role", "tool"), "messages[0].role"),
    (_set("messages.0.content", 7), "messages[0].content"),
    (_set("messages.0.content.1.type", "video"), "messages[0].content[1].type"),
    (_set("messages.0.content.1", "there"), "messages[0].content[1]"),
    (_set("messages.0.content.0.text", None), "messages[0].content[0].text"),
    (_set("messages.0.content.1", {"type": "tool_use", "id": "x", "name": "Bash",
                                   "input": {}}), "messages[0].content[1].type"),
    (_set("messages.1.content.0.input", "ls"), "messages[1].content[0].input"),
    (_set("messages.1.content.0.name", 3), "messages[1].content[0].name"),
    (_set("messages.1.content.0.type", "image"), "messages[1].content[0].type"),
    (_set("messages.2.content.0.tool_use_id", ""), "messages[2].content[0].tool_use_id"),
    (_set("messages.2.content.0.is_error", "yes"), "messages[2].content[0].is_error"),
    (_set("messages.2.content.0.content", [{"type": "audio"}]),
     "messages[2].content[0].content[0].type"),
    (_set("messages.0.content.0", {"type": "image", "source": {"type": "file",
                                                               "file_id": "file_1"}}),
     "messages[0].content[0].source.type"),
    (_set("messages.0.content.0", {"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": PNG}}),
     "messages[0].content[0].source.type"),
    (_set("system.0.type", "image"), "system[0].type"),
    (_set("system", 5), "system"),
    (_set("tools.0.input_schema", None), "tools[0].input_schema"),
    (_set("tools.0.name", None), "tools[0].name"),
    (_set("tools", [BASH, {"type": "web_search_20250305", "name": "web_search"}]), "tools[1]"),
    (_set("tools", [{"type": "bash_20250124", "name": "bash"}]), "tools[0]"),
    (_set("tools", [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]),
     "tools[0]"),
    (_set("tool_choice", {"type": "sometimes"}), "tool_choice.type"),
    (_set("tool_choice", {"type": "tool", "name": "Nope"}), "tool_choice.name"),
    (_set("tool_choice", {"type": "auto", "disable_parallel_tool_use": "y"}),
     "tool_choice.disable_parallel_tool_use"),
    (_set("thinking", {"type": "enabled", "budget_tokens": "lots"}), "thinking.budget_tokens"),
    (_set("thinking", {"type": "on"}), "thinking.type"),
    (_set("output_config", {"effort": "extreme"}), "output_config.effort"),
    (_set("output_config", {"effort": ["high"]}), "output_config.effort"),
    (_set("stop_sequences", ["END", 4]), "stop_sequences[1]"),
    (_set("temperature", "hot"), "temperature"),
    (_set("top_k", -1), "top_k"),
    (_set("metadata", {"user_id": 5}), "metadata.user_id"),
    (_set("stream", "yes"), "stream"),
    (_set("mcp_servers", [{"type": "url", "url": "https://mcp.example", "name": "x"}]),
     "mcp_servers"),
])
def test_malformed_requests_are_refused_by_path(change, param):
    valid_anthropic_request(GOOD)
    body = copy.deepcopy(GOOD)
    change(body)
    err = refused(body)
    assert err.param == param
    assert param.split("[")[0].split(".")[0] in err.message


def test_missing_max_tokens_says_it_is_required():
    err = refused(request(user("hi")) | {"max_tokens": None})
    assert err.param == "max_tokens" and "required" in err.message


def test_check_portable_alone():
    body = captured("claude-code-tool-call.json")[1]
    assert messages.check_portable(body) is None
    with pytest.raises(InvalidRequest) as caught:
        messages.check_portable(request(user("hi"), tools=[
            BASH, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]))
    assert caught.value.param == "tools[1]" and "web_search_20250305" in caught.value.message
    history = request(user("search"), {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
         "input": {"query": "x"}}]}, user("and?"))
    with pytest.raises(InvalidRequest) as caught:
        messages.check_portable(history)
    assert caught.value.param == "messages[1].content[0].type"


# ---------------------------------------------------------------------- answers
def chat_answer(message: dict, finish: str, usage: dict | None = None, **choice) -> dict:
    out = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
           "model": "gpt-5", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  **message},
                                          "finish_reason": finish, "logprobs": None,
                                          **choice}]}
    if usage is not None:
        out["usage"] = usage
    oa.ChatCompletion.model_validate(out)           # the fixture is a real chat.completion
    return out


USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
         "prompt_tokens_details": {"cached_tokens": 800}}


def message_of(chat: dict, model: str = "claude-sonnet-4-5", **kw) -> Message:
    out = answer.from_chat(chat, model, **kw)
    return Message.model_validate(out)


def test_from_chat_text():
    msg = message_of(chat_answer({"content": "Hello!"}, "stop", USAGE))
    assert msg.id.startswith("msg_") and msg.model == "claude-sonnet-4-5"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Hello!"
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)


def test_from_chat_cached_usage_excludes_cached_tokens_from_input():
    usage = message_of(chat_answer({"content": "Hi"}, "stop", USAGE)).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == \
        (200, 800, 50)
    assert usage.cache_creation_input_tokens == 0
    odd = dict(USAGE, prompt_tokens=10)             # a server that over-reports its cache
    assert message_of(chat_answer({"content": "Hi"}, "stop", odd)).usage.input_tokens == 0


def test_from_chat_tool_use(caplog):
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "Bash", "arguments": '{"command": "ls -la"}'}},
             {"id": "call_2", "type": "function",
              "function": {"name": "Read", "arguments": '{"path": "a.txt"'}}]   # cut short
    msg = message_of(chat_answer({"content": None, "tool_calls": calls}, "tool_calls", USAGE))
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [(u.id, u.name) for u in uses] == [("call_1", "Bash"), ("call_2", "Read")]
    assert uses[0].input == {"command": "ls -la"} and uses[1].input == {}
    assert "call_2" in caplog.text


@pytest.mark.parametrize("finish, extra, reason, sequence", [
    ("length", {}, "max_tokens", None),
    ("content_filter", {}, "refusal", None),
    ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),     # vLLM names the stop string
    ("stop", {"stop_reason": 151645}, "end_turn", None),          # …or the EOS token id
])
def test_from_chat_stop_reasons(finish, extra, reason, sequence):
    msg = message_of(chat_answer({"content": "partial"}, finish, USAGE, **extra))
    assert (msg.stop_reason, msg.stop_sequence) == (reason, sequence)


def test_from_chat_reasoning_becomes_a_signed_thinking_block_first():
    msg = message_of(chat_answer({"content": "42", "reasoning_content": "6 times 7"}, "stop",
                                 USAGE))
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "6 times 7" and msg.content[0].signature
    relayed = message_of(chat_answer({"content": "42", "reasoning_content": "6 times 7",
                                      "thinking_blocks": [{"type": "thinking",
                                                           "thinking": "6 times 7",
                                                           "signature": "EqQBCkYI"}]},
                                     "stop", USAGE))
    assert relayed.content[0].signature == "EqQBCkYI"


def test_from_chat_refusal_and_a_tool_finish_without_calls():
    refused_ = message_of(chat_answer({"content": None, "refusal": "I can't help with that."},
                                      "stop", USAGE))
    assert refused_.stop_reason == "refusal"
    assert refused_.content[0].text == "I can't help with that."
    # told tool_calls but given none: not tool_use (Claude Code would wait for a tool block)
    odd = message_of(chat_answer({"content": "Done."}, "tool_calls", USAGE))
    assert odd.stop_reason == "end_turn"


def test_from_chat_without_usage_still_reports_usage():
    msg = message_of(chat_answer({"content": "x" * 400}, "stop"), input_tokens=77)
    assert msg.usage.input_tokens == 77 and msg.usage.output_tokens >= 100


def test_gateway_thinking_is_dropped_before_a_native_anthropic_call():
    made = answer.from_chat(chat_answer({"content": "Hi", "reasoning_content": "hm"}, "stop",
                                        USAGE), "m")
    history = request(user("hello"), {"role": "assistant", "content": made["content"]},
                      THINKING_TURN, user("go on"))
    cleaned = messages.drop_gateway_thinking(history)
    assert [b["type"] for b in cleaned["messages"][1]["content"]] == ["text"]
    assert cleaned["messages"][2] == THINKING_TURN           # Anthropic's own signature stays
    assert history["messages"][1]["content"][0]["type"] == "thinking"    # input untouched
    plain = request(user("hi"))
    assert messages.drop_gateway_thinking(plain) is plain
    thought_only = answer.from_chat(chat_answer({"content": "", "reasoning_content": "hm"},
                                                "stop", USAGE), "m")
    history = request(user("hello"), {"role": "assistant", "content": thought_only["content"]},
                      user("well?"))
    assert [m["role"] for m in messages.drop_gateway_thinking(history)["messages"]] == \
        ["user", "user"]


def sdk_client(handler) -> anthropic.Anthropic:
    """The real anthropic SDK, its HTTP answered in memory by ``handler``."""
    return anthropic.Anthropic(api_key="sk-test", base_url="http://gateway.test",
                               max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_the_sdk_reads_from_chat_json():
    body = answer.from_chat(chat_answer({"content": "Hello!", "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "Bash", "arguments": '{"command": "pwd"}'}}]}, "tool_calls",
        USAGE), "claude-opus-4-8")
    client = sdk_client(lambda req: httpx2.Response(200, json=body))
    msg = client.messages.create(model="claude-opus-4-8", max_tokens=100,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello!" and msg.content[1].input == {"command": "pwd"}
    assert msg.stop_reason == "tool_use" and msg.usage.input_tokens == 200


# ---------------------------------------------------------------------- streams
class Chunks:
    """Realistic chat.completion.chunk SSE frames, each checked with the openai SDK type."""

    def __init__(self):
        self.frames: list[bytes] = []
        self.add({"role": "assistant", "content": ""})

    def add(self, delta: dict | None = None, finish: str | None = None, usage=None,
            **choice) -> Chunks:
        chunk = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "gpt-5", "choices": [] if delta is None and finish is None else [
                     {"index": 0, "delta": delta or {}, "finish_reason": finish,
                      "logprobs": None, **choice}]}
        if usage is not None:
            chunk["usage"] = usage
        oa.ChatCompletionChunk.model_validate(chunk)
        self.frames.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        return self

    def text(self, *pieces: str) -> Chunks:
        for piece in pieces:
            self.add({"content": piece})
        return self

    def reasoning(self, *pieces: str) -> Chunks:
        for piece in pieces:
            self.add({"reasoning_content": piece})
        return self

    def call(self, index: int, id_: str, name: str, *fragments: str) -> Chunks:
        self.add({"tool_calls": [{"index": index, "id": id_, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]})
        for fragment in fragments:
            self.add({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
        return self

    def end(self, finish: str, usage: dict | None = USAGE) -> list[bytes]:
        self.add(None, finish)
        if usage is not None:
            self.add(None, None, usage)
        return [*self.frames, b"data: [DONE]\n\n"]


def parse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE event; every event has both lines, names match."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") \
            and lines[1].startswith("data: "), block
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        events.append((name, data))
    return events


def check_stream(events: list[tuple[str, dict]]) -> dict:
    """Validate a translated stream and rebuild its blocks: every event against the SDK's
    types; message_start first; blocks indexed 0, 1, 2 … each started, fed and stopped in
    turn; one terminal message_stop or error.  Returns {blocks, stop, usage, start, error}."""
    assert events[0][0] == "message_start"
    blocks: list[dict] = []
    open_index = None
    result: dict = {"start": events[0][1]["message"], "error": None, "stop": None}
    for i, (name, data) in enumerate(events):
        last = i == len(events) - 1
        if name == "ping":
            assert data == {"type": "ping"}
            continue
        if name == "error":
            assert last, "an error ends the stream"
            assert set(data) <= {"type", "error", "request_id"}
            assert set(data["error"]) == {"type", "message"}
            result["error"] = data["error"]
            continue
        STREAM_EVENT.validate_python(data)
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            block = dict(data["content_block"])
            block["partial"] = ""
            blocks.append(block)
        elif name == "content_block_delta":
            assert data["index"] == open_index
            delta, block = data["delta"], blocks[open_index]
            kind = {"text_delta": "text", "thinking_delta": "thinking",
                    "signature_delta": "thinking", "input_json_delta": "tool_use"}
            assert block["type"] == kind[delta["type"]]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                block["partial"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None
            result["stop"], result["usage"] = data["delta"], data["usage"]
        elif name == "message_stop":
            assert last and result["stop"] is not None
    assert open_index is None or result["error"], "every block started is stopped"
    assert [n for n, _ in events].count("message_start") == 1
    terminal = [n for n, _ in events if n in ("message_stop", "error")]
    assert len(terminal) == 1
    for block in blocks if not result["error"] else ():    # an error voids the message
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["partial"]) if block["partial"] else {}
    result["blocks"] = blocks
    return result


def translate(frames: list[bytes], **kw) -> tuple[list[tuple[str, dict]], bytes]:
    stream = stream_mod.MessagesStream("claude-opus-4-8", **kw)
    raw = b"".join(b"".join(stream.feed(f)) for f in frames) + b"".join(stream.finish())
    assert stream.done
    return parse_events(raw), raw


def sdk_stream(raw: bytes):
    """What the anthropic SDK itself makes of the bytes: its final Message."""
    client = sdk_client(lambda req: httpx2.Response(
        200, content=raw, headers={"content-type": "text/event-stream"}))
    with client.messages.stream(model="claude-opus-4-8", max_tokens=100,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        return s.get_final_message()


def test_stream_text_only():
    frames = Chunks().text("Hel", "lo", " world").end("stop")
    events, raw = translate(frames)
    seen = check_stream(events)
    assert [b["type"] for b in seen["blocks"]] == ["text"]
    assert seen["blocks"][0]["text"] == "Hello world"
    assert seen["stop"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert seen["usage"]["output_tokens"] == 50 and seen["usage"]["input_tokens"] == 200
    assert seen["usage"]["cache_read_input_tokens"] == 800
    final = sdk_stream(raw)
    assert final.content[0].text == "Hello world" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (200, 50)


def test_stream_reasoning_then_text():
    frames = Chunks().reasoning("First, ", "add.").text("It is ", "4.").end("stop")
    events, raw = translate(frames)
    seen = check_stream(events)
    thinking, said = seen["blocks"]
    assert (thinking["type"], thinking["thinking"]) == ("thinking", "First, add.")
    assert thinking["signature"], "Claude Code drops thinking blocks without a signature"
    assert said["text"] == "It is 4."
    final = sdk_stream(raw)
    assert [b.type for b in final.content] == ["thinking", "text"]


def test_stream_text_then_two_parallel_tool_calls():
    first = {"command": "ls -la /tmp", "description": "List /tmp"}
    second = {"path": "/etc/hostname"}
    frames = (Chunks().text("Checking both.")
              .call(0, "call_a", "Bash", '{"command": "ls', ' -la /tmp", "descr',
                    'iption": "List /tmp"}')
              .call(1, "call_b", "Read", '{"path": ', '"/etc/hostname"}')
              .end("tool_calls"))
    events, raw = translate(frames)
    seen = check_stream(events)
    kinds = [(b["type"], b.get("id"), b.get("name")) for b in seen["blocks"]]
    assert kinds == [("text", None, None), ("tool_use", "call_a", "Bash"),
                     ("tool_use", "call_b", "Read")]
    assert seen["blocks"][1]["input"] == first and seen["blocks"][2]["input"] == second
    assert seen["stop"]["stop_reason"] == "tool_use"
    final = sdk_stream(raw)
    assert [b.input for b in final.content[1:]] == [first, second]


def test_stream_whole_tool_call_in_one_chunk_and_dict_frames():
    """Gemini-style: the call arrives complete; chunks may be fed as dicts."""
    stream = stream_mod.MessagesStream("m", input_tokens=5)
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [{
        "index": 0, "id": "call_z", "type": "function",
        "function": {"name": "Bash", "arguments": '{"command": "id"}'}}]},
        "finish_reason": "stop"}]}
    raw = b"".join(stream.feed(chunk) + stream.finish())
    seen = check_stream(parse_events(raw))
    assert seen["blocks"][0]["input"] == {"command": "id"}
    assert seen["stop"]["stop_reason"] == "tool_use"     # calls made, whatever finish said
    assert seen["start"]["usage"]["input_tokens"] == 5


def test_stream_calls_told_apart_by_id_when_the_index_is_missing_or_reused():
    """Some servers send each complete call with index 0, or no index at all."""
    stream = stream_mod.MessagesStream("m", input_tokens=1)
    out = []
    for n, (index, cid) in enumerate([(0, "call_1"), (0, "call_2"), (None, "call_3")]):
        call = {"id": cid, "type": "function",
                "function": {"name": "Bash", "arguments": json.dumps({"n": n})}}
        if index is not None:
            call["index"] = index
        out += stream.feed({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    out += stream.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    seen = check_stream(parse_events(b"".join(out + stream.finish())))
    assert [(b["id"], b["input"]) for b in seen["blocks"]] == \
        [("call_1", {"n": 0}), ("call_2", {"n": 1}), ("call_3", {"n": 2})]


def test_stream_refusal_and_a_tool_finish_without_calls():
    seen = check_stream(translate(Chunks().add({"refusal": "I can't."}).end("stop"))[0])
    assert seen["blocks"][0]["text"] == "I can't." and seen["stop"]["stop_reason"] == "refusal"
    seen = check_stream(translate(Chunks().text("Done.").end("tool_calls"))[0])
    assert seen["stop"]["stop_reason"] == "end_turn"


def test_stream_failure_mid_stream_is_one_error_event():
    stream = stream_mod.MessagesStream("claude-opus-4-8")
    frames = Chunks().text("Partial ").frames
    raw = b"".join(b"".join(stream.feed(f)) for f in frames)
    raw += stream.fail(ServiceUnavailable("The upstream provider `x` is overloaded."))
    assert stream.done and stream.feed(frames[-1]) == [] and stream.finish() == []
    seen = check_stream(parse_events(raw))
    assert seen["error"]["type"] == "overloaded_error"
    assert "overloaded" in seen["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(raw)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_stream_error_frame_from_the_chat_stream():
    frames = [*Chunks().text("Hi").frames,
              (b'data: {"error": {"message": "The upstream provider `x` is rate limiting this '
               b'gateway.", "type": "rate_limit_error", "param": null, '
               b'"code": "upstream_rate_limited"}}\n\n')]
    events, _ = translate(frames)
    seen = check_stream(events)
    assert seen["error"]["type"] == "rate_limit_error"
    assert [n for n, _ in events][-2] == "content_block_delta"


def test_stream_interleaved_arguments_end_in_an_error_not_broken_json():
    frames = (Chunks().call(0, "call_a", "Bash", '{"command": ')
              .call(1, "call_b", "Bash", '{"command": "b"}'))
    frames.add({"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]})
    events, _ = translate(frames.end("tool_calls"))
    seen = check_stream(events)
    assert seen["error"]["type"] == "api_error"


def test_stream_input_tokens_estimated_first_then_real():
    body = request(user("word " * 2000))
    events, _ = translate(Chunks().text("ok").end("stop"), request=body)
    seen = check_stream(events)
    estimate = seen["start"]["usage"]["input_tokens"]
    assert estimate == answer.count_tokens_estimate(body) and estimate >= 2500
    assert seen["usage"]["input_tokens"] == 200         # the upstream's count, at the end
    events, _ = translate(Chunks().text("ok").end("stop", usage=None), request=body)
    seen = check_stream(events)
    assert seen["usage"]["output_tokens"] >= 1 and "input_tokens" not in seen["usage"]


def test_stream_keepalives_and_empty_stream():
    stream = stream_mod.MessagesStream("m")
    assert parse_events(stream.feed(b": ping\n\n")[0]) == [("ping", {"type": "ping"})]
    assert parse_events(stream.ping()) == [("ping", {"type": "ping"})]
    seen = check_stream(parse_events(b"".join(stream.finish())))   # nothing came at all
    assert seen["blocks"] == [] and seen["stop"]["stop_reason"] == "end_turn"


def test_stream_from_chat_async_helper():
    heard = []

    async def chat_events():
        for frame in Chunks().text("Hello").frames:
            yield frame
        raise UpstreamTimeout("The upstream provider `x` timed out.")

    async def collect():
        stream = stream_mod.MessagesStream("m")
        return [f async for f in stream_mod.stream_from_chat(chat_events(), stream, heard.append)]

    out = asyncio.run(collect())
    seen = check_stream(parse_events(b"".join(out)))
    assert seen["error"]["type"] == "api_error" and len(heard) == 1

    async def refused_at_once():
        raise UpstreamPassthrough("prompt is too long: 250000 tokens > 200000 maximum",
                                  status=400)
        yield b""                                   # an async generator that never yields

    async def collect_refused():
        stream = stream_mod.MessagesStream("m")
        return [f async for f in stream_mod.stream_from_chat(refused_at_once(), stream,
                                                             heard.append)]

    # nothing sent yet: the error propagates, for a JSON 400 (or a fallback), not an event
    with pytest.raises(UpstreamPassthrough):
        asyncio.run(collect_refused())
    assert len(heard) == 1

    async def complete():
        for frame in Chunks().text("Hi").end("length"):
            yield frame

    async def collect_complete():
        stream = stream_mod.MessagesStream("m")
        return [f async for f in stream_mod.stream_from_chat(complete(), stream)]

    seen = check_stream(parse_events(b"".join(asyncio.run(collect_complete()))))
    assert seen["stop"]["stop_reason"] == "max_tokens"


def test_stream_from_chat_reads_the_chat_stream_to_its_end():
    """The chat handler meters usage after its wrapper's last frame: it must be reached."""
    metered = []

    async def metering(frames):
        for frame in frames:
            yield frame
        metered.append(True)                    # runs only once the consumer reads on

    async def collect():
        stream = stream_mod.MessagesStream("m")
        frames = Chunks().text("Hi").end("stop")
        return [f async for f in stream_mod.stream_from_chat(metering(frames), stream)]

    out = asyncio.run(collect())
    assert metered == [True]
    assert check_stream(parse_events(b"".join(out)))["blocks"][0]["text"] == "Hi"


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("err, status, kind, sdk_error", [
    (InvalidRequest("bad field", param="x"), 400, "invalid_request_error",
     anthropic.BadRequestError),
    (AuthError("no key"), 401, "authentication_error", anthropic.AuthenticationError),
    (Forbidden("vpn"), 403, "permission_error", anthropic.PermissionDeniedError),
    (NotFound("no model", code="model_not_found"), 404, "not_found_error",
     anthropic.NotFoundError),
    (BodyTooLarge("too big"), 413, "request_too_large", anthropic.APIStatusError),
    (RateLimited("slow down", retry_after=2), 429, "rate_limit_error",
     anthropic.RateLimitError),
    (QuotaExceeded("out of credit"), 429, "rate_limit_error", anthropic.RateLimitError),
    (ApiError("boom"), 500, "api_error", anthropic.InternalServerError),
    (UpstreamError("garbage"), 502, "api_error", anthropic.InternalServerError),
    (ServiceUnavailable("busy", headers={"Retry-After": "3"}), 529, "overloaded_error",
     anthropic.OverloadedError),
    (UpstreamTimeout("slow"), 504, "api_error", anthropic.InternalServerError),
    (UpstreamPassthrough("unprocessable", status=422), 422, "invalid_request_error",
     anthropic.UnprocessableEntityError),
])
def test_error_mapping(err, status, kind, sdk_error):
    got_status, body = answer.error_body(err, request_id="req_1")
    assert (got_status, body["type"], body["error"]["type"]) == (status, "error", kind)
    assert body["error"]["message"] == err.message and body["request_id"] == "req_1"
    if kind != "request_too_large":            # Anthropic's 413 type is not in the SDK union
        ErrorResponse.model_validate(body)
    headers = answer.error_headers(err)
    assert headers == err.headers
    client = sdk_client(lambda req: httpx2.Response(got_status, json=body, headers=headers))
    with pytest.raises(sdk_error) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user",
                                                                   "content": "hi"}])
    assert caught.value.status_code == status


def test_rate_limit_keeps_retry_after():
    assert answer.error_headers(RateLimited("slow", retry_after=1.2))["Retry-After"] == "2"
    assert answer.error_headers(QuotaExceeded("broke"))["x-should-retry"] == "false"


PTL = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum$")
MAX_TOKENS_OVER = re.compile(r"^input length and `max_tokens` exceed context limit: "
                             r"(\d+) \+ (\d+) > (\d+), decrease input length or `max_tokens` "
                             r"and try again$")
PREFIX = "The upstream provider `up` rejected the request: "


@pytest.mark.parametrize("said, numbers", [
    ("prompt is too long: 250000 tokens > 200000 maximum.", (250000, 200000)),   # Anthropic
    (("This model's maximum context length is 128000 tokens. However, your messages resulted "
     "in 130532 tokens. Please reduce the length of the messages."), (130532, 128000)),
    (("Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in "
     "300125 tokens. Please reduce the length of the messages."), (300125, 272000)),
    (("This model's maximum context length is 4097 tokens. However, your messages resulted "
      "in 4112 tokens (3992 in the messages, 120 in the functions). Please reduce the length "
      "of the messages or functions."), (4112, 4097)),
    (("The input token count (1200000) exceeds the maximum number of tokens allowed "
     "(1048576)."), (1200000, 1048576)),                                         # Gemini
    (("request (8000 tokens) exceeds the available context size (4096 tokens), try "
     "increasing it"), (8000, 4096)),                                            # llama.cpp
    (("Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 "
     "maximum context length"), (40000, 32768)),                                 # Mistral
])
def test_context_overflow_is_worded_as_anthropic_words_it(said, numbers):
    err = UpstreamPassthrough(PREFIX + said, status=400)
    status, body = answer.error_body(err)
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    found = PTL.match(body["error"]["message"])
    assert found and tuple(map(int, found.groups())) == numbers


@pytest.mark.parametrize("said, numbers", [
    (("This model's maximum context length is 4096 tokens. However, you requested 5000 "
     "tokens (3000 in the messages, 2000 in the completion). Please reduce the length of "
     "the messages or completion."), (3000, 2000, 4096)),                        # vLLM, older
    (("'max_tokens' or 'max_completion_tokens' is too large: 64000. This model's maximum "
     "context length is 32768 tokens and your request has 1200 input tokens (64000 > 32768 "
     "- 1200)."), (1200, 64000, 32768)),                                         # vLLM, newer
])
def test_max_tokens_overflow_asks_for_fewer_max_tokens(said, numbers):
    status, body = answer.error_body(UpstreamPassthrough(PREFIX + said, status=400))
    found = MAX_TOKENS_OVER.match(body["error"]["message"])
    assert status == 400 and found and tuple(map(int, found.groups())) == numbers


def test_context_overflow_without_numbers_uses_the_estimate():
    body = request(user("many words " * 5000))
    err = InvalidRequest("Too long.", code="context_length_exceeded")
    status, out = answer.error_body(err, request=body)
    n, m = map(int, PTL.match(out["error"]["message"]).groups())
    assert status == 400 and n == answer.count_tokens_estimate(body) and n > m
    # the same overflow met inside a stream is an error event worded alike
    stream = stream_mod.MessagesStream("m", request=body)
    event = parse_events(stream.fail(err))[0][1]
    assert PTL.match(event["error"]["message"])


@pytest.mark.parametrize("err", [
    RateLimited("Rate limit reached for tokens per minute: limit 30000, used 29000."),
    InvalidRequest("`max_tokens` must be an integer ≥ 1.", param="max_tokens"),
    UpstreamError("The upstream failed: context deadline exceeded"),
])
def test_other_errors_are_not_taken_for_overflow(err):
    _, body = answer.error_body(err)
    assert body["error"]["message"] == err.message


# ---------------------------------------------------------------------- count_tokens
def test_count_tokens_estimate_grows_with_input():
    base = request(user("Hello there"))
    bigger = request(user("Hello there " * 100))
    system = dict(bigger, system=[text("You are helpful. " * 50)])
    tooled = dict(system, tools=[BASH, dict(BASH, name="Read")])
    imaged = dict(tooled, messages=tooled["messages"] + [user(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG}})])
    counts = [answer.count_tokens_estimate(valid_anthropic_request(b))
              for b in (base, bigger, system, tooled, imaged)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert 300 <= counts[1] <= 400          # 1,200 characters at ~4 a token, plus framing
    assert MessageTokensCount.model_validate({"input_tokens": counts[0]}).input_tokens > 0


def test_count_tokens_estimate_of_a_claude_code_request():
    body = captured("claude-code-tool-call.json")[1]
    chars = len(json.dumps(body))
    estimate = answer.count_tokens_estimate(body)
    assert chars / 8 < estimate < chars / 2     # the right order: a few characters a token


# ---------------------------------------------------------------------- robustness
JUNK = [None, 5, -1, 1.5, True, "x", "", [], {}, [1], [None], {"type": 1}, {"type": "text"},
        {"type": "image"}, {"type": "tool_result"}]


def _mutated(base, rng: random.Random, times: int):
    """``base`` with ``times`` random nodes replaced by junk values."""
    body = copy.deepcopy(base)
    for _ in range(times):
        paths, stack = [], [((), body)]
        while stack:
            path, node = stack.pop()
            items = node.items() if isinstance(node, dict) else \
                enumerate(node) if isinstance(node, list) else ()
            for key, child in items:
                paths.append((node, key))
                stack.append(((*path, key), child))
        node, key = rng.choice(paths)
        node[key] = copy.deepcopy(rng.choice(JUNK))
    return body


def test_mutated_requests_are_translated_or_refused_never_crash():
    rng = random.Random(14)
    bases = [GOOD, captured("claude-code-tool-call.json")[1],
             request(user("hi"), THINKING_TURN, user({"type": "tool_result",
                                                      "tool_use_id": "toolu_1",
                                                      "content": [text("x")]}),
                     tools=[BASH], thinking={"type": "adaptive"}, stop_sequences=["a"],
                     output_config={"effort": "high"}, tool_choice={"type": "any"})]
    outcomes = {"translated": 0, "refused": 0}
    for _ in range(400):
        body = _mutated(rng.choice(bases), rng, rng.randint(1, 3))
        try:
            messages.to_chat(body)
            outcomes["translated"] += 1
        except InvalidRequest as err:
            assert err.status == 400 and err.param
            outcomes["refused"] += 1
        try:
            answer.count_tokens_estimate(body)
            messages.drop_gateway_thinking(body)
        except InvalidRequest as err:
            assert err.param == "messages"
    assert outcomes["translated"] > 20 and outcomes["refused"] > 100


def test_mutated_chat_output_still_gives_valid_messages_and_events():
    rng = random.Random(15)
    base = chat_answer({"content": "Hi", "reasoning_content": "r", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "B", "arguments": "{}"}}]},
        "tool_calls", USAGE)
    frames = Chunks().reasoning("a").text("b").call(0, "c", "B", '{"x": 1}').end("stop")
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    for _ in range(300):
        Message.model_validate(answer.from_chat(_mutated(base, rng, 2), "m"))
        stream = stream_mod.MessagesStream("m")
        out = [stream.feed(_mutated(c, rng, 1) if rng.random() < 0.3 else c) for c in chunks]
        raw = b"".join(b"".join(o) for o in out) + b"".join(stream.finish())
        for name, data in parse_events(raw):
            if name not in ("ping", "error"):
                STREAM_EVENT.validate_python(data)

