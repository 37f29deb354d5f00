"""The Responses dialect's pieces, one module at a time: responses_tools (flattened names,
path checks, tool maps, tool_choice), responses_input (input items, the chat history they
build, compaction input) and responses_stream (usage, status, items, events, the Response
object, error codes, and ResponsesStream's edges).  tests/test_dialect_responses.py covers
the whole dialect through ``responses``; what is here is what it does not reach.  Items and
events are checked with the openai SDK's own types."""
from __future__ import annotations

import re

import orjson
import pydantic
import pytest
from openai.types.responses import (
    Response,
    ResponseCustomToolCall,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseStreamEvent,
    ResponseUsage,
)

from apiarium.dialects import responses_compaction as rcmp
from apiarium.dialects import responses_input as rin
from apiarium.dialects import responses_stream as rst
from apiarium.dialects import responses_tools as rtools
from apiarium.errors import (
    ApiError,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
CHAT_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")      # chat function names (wire-formats §1.2)
FN = {"type": "function", "name": "sh", "parameters": {"type": "object", "properties": {}}}
SEAL = rcmp.CompactionSeal(b"k" * 32, "master")


def refused(call, *args, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        call(*args, **kwargs)
    assert exc.value.status == 400
    return exc.value


# ============================================================================ responses_tools

@pytest.mark.parametrize("name, namespace, flat", [
    ("sh", None, "sh"), ("sh", "", "sh"), ("sh", 7, "sh"),
    ("find", "crm", "crm__find"),
    ("read", "mcp__files__", "mcp__files__read"),       # an MCP namespace ends in "__"
])
def test_flat_name(name, namespace, flat):
    assert rtools.flat_name(name, namespace) == flat


def test_a_flat_name_is_at_most_64_characters_and_stable():
    at_64 = rtools.flat_name("t" * 60, "ns")
    assert at_64 == "ns__" + "t" * 60                        # 64: kept as it is
    long_a = rtools.flat_name("a" * 80, "namespace")
    long_b = rtools.flat_name("a" * 79 + "b", "namespace")
    for flat in (long_a, long_b):
        assert len(flat) == 64 and CHAT_NAME.match(flat)
        assert flat.startswith("namespace__aaaa") and re.search(r"_[0-9a-f]{8}$", flat)
    assert long_a != long_b                                  # the digest tells them apart
    assert rtools.flat_name("a" * 80, "namespace") == long_a  # the same every time


def test_path_checks_name_the_path():
    assert rtools.str_at("x", "a.b") == "x"
    assert rtools.str_at("", "a.b", empty=True) == ""
    assert refused(rtools.str_at, "", "input[0].name").param == "input[0].name"
    assert refused(rtools.str_at, 5, "x", empty=True).param == "x"
    assert rtools.list_at([], "tools") == []
    assert refused(rtools.list_at, {}, "tools").param == "tools"
    assert rtools.obj_at({}, "t") == {}
    err = refused(rtools.obj_at, [], "tools[3]")
    assert err.param == "tools[3]" and "must be an object" in err.message


def test_hosted_tools_in_added_tool_lists_are_refused_by_their_path():
    body = {"input": [{"role": "user", "content": "x"},
                      {"type": "additional_tools", "tools": [FN, {"type": "file_search"}]}]}
    assert refused(rtools.check_portable, body).param == "input[1].tools[1]"
    rtools.check_portable(body, native_ok=True)
    body = {"tools": [{"type": 7}]}
    assert refused(rtools.check_portable, body).param == "tools[0].type"


def test_walk_tools_translates_custom_and_namespace_tools():
    body = {"tools": [
        FN,
        {"type": "custom", "name": "apply_patch", "description": "Edit files",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "custom", "name": "note"},
        {"type": "namespace", "name": "crm", "tools": [
            {"type": "function", "name": "find", "strict": True, "description": "",
             "parameters": {"type": "object"}}]},
        {"type": "web_search"}]}
    walked = list(rtools.walk_tools(body, rtools.SKIPPED_HOSTED_TOOLS))
    assert [ref for _, ref in walked] == [
        rtools.ToolRef("function", "sh", None), rtools.ToolRef("custom", "apply_patch", None),
        rtools.ToolRef("custom", "note", None), rtools.ToolRef("function", "find", "crm")]
    fns = [tool["function"] for tool, _ in walked]
    assert all(tool["type"] == "function" for tool, _ in walked)
    assert fns[0] == {"name": "sh", "parameters": FN["parameters"]}
    patch = fns[1]
    assert patch["description"] == "Edit files"
    assert patch["parameters"]["required"] == ["input"]
    assert patch["parameters"]["additionalProperties"] is False
    hint = patch["parameters"]["properties"]["input"]["description"]
    assert "lark grammar" in hint and hint.endswith("start: /.+/")
    assert "grammar" not in fns[2]["parameters"]["properties"]["input"]["description"]
    assert fns[3] == {"name": "crm__find", "description": "", "strict": True,
                      "parameters": {"type": "object"}}


def test_tool_map_reads_leniently_and_the_first_of_a_name_wins():
    body = {"tools": [
        {"type": "custom", "name": "sh"}, FN,
        {"type": "namespace", "name": "crm", "tools": [
            {"type": "function", "name": "find"}, {"type": "web_search"}, "junk"]},
        {"type": "namespace", "name": 5, "tools": [{"type": "custom", "name": "raw"}]},
        {"type": "mcp"}, None],
        "input": [{"type": "tool_search_output", "tools": [
            {"type": "function", "name": "late"}]}]}
    assert rtools.tool_map(body) == {
        "sh": rtools.ToolRef("custom", "sh", None),
        "crm__find": rtools.ToolRef("function", "find", "crm"),
        "raw": rtools.ToolRef("custom", "raw", None),
        "late": rtools.ToolRef("function", "late", None)}


def test_allowed_tools_narrows_the_list_in_place():
    tools = [{"type": "function", "function": {"name": n}} for n in ("sh", "crm__find", "x")]
    refs = {t["function"]["name"]: rtools.ToolRef("function", t["function"]["name"], None)
            for t in tools}
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "function", "name": "find", "namespace": "crm"},
        {"type": "function", "name": "sh"}, "junk"]}
    assert rtools.tool_choice(choice, refs, tools) == "auto"
    assert [t["function"]["name"] for t in tools] == ["sh", "crm__find"]
    err = refused(rtools.tool_choice, {"type": "allowed_tools", "mode": "none", "tools": []},
                  refs, tools)
    assert err.param == "tool_choice.mode"
    assert refused(rtools.tool_choice, {"type": "allowed_tools", "mode": "auto"}, refs,
                   tools).param == "tool_choice.tools"
    for plain in ("auto", "none", "required"):
        assert rtools.tool_choice(plain, {}, []) == plain
    assert refused(rtools.tool_choice, "any", refs, tools).param == "tool_choice"


# ============================================================================ responses_input

def test_a_string_input_is_one_user_message():
    assert rin.input_items({"input": "hi"}) == [
        ("input", {"type": "message", "role": "user", "content": "hi"})]
    assert refused(rin.input_items, {}).param == "input"
    assert refused(rin.input_items, {"input": {"role": "user"}}).param == "input"


def test_stateless_checks_accept_empty_values():
    rin.check_stateless({"previous_response_id": None, "conversation": "", "prompt": {},
                         "background": False})
    err = refused(rin.check_stateless, {"conversation": {"id": "conv_1"}})
    assert (err.param, err.code) == ("conversation", "unsupported_parameter")


def test_reasoning_goes_to_the_very_next_assistant_turn_only():
    messages = rin.history({"input": [
        {"role": "user", "content": "a"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "first"}]},
        {"role": "user", "content": "b"},                 # a user turn in between: dropped
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}],
         "content": [{"type": "reasoning_text", "text": "detail"}]},
        {"type": "function_call", "call_id": "c1", "name": "sh", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"role": "assistant", "content": "done"}]})
    assert [(m["role"], m.get("reasoning_content")) for m in messages] == [
        ("user", None), ("user", None), ("assistant", "plan\n\ndetail"), ("tool", None),
        ("assistant", None)]
    assistant = messages[2]
    assert assistant["content"] is None
    assert assistant["tool_calls"] == [{"id": "c1", "type": "function",
                                        "function": {"name": "sh", "arguments": "{}"}}]


def test_a_reasoning_item_closes_the_assistant_turn_before_it():
    messages = rin.history({"input": [
        {"role": "user", "content": "a"},
        {"type": "function_call", "call_id": "c1", "name": "sh", "arguments": "{}"},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c2", "name": "sh", "arguments": "{}"}]})
    assert [(m["role"], [c["id"] for c in m.get("tool_calls", [])]) for m in messages] == [
        ("user", []), ("assistant", ["c1"]), ("assistant", ["c2"])]


def test_custom_tool_calls_carry_their_raw_input_as_json():
    messages = rin.history({"input": [
        {"role": "user", "content": "patch it"},
        {"type": "custom_tool_call", "call_id": "p1", "name": "apply_patch",
         "namespace": "edit", "input": "*** Begin Patch\n\"q\"\n"},
        {"type": "custom_tool_call_output", "call_id": "p1", "output": "Done!"}]})
    call = messages[1]["tool_calls"][0]
    assert call["function"]["name"] == "edit__apply_patch"
    assert orjson.loads(call["function"]["arguments"]) == {"input": "*** Begin Patch\n\"q\"\n"}
    assert messages[2] == {"role": "tool", "tool_call_id": "p1", "content": "Done!"}


def test_tool_images_wait_for_the_end_of_the_run_of_results():
    png = "data:image/png;base64,iVBORw0KGgo="
    messages = rin.history({"input": [
        {"role": "user", "content": "look"},
        {"type": "function_call", "call_id": "v1", "name": "view", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "v1", "output": [
            {"type": "input_image", "image_url": png, "detail": "high"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."},
                                          {"type": "refusal", "refusal": " No more."}]}]})
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user", "assistant"]
    assert messages[2]["content"].startswith("(the tool returned an image")
    assert messages[3]["content"] == [
        {"type": "text", "text": "Images returned by the tool calls above:"},
        {"type": "image_url", "image_url": {"url": png, "detail": "high"}}]
    assert messages[4]["content"] == "A cat. No more."


def test_images_left_at_the_end_are_flushed():
    png = "data:image/png;base64,iVBORw0KGgo="
    messages = rin.history({"input": [
        {"role": "user", "content": "look"},
        {"type": "function_call", "call_id": "v1", "name": "view", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "v1", "output": [
            {"type": "input_text", "text": "here"}, {"type": "input_image", "image_url": png}]}]})
    assert messages[-2]["content"] == "here"
    assert messages[-1]["role"] == "user" and messages[-1]["content"][1]["image_url"] == {
        "url": png}


@pytest.mark.parametrize("item, param", [
    ({"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0="}]},
     "input[1].output"),
    ({"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]},
     "input[1].content[0]"),
    ({"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x"}]},
     "input[1].content[0].type"),
    ({"type": "message", "role": "user"}, "input[1].content"),
    ({"content": "no role, no type"}, "input[1].type"),
    ({"type": "function_call", "call_id": "c", "name": "", "arguments": "{}"},
     "input[1].name"),
])
def test_history_refusals_name_the_path(item, param):
    body = {"input": [{"role": "user", "content": "a"}, item]}
    assert refused(rin.history, body).param == param


def test_a_file_part_is_carried_inline():
    (message,) = rin.history({"input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=",
         "filename": "a.pdf"}]}]})
    assert message["content"] == [{"type": "file", "file": {
        "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]


def test_instructions_alone_are_no_conversation():
    err = refused(rin.history, {"instructions": "Be brief.", "input": []})
    assert err.param == "input"
    messages = rin.history({"instructions": "", "input": "hi"})
    assert messages == [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]


def test_compaction_of_drops_the_trigger_and_checks_the_rest():
    item = rin.compaction_of({"input": [{"role": "user", "content": "a"},
                                        {"type": "compaction_trigger"}]}, SEAL)
    assert item["type"] == "compaction" and isinstance(item.get("encrypted_content"), str)
    err = refused(rin.compaction_of, {"input": [{"role": "robot", "content": "a"}]}, SEAL)
    assert err.param == "input[0].role"
    assert refused(rin.compaction_of, {"input": "a", "previous_response_id": "r"}, SEAL
                   ).param == "previous_response_id"


def test_response_format_json_schema_keeps_strict_and_description():
    chat = rin.to_chat({"model": "m", "input": "x", "text": {"format": {
        "type": "json_schema", "name": "city", "description": "A city", "strict": True,
        "schema": {"type": "object"}}}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "city", "schema": {"type": "object"}, "strict": True,
        "description": "A city"}}


def test_user_comes_before_safety_identifier_and_bad_sampling_is_refused():
    chat = rin.to_chat({"model": "m", "input": "x", "user": "u", "safety_identifier": "s"})
    assert chat["user"] == "u"
    for field, value in (("temperature", 2.5), ("temperature", -0.1), ("top_p", 1.5),
                         ("temperature", True)):
        assert refused(rin.to_chat, {"model": "m", "input": "x", field: value}).param == field
    assert rin.to_chat({"model": "m", "input": "x", "temperature": 2})["temperature"] == 2
    assert refused(rin.to_chat, {"model": "m", "input": "x", "tools": [FN],
                                 "parallel_tool_calls": "no"}).param == "parallel_tool_calls"
    assert refused(rin.to_chat, ["not", "an", "object"]).status == 400


# ============================================================================ responses_stream

def test_usage_of_maps_chat_usage_and_ignores_nonsense():
    out = rst.usage_of({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                        "prompt_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 8},
                        "completion_tokens_details": {"reasoning_tokens": 12}})
    ResponseUsage.model_validate(out)
    assert out == {"input_tokens": 100,
                   "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 8},
                   "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 12},
                   "total_tokens": 120}
    odd = rst.usage_of({"prompt_tokens": -3, "completion_tokens": True, "total_tokens": "9",
                        "prompt_tokens_details": None, "completion_tokens_details": []})
    ResponseUsage.model_validate(odd)
    assert (odd["input_tokens"], odd["output_tokens"], odd["total_tokens"]) == (0, 0, 0)
    assert rst.usage_of({"prompt_tokens": 5, "completion_tokens": 2})["total_tokens"] == 7
    assert rst.usage_of(None) is None and rst.usage_of([1]) is None


@pytest.mark.parametrize("finish, status", [
    ("stop", ("completed", None)), ("tool_calls", ("completed", None)),
    (None, ("completed", None)), ("length", ("incomplete", {"reason": "max_output_tokens"})),
    ("content_filter", ("incomplete", {"reason": "content_filter"}))])
def test_status_of(finish, status):
    assert rst.status_of(finish) == status


def test_items_validate_as_the_sdk_types():
    reasoning = rst.reasoning_item("rs_1", "Thinking.")
    assert ResponseReasoningItem.model_validate(reasoning).summary[0].text == "Thinking."
    message = rst.message_item("msg_1", "Hello.", "completed")
    parsed = ResponseOutputMessage.model_validate(message)
    assert (parsed.role, parsed.status, parsed.content[0].text) == (
        "assistant", "completed", "Hello.")
    fn = rst.call_item(None, "fc_1", "call_1", "sh", "", "in_progress")
    assert ResponseFunctionToolCall.model_validate(fn).arguments == "{}"
    assert "namespace" not in fn
    ns = rst.call_item(rtools.ToolRef("function", "find", "crm"), "fc_2", "call_2",
                       "crm__find", '{"q":1}', "completed")
    parsed_fn = ResponseFunctionToolCall.model_validate(ns)
    assert (parsed_fn.name, parsed_fn.namespace, parsed_fn.arguments) == (
        "find", "crm", '{"q":1}')


@pytest.mark.parametrize("arguments, raw", [
    ('{"input": "*** Begin Patch"}', "*** Begin Patch"),
    ('{"patch": "x"}', "x"),                       # one string value, whatever its key
    ('{"input": 3}', '{"input": 3}'),              # not that shape: the arguments as sent
    ('{"a": "1", "b": "2"}', '{"a": "1", "b": "2"}'),
    ("not json", "not json"), ("", "")])
def test_a_custom_call_gives_its_raw_input(arguments, raw):
    item = rst.call_item(rtools.ToolRef("custom", "apply_patch", "edit"), "ctc_1", "call_1",
                         "edit__apply_patch", arguments, "completed")
    parsed = ResponseCustomToolCall.model_validate(item)
    assert (parsed.name, parsed.namespace, parsed.input) == ("apply_patch", "edit", raw)


def test_event_framing():
    blob = rst.event("response.output_text.delta", 7, {"item_id": "msg_1", "output_index": 0,
                                                       "content_index": 0, "delta": "Hi",
                                                       "logprobs": []})
    head, data, tail = blob.split(b"\n", 2)
    assert head == b"event: response.output_text.delta" and tail == b"\n"
    obj = orjson.loads(data.removeprefix(b"data: "))
    assert (obj["type"], obj["sequence_number"]) == ("response.output_text.delta", 7)
    EVENTS.validate_python(obj)


def test_the_response_object_echoes_well_typed_settings_only():
    request = {"model": "m", "instructions": "Be brief.", "temperature": True, "top_p": 0.5,
               "parallel_tool_calls": False, "tools": "none", "tool_choice": "required",
               "metadata": {"a": "b", "n": 1}, "reasoning": {"effort": "low"},
               "text": "plain", "max_output_tokens": 64, "prompt_cache_key": "k"}
    out = rst.response_object(request, response_id="resp_1", created_at=1_800_000_000,
                              status="completed", output=[], usage=None)
    parsed = Response.model_validate(out)
    assert (parsed.instructions, parsed.temperature, parsed.top_p) == ("Be brief.", None, 0.5)
    assert parsed.parallel_tool_calls is False and parsed.tools == []
    assert parsed.tool_choice == "required" and out["metadata"] == {}   # not all strings
    assert out["text"] is None and out["reasoning"] == {"effort": "low"}
    assert (out["max_output_tokens"], out["prompt_cache_key"]) == (64, "k")
    assert out["store"] is False and out["truncation"] == "disabled"
    assert isinstance(out["completed_at"], int)
    pending = rst.response_object({}, response_id="resp_2", created_at=1, status="in_progress",
                                  output=[])
    assert "completed_at" not in pending and pending["tool_choice"] == "auto"
    assert pending["parallel_tool_calls"] is True and pending["model"] == ""


@pytest.mark.parametrize("err, code, words", [
    (InvalidRequest("This model's maximum context length is 8192 tokens."),
     "context_length_exceeded", "maximum context length"),
    (ApiError("x", code="context_length_exceeded"), "context_length_exceeded", "x"),
    (QuotaExceeded("Out of credit."), "insufficient_quota", "Out of credit."),
    (RateLimited("Slow down.", retry_after=7), "rate_limit_exceeded",
     "Slow down. Please try again in 7s."),
    (RateLimited("Slow down, try again in 3s.", retry_after=3), "rate_limit_exceeded",
     "Slow down, try again in 3s."),
    (UpstreamError("busy", status=429), "rate_limit_exceeded", "busy"),
    (InvalidRequest("`temperature` is too high."), "invalid_prompt", "temperature"),
    (UpstreamTimeout("late"), "server_error", "late"),
    (UpstreamError("boom"), "server_error", "boom")])
def test_failure_codes(err, code, words):
    out = rst.failure(err)
    assert out["code"] == code and words in out["message"]


@pytest.mark.parametrize("error, code", [
    ({"type": "rate_limit_error", "message": "slow", "code": "upstream_rate_limited"},
     "rate_limit_exceeded"),
    ({"type": "insufficient_quota", "message": "pay"}, "insufficient_quota"),
    ({"type": "invalid_request_error", "message": "bad"}, "invalid_prompt"),
    ({"type": "server_error", "message": "boom"}, "server_error"),
    ("just a string", "server_error")])
def test_a_chat_error_frame_fails_the_response_with_its_code(error, code):
    stream = rst.ResponsesStream({"model": "m"})
    events = [orjson.loads(e.split(b"\n", 1)[1].removeprefix(b"data: "))
              for e in stream.feed(b"data: " + orjson.dumps({"error": error}))]
    assert [e["type"] for e in events] == ["response.created", "response.in_progress",
                                           "response.failed"]
    assert events[-1]["response"]["error"]["code"] == code
    assert stream.done and stream.feed(b"data: [DONE]") == [] and stream.finish() == []


def test_stream_edges():
    stream = rst.ResponsesStream({"model": "m"}, response_id="resp_fixed")
    assert stream.feed(b": keep-alive") == []                 # a comment: nothing, not started
    opening = stream.start()
    assert len(opening) == 2 and stream.start() == []
    chunk = {"choices": [{"index": 1, "delta": {"content": "other choice"}},
                         {"index": 0, "delta": {"refusal": "No."}, "finish_reason":
                          "content_filter"}]}
    events = stream.feed(chunk)                               # a parsed chunk works too
    deltas = [orjson.loads(e.split(b"\n", 1)[1][6:]) for e in events]
    assert [d["delta"] for d in deltas if d["type"] == "response.output_text.delta"] == ["No."]
    assert stream.feed(["not a chunk"]) == []
    last = [orjson.loads(e.split(b"\n", 1)[1][6:]) for e in stream.finish()]
    assert last[-1]["type"] == "response.incomplete"
    assert last[-1]["response"]["id"] == "resp_fixed"
    assert last[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert stream.fail(UpstreamError("late")) == []           # one terminal event only


def test_a_stream_event_that_is_not_json_fails_the_response():
    stream = rst.ResponsesStream({"model": "m"})
    events = [orjson.loads(e.split(b"\n", 1)[1][6:]) for e in stream.feed(b"data: {oops")]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


def test_fail_keeps_what_was_said_marked_incomplete():
    stream = rst.ResponsesStream({"model": "m"})
    stream.feed({"choices": [{"index": 0, "delta": {"content": "Half a sen"}}]})
    (failed,) = [orjson.loads(e.split(b"\n", 1)[1][6:])
                 for e in stream.fail(RateLimited("Slow down.", retry_after=2))]
    EVENTS.validate_python(failed)
    (item,) = failed["response"]["output"]
    assert (item["type"], item["status"], item["content"][0]["text"]) == (
        "message", "incomplete", "Half a sen")
    assert failed["response"]["error"] == {
        "code": "rate_limit_exceeded", "message": "Slow down. Please try again in 2s."}
