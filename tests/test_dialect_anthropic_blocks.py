"""The content blocks of one Anthropic message → chat messages (apiarium/dialects/
anthropic_blocks.py), and the path-naming checks the request translation shares.  The blocks are
Anthropic's request blocks (wire-formats §4.2); the chat messages made of them are checked with
the openai SDK's ChatCompletionMessageParam.  tests/test_dialect_messages.py covers the request
as a whole through ``anthropic_messages.to_chat``, with the anthropic SDK."""
from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam

from apiarium.dialects import anthropic_blocks as blocks
from apiarium.errors import InvalidRequest

CHAT = pydantic.TypeAdapter(ChatCompletionMessageParam)
PNG_B64 = "iVBORw0KGgo="


def realize(value: Any) -> Any:
    """A validated TypedDict with its lazily checked iterables consumed (and so checked)."""
    if isinstance(value, dict):
        return {k: realize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ValidatorIterator":
        return [realize(v) for v in value]
    return value


def user(content: Any) -> list[dict]:
    return checked(blocks.user_turn(content, "messages[0].content"))


def assistant(content: Any, keep_reasoning: bool = False) -> list[dict]:
    return checked(blocks.assistant_turn(content, "messages[1].content", keep_reasoning))


def checked(messages: list[dict]) -> list[dict]:
    for m in messages:
        plain = {k: v for k, v in m.items() if k != "reasoning_content"}   # not in the SDK type
        assert realize(CHAT.validate_python(plain)) == plain
    return messages


def refused(call, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        call(*args)
    assert exc.value.status == 400
    return exc.value


# ---------------------------------------------------------------------------- checks

def test_bad_is_a_400_whose_param_is_the_path():
    err = blocks.bad("messages[2].content[1].type", "must be `text`.", code="unsupported_block")
    assert isinstance(err, InvalidRequest)
    assert (err.param, err.code) == ("messages[2].content[1].type", "unsupported_block")
    assert err.message == "`messages[2].content[1].type` must be `text`."
    assert err.envelope()["error"]["param"] == "messages[2].content[1].type"


@pytest.mark.parametrize("call, value, words", [
    (lambda v: blocks.as_object(v, "p"), [], "must be an object"),
    (lambda v: blocks.as_str(v, "p"), 3, "must be a string"),
    (lambda v: blocks.as_int(v, "p", 1), 0, "integer ≥ 1"),
    (lambda v: blocks.as_int(v, "p", 0), True, "integer ≥ 0"),
    (lambda v: blocks.as_int(v, "p", 0), 1.5, "integer ≥ 0"),
    (lambda v: blocks.as_number(v, "p"), "0.5", "must be a number"),
    (lambda v: blocks.as_number(v, "p"), False, "must be a number"),
    (lambda v: blocks.as_blocks(v, "p"), "text", "list of content blocks")])
def test_checks_refuse_the_wrong_type(call, value, words):
    err = refused(call, value)
    assert err.param == "p" and words in err.message


def test_checks_pass_good_values_through():
    assert blocks.as_object({"a": 1}, "p") == {"a": 1}
    assert blocks.as_str("", "p") == ""
    assert blocks.as_int(0, "p", 0) == 0
    assert blocks.as_number(0.5, "p") == 0.5 and blocks.as_number(2, "p") == 2
    assert blocks.as_blocks([], "p") == []


def test_every_block_needs_a_string_type():
    for bad_block in ({"text": "x"}, {"type": 3}, "text"):
        err = refused(blocks.as_blocks, [{"type": "text", "text": "a"}, bad_block], "c")
        assert err.param == "c[1]"


# ---------------------------------------------------------------------------- user turns

def test_a_string_and_text_blocks_are_one_user_string():
    assert user("Hello") == [{"role": "user", "content": "Hello"}]
    assert user([{"type": "text", "text": "One"}, {"type": "text", "text": ""},
                 {"type": "text", "text": "Two", "cache_control": {"type": "ephemeral"}}]) == [
        {"role": "user", "content": "One\n\nTwo"}]


def test_images_make_parts_with_image_urls():
    got = user([{"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG_B64}},
                {"type": "image", "source": {"type": "url",
                                             "url": "https://example.com/a.jpg"}}])
    assert got == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]


def test_text_documents_and_search_results_become_text():
    got = user([
        {"type": "document", "title": "Notes",
         "source": {"type": "text", "media_type": "text/plain", "data": "Bees dance."}},
        {"type": "document", "source": {"type": "content", "content": [
            {"type": "text", "text": "Line 1"}, {"type": "text", "text": "Line 2"}]}},
        {"type": "search_result", "title": "Waggle", "source": "https://example.org/w",
         "content": [{"type": "text", "text": "It points to food."}]}])
    assert got == [{"role": "user", "content": "Notes\n\nBees dance.\n\nLine 1\nLine 2\n\n"
                                               "Waggle\nhttps://example.org/w\n\n"
                                               "It points to food."}]


def test_tool_results_come_first_as_tool_messages():
    got = user([
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True,
         "content": [{"type": "text", "text": "city not found"}]},
        {"type": "tool_result", "tool_use_id": "toolu_03", "is_error": True},
        {"type": "tool_result", "tool_use_id": "toolu_04"}])
    assert got == [
        {"role": "tool", "tool_call_id": "toolu_01", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_02", "content": "Error: city not found"},
        {"role": "tool", "tool_call_id": "toolu_03", "content": "Error"},
        {"role": "tool", "tool_call_id": "toolu_04", "content": ""},
        {"role": "user", "content": "Here you go."}]


def test_images_in_a_tool_result_follow_in_the_user_message():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG_B64}}
    got = user([{"type": "tool_result", "tool_use_id": "toolu_9",
                 "content": [{"type": "text", "text": "Screenshot taken."}, image]},
                {"type": "text", "text": "What do you see?"}])
    assert got == [
        {"role": "tool", "tool_call_id": "toolu_9", "content": "Screenshot taken."},
        {"role": "user", "content": [
            {"type": "text", "text": "The result of tool call toolu_9 included these images:"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            {"type": "text", "text": "What do you see?"}]}]


@pytest.mark.parametrize("content, param, code", [
    ([{"type": "tool_result", "content": "x"}], "messages[0].content[0].tool_use_id", None),
    ([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}],
     "messages[0].content[0].is_error", None),
    ([{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "f",
                                      "input": {}}], "messages[0].content[1].type", None),
    ([{"type": "thinking", "thinking": "hm", "signature": "s"}],
     "messages[0].content[0].type", None),
    ([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}],
     "messages[0].content[0].source.type", "unsupported_block"),
    ([{"type": "image", "source": {"type": "svg", "data": "x"}}],
     "messages[0].content[0].source.type", None),
    ([{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}],
     "messages[0].content[0].source.data", None),
    ([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                      "data": "JVBERi0="}}],
     "messages[0].content[0].source.type", "unsupported_block"),
    ([{"type": "search_result", "title": "t", "source": "s", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x"}}]}],
     "messages[0].content[0].content[0].type", None),
    ([{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "video", "url": "x"}]}], "messages[0].content[0].content[0].type",
     "unsupported_block"),
    ([{"type": "audio", "data": "x"}], "messages[0].content[0].type", "unsupported_block"),
])
def test_user_blocks_that_cannot_be_translated_name_their_path(content, param, code):
    err = refused(blocks.user_turn, content, "messages[0].content")
    assert err.param == param
    if code:
        assert err.code == code


# ---------------------------------------------------------------------------- assistant turns

def test_assistant_text_and_tool_use():
    got = assistant([{"type": "text", "text": "Let me check."},
                     {"type": "tool_use", "id": "toolu_01XyZ", "name": "get_weather",
                      "input": {"city": "Oslo"}},
                     {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}}])
    assert got == [{"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "toolu_01XyZ", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "toolu_02", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}]
    assert orjson.loads(got[0]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}


def test_assistant_tool_use_alone_has_null_content():
    (message,) = assistant([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1]}}])
    assert message["content"] is None and len(message["tool_calls"]) == 1


def test_assistant_strings():
    assert assistant("Done.") == [{"role": "assistant", "content": "Done."}]
    assert assistant("") == []
    assert assistant([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == [
        {"role": "assistant", "content": "a\n\nb"}]


def test_thinking_is_dropped_unless_asked_to_keep_it():
    content = [{"type": "thinking", "thinking": "First, Oslo.", "signature": "sig1"},
               {"type": "redacted_thinking", "data": "opaque"},
               {"type": "thinking", "thinking": "Then answer.", "signature": "sig2"},
               {"type": "text", "text": "21 C."}]
    assert assistant(content) == [{"role": "assistant", "content": "21 C."}]
    assert assistant(content, keep_reasoning=True) == [
        {"role": "assistant", "content": "21 C.",
         "reasoning_content": "First, Oslo.\n\nThen answer."}]
    # thinking alone says nothing to carry over
    assert assistant(content[:3], keep_reasoning=True) == []


@pytest.mark.parametrize("content, param", [
    ([{"type": "image", "source": {"type": "url", "url": "https://x"}}],
     "messages[1].content[0].type"),
    ([{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}],
     "messages[1].content[0].input"),
    ([{"type": "tool_use", "name": "f", "input": {}}], "messages[1].content[0].id"),
    ([{"type": "text", "text": None}], "messages[1].content[0].text"),
    ([{"type": "thinking", "thinking": 3}], "messages[1].content[0].thinking")])
def test_assistant_blocks_that_cannot_be_translated_name_their_path(content, param):
    assert refused(blocks.assistant_turn, content, "messages[1].content", False).param == param
