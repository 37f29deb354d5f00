"""The two agent dialects driven by the official SDKs over each provider kind: the `openai`
SDK's ``responses.create`` / ``responses.stream`` and the `anthropic` SDK's
``messages.create`` / ``messages.stream`` / ``messages.count_tokens``, on an OpenAI-, an
Anthropic- and a Gemini-kind model (fakes on loopback), text and a tool round trip (and
thinking on Messages), every answer and event validated strictly by the SDK's own types."""
from __future__ import annotations

import json

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import kinds_providers
from tests.support import httpx  # the httpx the SDKs are built on

KINDS = ("gpt", "claude", "gem")               # openai, anthropic, gemini kinds
FAKE_OF = {"gpt": "fake_openai", "claude": "fake_anthropic", "gem": "fake_gemini"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}},
           "required": ["city"], "additionalProperties": False}
RESULT = "sunny and 21 degrees"
RAW_EVENTS = ("message_start", "content_block_start", "content_block_delta",
              "content_block_stop", "message_delta", "message_stop")


def kinds_models(fake_openai, fake_anthropic, fake_gemini) -> dict:
    """One model of each kind: ``gpt`` (openai), ``claude`` (anthropic), ``gem`` (gemini)."""
    return {
        "providers": kinds_providers(fake_openai, fake_anthropic, fake_gemini),
        "models": {
            "gpt": {"provider": "oa", "upstream": "gpt-5"},
            "claude": {"provider": "an", "upstream": "claude-sonnet-4-5"},
            "gem": {"provider": "go", "upstream": "gemini-2.5-flash"},
        },
    }


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic, fake_gemini):
    return make_gateway(kinds_models(fake_openai, fake_anthropic, fake_gemini),
                        rate_limit={"rpm": 1000})


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def upstream(request, kind):
    """The fake that serves ``kind``."""
    return request.getfixturevalue(FAKE_OF[kind])


def strict(model_type, value):
    """``value`` (an SDK object or plain data) validated strictly as ``model_type``: the SDKs
    build their answers without validation, so this is where a wrong field would show."""
    data = value.model_dump(mode="json", exclude_unset=True, warnings=False) \
        if hasattr(value, "model_dump") else value
    return TypeAdapter(model_type).validate_python(data)


def claude_client(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.key_for(), max_retries=0,
                               http_client=anthropic.DefaultHttpxClient(
                                   transport=httpx.HTTPTransport(local_address="127.0.0.1")))


def sent_text(fake) -> str:
    """The last request the fake received, as text (to find what the gateway passed on)."""
    return fake.last().body.decode()


# ------------------------------------------------------------------------------ Responses

def test_responses_create_text(gw, kind, upstream):
    client = gw.sdk(gw.key_for())
    raw = client.responses.with_raw_response.create(model=kind, input="hello busy bees",
                                                    instructions="Be brief.")
    answer = strict(Response, json.loads(raw.text))
    assert answer.status == "completed" and answer.model == kind
    assert answer.output_text == "echo: hello busy bees"
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    assert "Be brief." in sent_text(upstream)


def test_responses_stream_text(gw, kind, upstream):
    upstream.reply_text = "one two three four five six"
    client = gw.sdk(gw.key_for())
    with client.responses.stream(model=kind, input="count please") as stream:
        events = [strict(ResponseStreamEvent, e) for e in stream]
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "one two three four five six"
    strict(Response, final)
    assert final.usage is not None and final.usage.output_tokens > 0


def _weather_tools() -> list[dict]:
    return [{"type": "function", "name": "get_weather", "description": "A city's weather.",
             "parameters": WEATHER, "strict": True}]


def _round_trip_input(first) -> list:
    """The conversation a client sends back: the question, the answer's items, the result."""
    call = next(i for i in first.output if i.type == "function_call")
    items = [i.model_dump(mode="json", exclude_none=True, exclude={"parsed_arguments"},
                          warnings=False) for i in first.output]     # the SDK's own field
    return [{"role": "user", "content": "What is the weather in Paris?"}, *items,
            {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}]


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_responses_function_tool_round_trip(gw, kind, upstream, streamed):
    client = gw.sdk(gw.key_for())
    tools = _weather_tools()
    upstream.tool_call_next("get_weather", '{"city": "Paris"}')

    def ask(items):
        if not streamed:
            return strict(Response, client.responses.create(model=kind, input=items,
                                                            tools=tools))
        with client.responses.stream(model=kind, input=items, tools=tools) as stream:
            done = [strict(ResponseStreamEvent, e) for e in stream
                    if e.type == "response.output_item.done"]
            final = stream.get_final_response()
        assert [e.item.type for e in done] == [i.type for i in final.output]
        return strict(Response, final)

    first = ask([{"role": "user", "content": "What is the weather in Paris?"}])
    calls = [i for i in first.output if i.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    upstream.reply_text = "It is sunny in Paris."
    second = ask(_round_trip_input(first))
    assert second.output_text == "It is sunny in Paris."
    assert not [i for i in second.output if i.type == "function_call"]
    assert RESULT in sent_text(upstream)                  # the tool's result went upstream


# ------------------------------------------------------------------------------ Messages

def test_messages_create_text(gw, kind, upstream):
    raw = claude_client(gw).messages.with_raw_response.create(
        model=kind, max_tokens=200, system="Be brief.",
        messages=[{"role": "user", "content": "hello busy bees"}])
    message = strict(Message, json.loads(raw.http_response.text))
    assert message.model == kind and message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "echo: hello busy bees"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert "Be brief." in sent_text(upstream)


def test_messages_stream_text(gw, kind, upstream):
    upstream.reply_text = "one two three four five six"
    with claude_client(gw).messages.stream(
            model=kind, max_tokens=200,
            messages=[{"role": "user", "content": "count please"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [strict(RawMessageStreamEvent, e) for e in events if e.type in RAW_EVENTS]
    assert raw[0].type == "message_start" and raw[-1].type == "message_stop"
    text = "".join(e.text for e in events if e.type == "text")
    assert text == "one two three four five six"
    final = strict(Message, final)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def _claude_round_trip(client, kind: str, streamed: bool, **extra) -> tuple[Message, list]:
    """Ask for the weather with one tool, answer the tool_use with a tool_result, and return
    (the final message, the conversation)."""
    tools = [{"name": "get_weather", "description": "A city's weather.",
              "input_schema": WEATHER}]
    convo: list = [{"role": "user", "content": "What is the weather in Paris?"}]

    def ask() -> Message:
        if not streamed:
            return strict(Message, client.messages.create(
                model=kind, max_tokens=2048, messages=convo, tools=tools, **extra))
        with client.messages.stream(model=kind, max_tokens=2048, messages=convo,
                                    tools=tools, **extra) as stream:
            for event in stream:
                if event.type in RAW_EVENTS:
                    strict(RawMessageStreamEvent, event)
            return strict(Message, stream.get_final_message())

    first = ask()
    uses = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and len(uses) == 1
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}
    convo += [{"role": "assistant", "content": [b.model_dump(mode="json", exclude_none=True)
                                                for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                            "content": RESULT}]}]
    return ask(), convo


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_messages_tool_use_round_trip(gw, kind, upstream, streamed):
    upstream.tool_call_next("get_weather", '{"city": "Paris"}')
    client = claude_client(gw)
    upstream.reply_text = "It is sunny in Paris."
    final, _ = _claude_round_trip(client, kind, streamed)
    assert final.stop_reason == "end_turn"
    assert [b.text for b in final.content if b.type == "text"] == ["It is sunny in Paris."]
    assert RESULT in sent_text(upstream)


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_messages_thinking(gw, kind, upstream, streamed):
    client = claude_client(gw)
    ask = {"model": kind, "max_tokens": 4096, "thinking": {"type": "enabled",
                                                           "budget_tokens": 2048},
           "messages": [{"role": "user", "content": "think about bees"}]}
    if streamed:
        with client.messages.stream(**ask) as stream:
            thought = "".join(e.thinking for e in stream if e.type == "thinking")
            message = strict(Message, stream.get_final_message())
    else:
        message = strict(Message, client.messages.create(**ask))
        thought = "".join(b.thinking for b in message.content if b.type == "thinking")
    assert message.content[-1].type == "text"
    assert message.content[-1].text == "echo: think about bees"
    sent = upstream.last().json
    if kind == "gpt":           # the fake OpenAI model does not show its reasoning
        assert sent["reasoning_effort"] in ("low", "medium", "high")
    else:
        assert thought == upstream.thought_text
        assert message.content[0].type == "thinking" and message.content[0].signature


def test_messages_thinking_with_a_tool_round_trip(gw, kind, upstream):
    """Thinking blocks kept in the history of a tool round trip are accepted by every kind
    (Anthropic checks their signatures; the others get them translated or dropped)."""
    upstream.tool_call_next("get_weather", '{"city": "Paris"}')
    upstream.reply_text = "Sunny."
    final, convo = _claude_round_trip(claude_client(gw), kind, False,
                                      thinking={"type": "enabled", "budget_tokens": 1024})
    assert final.content[-1].text == "Sunny."
    if kind != "gpt":
        assert convo[1]["content"][0]["type"] == "thinking"


def test_count_tokens(gw, kind, upstream):
    client = claude_client(gw)
    short = client.messages.count_tokens(model=kind, messages=[
        {"role": "user", "content": "one two three four five"}])
    longer = client.messages.count_tokens(model=kind, system="Be brief.", messages=[
        {"role": "user", "content": "one two three four five " * 20}])
    assert 0 < short.input_tokens < longer.input_tokens
    if kind == "claude":       # Anthropic's own counter (the fake counts words)
        assert short.input_tokens == 5
        assert upstream.last().path == "/v1/messages/count_tokens"
    else:                      # an estimate: no upstream call
        assert upstream.requests == []
