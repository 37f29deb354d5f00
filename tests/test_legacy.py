"""Legacy ``/v1/completions`` over chat (apiarium/legacy.py): the prompt becomes one user turn
(``to_chat``), a chat answer becomes a ``text_completion`` (``from_chat``), and a chat stream
becomes text_completion chunks (``stream_from_chat``).  Shapes follow wire-formats §2 and are
checked with the openai SDK's ``Completion`` type (the SDK uses it for streamed chunks too)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from openai.types import Completion

from apiarium import legacy, sse
from apiarium.errors import InvalidRequest

CREATED = 1_767_225_600
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def chat_answer(content, finish="stop", usage=USAGE, **extra) -> dict:
    out = {"id": "chatcmpl-gw-7f3a", "object": "chat.completion", "created": CREATED,
           "model": "gpt-5", "choices": [{"index": 0, "logprobs": None, "finish_reason": finish,
                                          "message": {"role": "assistant", "content": content,
                                                      "refusal": None}}], **extra}
    if usage is not None:
        out["usage"] = usage
    return out


def completion(obj: dict) -> Completion:
    """``obj`` checked as the SDK's Completion.  Streamed chunks carry ``finish_reason: null``
    until the end (wire-formats §2), which the SDK type does not declare: checked apart."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in obj["choices"]]
    return Completion.model_validate({**obj, "choices": choices})


def chunk(delta: dict | None = None, finish=None, *, choices=True, **extra) -> bytes:
    """One chat.completion.chunk event, as a provider yields it."""
    body = {"id": "chatcmpl-gw-9", "object": "chat.completion.chunk", "created": CREATED,
            "model": "gpt-5", **extra}
    body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None,
                        "finish_reason": finish}] if choices else []
    return sse.encode(body)


async def _events(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


def relay(frames: list[bytes], body: dict) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [e async for e in legacy.stream_from_chat(_events(frames), body)]
    return asyncio.run(collect())


def data_of(event: bytes) -> dict:
    name, data = sse.parse(event)
    assert name is None                          # plain `data:` frames, no event names
    return orjson.loads(data)


# ---------------------------------------------------------------------------- the prompt

@pytest.mark.parametrize("prompt, text", [("Say hi", "Say hi"), (["Say hi"], "Say hi"),
                                          ("  spaced  ", "  spaced  ")])
def test_the_prompt_is_one_string(prompt, text):
    assert legacy.prompt_text({"prompt": prompt}) == text


@pytest.mark.parametrize("body, code, words", [
    ({}, "missing_prompt", "required"),
    ({"prompt": None}, "missing_prompt", "required"),
    ({"prompt": ""}, "invalid_prompt", "empty"),
    ({"prompt": " \n\t"}, "invalid_prompt", "empty"),
    ({"prompt": ["a", "b"]}, "invalid_request", "2 prompts"),
    ({"prompt": [1, 2, 3]}, "invalid_request", "token arrays"),
    ({"prompt": [[1, 2], [3]]}, "invalid_request", "token arrays"),
    ({"prompt": 42}, "invalid_request", "must be a string"),
])
def test_bad_prompts_are_400_naming_prompt(body, code, words):
    with pytest.raises(InvalidRequest) as exc:
        legacy.prompt_text(body)
    assert exc.value.status == 400 and exc.value.param == "prompt"
    assert exc.value.code == code and words in exc.value.message


# ---------------------------------------------------------------------------- to_chat

def test_to_chat_makes_one_user_turn_and_carries_the_shared_fields():
    body = {"model": "gpt-5", "prompt": "Once upon a time", "max_tokens": 16,
            "temperature": 0.2, "top_p": 0.9, "stop": ["\n"], "seed": 7, "user": "u-1",
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"50256": -100},
            "stream_options": {"include_usage": True},
            # legacy-only fields chat has no use for
            "echo": True, "logprobs": 3, "best_of": 2, "suffix": "The end."}
    chat = legacy.to_chat(body)
    assert chat == {"model": "gpt-5",
                    "messages": [{"role": "user", "content": "Once upon a time"}],
                    "stream": False, "max_tokens": 16, "temperature": 0.2, "top_p": 0.9,
                    "stop": ["\n"], "seed": 7, "user": "u-1", "presence_penalty": 0.5,
                    "frequency_penalty": -0.5, "logit_bias": {"50256": -100},
                    "stream_options": {"include_usage": True}}


def test_to_chat_streams_when_asked_and_checks_the_prompt():
    assert legacy.to_chat({"model": "m", "prompt": ["x"], "stream": True})["stream"] is True
    assert legacy.to_chat({"model": "m", "prompt": "x", "stream": None})["stream"] is False
    with pytest.raises(InvalidRequest):
        legacy.to_chat({"model": "m"})


# ---------------------------------------------------------------------------- from_chat

def test_from_chat_gives_a_text_completion():
    out = legacy.from_chat(chat_answer("Hello there."), {"prompt": "Say hi"})
    parsed = completion(out)
    assert out["object"] == "text_completion"
    assert out["id"] == "cmpl-gw-7f3a"                   # chatcmpl-… becomes cmpl-…
    assert (out["created"], out["model"]) == (CREATED, "gpt-5")
    assert out["choices"] == [{"text": "Hello there.", "index": 0, "logprobs": None,
                               "finish_reason": "stop"}]
    assert out["usage"] == USAGE and parsed.usage.total_tokens == 12


def test_from_chat_echo_puts_the_prompt_first():
    out = legacy.from_chat(chat_answer(" world"), {"prompt": "Hello", "echo": True})
    assert out["choices"][0]["text"] == "Hello world"
    out = legacy.from_chat(chat_answer(" world"), {"prompt": "Hello", "echo": False})
    assert out["choices"][0]["text"] == " world"


@pytest.mark.parametrize("content, text", [
    (None, ""), ("", ""),
    ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab")])
def test_from_chat_content_shapes(content, text):
    out = legacy.from_chat(chat_answer(content, finish="length"), {"prompt": "p"})
    completion(out)
    assert out["choices"][0]["text"] == text and out["choices"][0]["finish_reason"] == "length"


def test_from_chat_without_usage_has_no_usage_and_keeps_choice_indexes():
    answer = chat_answer("one", usage=None)
    answer["choices"].append({"index": 1, "finish_reason": "stop", "logprobs": None,
                              "message": {"role": "assistant", "content": "two"}})
    out = legacy.from_chat(answer, {"prompt": "p"})
    completion(out)
    assert "usage" not in out
    assert [(c["index"], c["text"], c["logprobs"]) for c in out["choices"]] == [
        (0, "one", None), (1, "two", None)]


def test_from_chat_logprobs_are_none_even_if_asked_for():
    answer = chat_answer("x")
    answer["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": -0.1}]}
    out = legacy.from_chat(answer, {"prompt": "p", "logprobs": 2})
    assert out["choices"][0]["logprobs"] is None


# ---------------------------------------------------------------------------- the stream

def test_stream_translates_chunks_and_passes_done_through():
    frames = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
              chunk({"content": "lo"}), chunk({}, "stop"), sse.DONE]
    events = relay(frames, {"prompt": "Say hi"})
    assert events[-1] == sse.DONE                        # forwarded untouched, last
    chunks = [data_of(e) for e in events[:-1]]
    for c in chunks:
        completion(c)
        assert c["object"] == "text_completion" and c["id"] == "cmpl-gw-9"
        assert (c["created"], c["model"]) == (CREATED, "gpt-5")
    # the role-only frame says nothing a text completion can carry: dropped
    assert [c["choices"] for c in chunks] == [
        [{"text": "Hel", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "lo", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]]
    assert all("usage" not in c for c in chunks)
    assert all(e.endswith(b"\n\n") and e.startswith(b"data: ") for e in events)


def test_stream_echo_comes_first_once():
    frames = [chunk({"role": "assistant", "content": ""}), chunk({"content": " world"}),
              chunk({}, "length"), sse.DONE]
    chunks = [data_of(e) for e in relay(frames, {"prompt": "Hello", "echo": True})[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " world", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_usage_chunk_passes_through():
    frames = [chunk({"role": "assistant", "content": ""}, usage=None),
              chunk({"content": "Hi"}, usage=None), chunk({}, "stop", usage=None),
              chunk(choices=False, usage=USAGE), sse.DONE]
    events = relay(frames, {"prompt": "p", "stream_options": {"include_usage": True}})
    chunks = [data_of(e) for e in events[:-1]]
    # every chunk carries "usage": null, the extra last one the totals (wire-formats §1.4)
    assert [c.get("usage", "absent") for c in chunks] == [None, None, USAGE]
    assert chunks[-1]["choices"] == []
    assert completion(chunks[-1]).usage.prompt_tokens == 9
    assert events[-1] == sse.DONE


def test_stream_error_frames_and_comments_pass_through_untouched():
    error = sse.encode({"error": {"message": "Upstream is overloaded, retry later.",
                                  "type": "server_error", "param": None, "code": "overloaded"}})
    keepalive = sse.comment()
    frames = [chunk({"role": "assistant", "content": ""}), keepalive, chunk({"content": "a"}),
              error]
    events = relay(frames, {"prompt": "p"})
    assert events[0] == keepalive and events[-1] == error
    assert data_of(events[1])["choices"][0]["text"] == "a"


def test_stream_keeps_the_index_of_each_choice():
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": CREATED,
            "model": "m", "choices": [
                {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
                {"index": 1, "delta": {"content": "b"}, "finish_reason": None}]}
    (event,) = relay([sse.encode(body)], {"prompt": "p"})
    assert [(c["index"], c["text"]) for c in data_of(event)["choices"]] == [(0, "a"), (1, "b")]
