"""Gemini 3 thought signatures round-tripped (issue 15, item 1): the openai SDK drives a
two-turn tool call, streamed, through the gateway to the fake Gemini, which signs its calls and
answers 400 when a later request's history lacks the signature it gave, or carries one it
never gave.  The gateway keeps ``call id → signature`` (``providers.signatures.Signatures``,
one store for the process: a reload keeps it, a restart empties it), shows it as
``extra_content.google.thought_signature``, takes it back from clients that send it, and falls
back to Google's ``skip_thought_signature_validator`` for history it did not produce."""
from __future__ import annotations

import json
import time

import openai
import pytest

from apiarium.providers.signatures import SKIP, Signatures
from tests.fakes.gemini_checks import signature_problem
from tests.support import MASTER_KEY

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
QUESTION = {"role": "user", "content": "Weather in Oslo?"}


@pytest.fixture
def models(fake_gemini) -> dict:
    return {"providers": {"google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                                     "api_key": fake_gemini.api_key, "breaker_failures": 0}},
            "models": {"g3": {"provider": "google", "upstream": "gemini-3-flash-preview"},
                       "g25": {"provider": "google", "upstream": "gemini-2.5-flash"}}}


@pytest.fixture
def gw(make_gateway, models):
    return make_gateway(models)


def streamed_call(client: openai.OpenAI, model: str = "g3") -> dict:
    """Turn one, streamed: the assistant message a client rebuilds from the deltas (id,
    name, arguments; what an agent keeps), and the extra_content the gateway showed."""
    calls: dict[int, dict] = {}
    for chunk in client.chat.completions.create(model=model, messages=[QUESTION],
                                                tools=[WEATHER], stream=True):
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": "",
                                               "extra": None})
            call["id"] = tc.id or call["id"]
            call["name"] = (tc.function.name if tc.function else None) or call["name"]
            call["arguments"] += (tc.function.arguments if tc.function else None) or ""
            call["extra"] = getattr(tc, "extra_content", None) or call["extra"]
    assert list(calls) == [0]
    return calls[0]


def history(call: dict, extra: dict | None = None) -> list[dict]:
    tc = {"id": call["id"], "type": "function",
          "function": {"name": call["name"], "arguments": call["arguments"]}}
    if extra is not None:
        tc["extra_content"] = extra
    return [QUESTION, {"role": "assistant", "content": None, "tool_calls": [tc]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp_c\": 21}"}]


def second_turn(client: openai.OpenAI, messages: list[dict], model: str = "g3") -> str:
    chunks = list(client.chat.completions.create(model=model, messages=messages,
                                                 tools=[WEATHER], stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def sent_signature(fake) -> str | None:
    model_turn = fake.last().json["contents"][1]
    assert model_turn["role"] == "model"
    return model_turn["parts"][0].get("thoughtSignature")


# ---------------------------------------------------------------------- the store
def test_the_store_is_a_bounded_lru_with_a_ttl(monkeypatch):
    store = Signatures(max_entries=3, ttl_s=60, max_bytes=1000)
    for i in range(4):
        store.put(f"call_{i}", f"sig{i}")
    assert len(store) == 3 and store.get("call_0") is None           # the oldest went
    assert store.get("call_1") == "sig1"                              # ...and this is fresh
    store.put("call_4", "sig4")
    assert store.get("call_2") is None and store.get("call_1") == "sig1"
    store.put("call_big", "x" * 990)                                  # the byte bound
    assert store.size <= 1000 and store.get("call_big")
    now = time.monotonic()
    monkeypatch.setattr("apiarium.providers.signatures.time.monotonic", lambda: now + 61)
    assert store.get("call_big") is None and store.get(5) is None


def test_the_fake_is_as_strict_as_gemini_3():
    body = {"contents": [QUESTION, {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}}]}]}
    assert "missing a thought_signature" in signature_problem("gemini-3-pro", body, set())
    assert signature_problem("gemini-2.5-pro", body, set()) is None
    body["contents"][1]["parts"][0]["thoughtSignature"] = "bm90IGdpdmVu"
    assert "Corrupted" in signature_problem("gemini-3-pro", body, set())
    assert signature_problem("gemini-3-pro", body, {"bm90IGdpdmVu"}) is None
    body["contents"][1]["parts"][0]["thoughtSignature"] = SKIP
    assert signature_problem("gemini-3-pro", body, set()) is None


# ---------------------------------------------------------------------- acceptance
def test_a_two_turn_streamed_tool_call_carries_the_signature_back(gw, fake_gemini):
    fake_gemini.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    client = gw.sdk(MASTER_KEY, timeout=15)
    call = streamed_call(client)
    given = fake_gemini.last()
    assert call["id"].startswith("call_") and len(call["id"]) < 40     # no signature in the id
    issued = (call["extra"] or {}).get("google", {}).get("thought_signature")
    assert issued in fake_gemini.signatures                          # shown as Google shows it
    assert given.json["contents"] == [{"role": "user", "parts": [{"text": "Weather in Oslo?"}]}]
    fake_gemini.reply_tool_call = None
    fake_gemini.reply_text = "Oslo is at 21 C."
    assert second_turn(client, history(call)) == "Oslo is at 21 C."    # the client kept no sig
    assert sent_signature(fake_gemini) == issued
    # a history without it never reaches Gemini unsigned: without the gateway, a 400
    raw = dict(fake_gemini.last().json)
    raw["contents"][1]["parts"][0].pop("thoughtSignature")
    assert "missing a thought_signature" in signature_problem("gemini-3-flash-preview", raw,
                                                              fake_gemini.signatures)


def test_a_history_the_gateway_did_not_produce_gets_the_skip_value(gw, fake_gemini):
    fake_gemini.reply_text = "Fine."
    client = gw.sdk(MASTER_KEY, timeout=15)
    foreign = {"id": "call_from_elsewhere", "name": "get_weather",
               "arguments": '{"city": "Oslo"}'}
    assert second_turn(client, history(foreign)) == "Fine."
    assert sent_signature(fake_gemini) == SKIP
    # a model that does not sign its calls gets no made-up signature
    assert second_turn(client, history(foreign), model="g25") == "Fine."
    assert sent_signature(fake_gemini) is None


def test_after_a_restart_the_skip_value_after_a_reload_the_signature(gw, fake_gemini, models):
    fake_gemini.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    call = streamed_call(gw.sdk(MASTER_KEY, timeout=15))
    issued = call["extra"]["google"]["thought_signature"]
    fake_gemini.reply_tool_call, fake_gemini.reply_text = None, "Still 21 C."
    models["models"]["g3-too"] = {"provider": "google", "upstream": "gemini-3-flash-preview"}
    gw.write_models(models)
    assert gw.reload()                                   # new providers, the same store
    assert second_turn(gw.sdk(MASTER_KEY, timeout=15), history(call)) == "Still 21 C."
    assert sent_signature(fake_gemini) == issued
    gw.restart()                                         # the store is gone with the process
    assert second_turn(gw.sdk(MASTER_KEY, timeout=15), history(call)) == "Still 21 C."
    assert sent_signature(fake_gemini) == SKIP


def test_a_signature_the_client_sends_back_is_used_and_a_wrong_one_refused(gw, fake_gemini):
    fake_gemini.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    client = gw.sdk(MASTER_KEY, timeout=15)
    answer = client.chat.completions.create(model="g3", messages=[QUESTION], tools=[WEATHER])
    tc = answer.choices[0].message.tool_calls[0]
    issued = tc.extra_content["google"]["thought_signature"]          # non-stream shows it too
    assert issued in fake_gemini.signatures and answer.choices[0].finish_reason == "tool_calls"
    fake_gemini.reply_tool_call, fake_gemini.reply_text = None, "OK."
    # the SDK's own message object, extra_content and all, as agents append it
    messages = [QUESTION, answer.choices[0].message,
                {"role": "tool", "tool_call_id": tc.id, "content": "21"}]
    assert client.chat.completions.create(model="g3", messages=messages).choices[0] \
        .message.content == "OK."
    assert sent_signature(fake_gemini) == issued
    call = {"id": tc.id, "name": "get_weather", "arguments": tc.function.arguments}
    with pytest.raises(openai.BadRequestError) as err:
        second_turn(client, history(call, {"google": {"thought_signature": "d3Jvbmc="}}))
    assert "Corrupted thought signature" in str(err.value)
    assert json.loads(fake_gemini.last().body)["contents"][1]["parts"][0][
        "thoughtSignature"] == "d3Jvbmc="


def test_extra_content_is_not_passed_on_to_an_openai_upstream(make_gateway, fake_openai):
    from tests.conftest import openai_models
    gw = make_gateway(openai_models(fake_openai))
    tc = {"id": "call_1", "type": "function", "extra_content": {"google": {
        "thought_signature": "c2ln"}}, "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [QUESTION, {"role": "assistant", "content": None, "tool_calls": [tc]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21"}]
    gw.sdk(MASTER_KEY).chat.completions.create(model="gpt-5", messages=messages)
    sent = fake_openai.last().json["messages"][1]["tool_calls"][0]
    assert "extra_content" not in sent and sent["id"] == "call_1"
