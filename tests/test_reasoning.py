"""Reasoning controls in one table (issue 15, item 2): ``reasoning_effort`` reaches each fake
upstream as that vendor's own control (Gemini 3 thinkingLevel, Gemini 2.5 thinkingBudget,
Anthropic thinking budget_tokens with max_tokens above it, OpenAI as it is), never two at
once; thinking comes back as ``reasoning_content`` only when the client asked for it; and
Anthropic's thinking that led to a tool call goes back in front of it."""
from __future__ import annotations

import json
import textwrap

import openai
import pytest

from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.config import ConfigError, load_config
from apiarium.errors import InvalidRequest
from apiarium.providers import reasoning
from apiarium.providers.anthropic_request import to_anthropic
from apiarium.providers.reasoning import (
    anthropic_thinking,
    family,
    gemini_thinking,
    thinking_problem,
    wants_reasoning,
)
from apiarium.providers.signatures import Signatures
from tests.support import MASTER_KEY, httpx

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
HELLO = [{"role": "user", "content": "Say hello"}]


def spec(kind: str, upstream: str, thinking: str = "", cap: int = 0) -> ModelSpec:
    return ModelSpec(alias="m", provider=ProviderSpec(name="p", kind=kind, base_url="",
                                                      api_key="k"),
                     upstream=upstream, thinking=thinking, max_output_tokens=cap)


# ---------------------------------------------------------------------- the table
@pytest.mark.parametrize("effort, flash, pro, budget, budget_pro, claude", [
    ("none", "MINIMAL", "LOW", 0, 128, None),
    ("minimal", "MINIMAL", "LOW", 1024, 1024, 1024),
    ("low", "LOW", "LOW", 1024, 1024, 2048),
    ("medium", "MEDIUM", "MEDIUM", 8192, 8192, 8192),
    ("high", "HIGH", "HIGH", 24576, 24576, 24576),
    ("xhigh", "HIGH", "HIGH", 24576, 24576, 24576)])
def test_each_effort_maps_to_one_control_per_family(effort, flash, pro, budget, budget_pro,
                                                     claude):
    body = {"reasoning_effort": effort}
    shown = effort != "none"
    assert gemini_thinking(spec("gemini", "gemini-3-flash-preview"), body) == {
        "thinkingLevel": flash, "includeThoughts": shown}
    assert gemini_thinking(spec("gemini", "gemini-3.1-pro-preview"), body) == {
        "thinkingLevel": pro, "includeThoughts": shown}
    assert gemini_thinking(spec("gemini", "gemini-2.5-flash"), body) == {
        "thinkingBudget": budget, "includeThoughts": shown}
    assert gemini_thinking(spec("gemini", "gemini-2.5-pro"), body) == {
        "thinkingBudget": budget_pro, "includeThoughts": shown}
    thinking, max_tokens = anthropic_thinking(spec("anthropic", "claude-sonnet-4-5"), body, 4096)
    if claude is None:
        assert thinking is None and max_tokens == 4096
    else:
        assert thinking == {"type": "enabled", "budget_tokens": claude}
        assert max_tokens == (4096 if claude < 4096 else claude + 4096)
    assert wants_reasoning(body) is shown


def test_the_family_comes_from_the_catalog_else_the_upstream_id():
    assert family("gemini", spec("gemini", "gemini-3-pro-preview")) == "level"
    assert family("gemini", spec("gemini", "models/gemini-2.5-flash-lite")) == "budget"
    assert family("gemini", spec("gemini", "gemini-2.0-flash")) == "none"
    assert family("gemini", spec("gemini", "my-tuned-model", thinking="budget")) == "budget"
    assert family("anthropic", spec("anthropic", "claude-3-5-haiku-latest")) == "none"
    assert family("anthropic", spec("anthropic", "claude-3-7-sonnet-latest")) == "budget"
    assert family("anthropic", spec("anthropic", "claude-opus-4-1")) == "budget"
    assert family("openai", spec("openai", "gpt-5")) == "none"
    assert gemini_thinking(spec("gemini", "gemini-2.0-flash"), {"reasoning_effort": "high"}) \
        is None
    assert gemini_thinking(spec("gemini", "gemini-3-pro"), {}) is None


def test_anthropic_max_tokens_is_raised_within_the_models_cap():
    body = {"reasoning_effort": "high"}
    assert anthropic_thinking(spec("anthropic", "claude-sonnet-4-5"), body, 100) == (
        {"type": "enabled", "budget_tokens": 24576}, 24676)
    capped = spec("anthropic", "claude-sonnet-4-5", cap=10000)
    assert anthropic_thinking(capped, body, 100) == (
        {"type": "enabled", "budget_tokens": 9999}, 10000)
    tiny = spec("anthropic", "claude-sonnet-4-5", cap=1000)
    assert anthropic_thinking(tiny, body, 100) == (None, 100)        # no budget fits: none


def test_googles_own_thinking_config_is_taken_and_never_with_a_second_control():
    g3 = spec("gemini", "gemini-3-flash")
    assert gemini_thinking(g3, {"extra_body": {"google": {"thinking_config": {
        "thinking_level": "low", "include_thoughts": True}}}}) == {
        "thinkingLevel": "LOW", "includeThoughts": True}
    assert wants_reasoning({"google": {"thinking_config": {"include_thoughts": True}}})
    for body, param in (
            ({"reasoning_effort": "low", "google": {"thinking_config": {"thinking_budget": 9}}},
             "reasoning_effort"),
            ({"google": {"thinking_config": {"thinking_level": "low", "thinking_budget": 9}}},
             "google.thinking_config"),
            ({"google": {"thinking_config": {"thinking_colour": "red"}}},
             "google.thinking_config.thinking_colour"),
            ({"reasoning_effort": "enormous"}, "reasoning_effort")):
        with pytest.raises(InvalidRequest) as err:
            gemini_thinking(g3, body)
        assert err.value.param == param


def test_which_controls_each_kind_has():
    assert thinking_problem("gemini", "level") is None
    assert thinking_problem("anthropic", "budget") is None
    assert "Anthropic models take a thinking budget" in thinking_problem("anthropic", "level")
    assert thinking_problem("openai", "none") is None
    assert thinking_problem("openai", "budget")
    assert thinking_problem("my.module:Kind", "level") is None
    assert set(reasoning.KIND_CONTROLS["gemini"]) == set(reasoning.THINKING)


def test_the_catalog_checks_thinking_and_cache_with_file_and_line(tmp_path):
    (tmp_path / "apiarium.yaml").write_text("database: db.sqlite3\n")
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        providers:
          claude: {kind: anthropic, base_url: "http://127.0.0.1:9", api_key: k}
          google: {kind: gemini, base_url: "http://127.0.0.1:9", api_key: k}
        models:
          sonnet: {provider: claude, thinking: budget, cache: auto}
          odd: {provider: claude, thinking: level}
          g: {provider: google, cache: auto}
          h: {provider: google, thinking: lots}
          priced: {provider: google, credits: {input: 1, cached_input: 0.1, cache_write: 1.25,
                                               output: 4}}
        """))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "apiarium.yaml", env={})
    said = [str(p) for p in err.value.problems]
    assert any(p.endswith("models.yaml:6: models.odd.thinking: 'level' is not a control a "
                          "`anthropic` provider has: Anthropic models take a thinking budget "
                          "(budget or none)") for p in said), said
    assert any("models.yaml:7: models.g.cache:" in p for p in said), said
    assert any("models.yaml:8: models.h.thinking: 'lots' is not one of level, budget, none"
               in p for p in said), said
    assert len(said) == 3, said


# ---------------------------------------------------------------------- through the fakes
@pytest.fixture
def gw(make_gateway, fake_gemini, fake_anthropic, fake_openai):
    return make_gateway({
        "providers": {
            "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                       "api_key": fake_gemini.api_key, "breaker_failures": 0},
            "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                       "api_key": fake_anthropic.api_key, "breaker_failures": 0},
            "oa": {"kind": "openai", "base_url": fake_openai.base_url,
                   "api_key": fake_openai.api_key}},
        "models": {"g3": {"provider": "google", "upstream": "gemini-3-flash-preview"},
                   "g25": {"provider": "google", "upstream": "gemini-2.5-flash"},
                   "sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5"},
                   "gpt": {"provider": "oa", "upstream": "gpt-5"}}})


@pytest.mark.parametrize("effort, level, budget, claude", [
    ("low", "LOW", 1024, 2048), ("medium", "MEDIUM", 8192, 8192),
    ("high", "HIGH", 24576, 24576)])
def test_reasoning_effort_reaches_each_fake_as_its_control(gw, fake_gemini, fake_anthropic,
                                                           fake_openai, effort, level, budget,
                                                           claude):
    client = gw.sdk(MASTER_KEY, timeout=15)
    ask = {"messages": HELLO, "reasoning_effort": effort}
    g3 = client.chat.completions.create(model="g3", **ask)
    assert fake_gemini.last().json["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": level, "includeThoughts": True}
    assert g3.choices[0].message.reasoning_content == fake_gemini.thought_text
    assert g3.usage.completion_tokens_details.reasoning_tokens == 6
    client.chat.completions.create(model="g25", **ask)
    assert fake_gemini.last().json["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": budget, "includeThoughts": True}
    answer = client.chat.completions.create(model="sonnet", max_tokens=1000, **ask)
    sent = fake_anthropic.last().json
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": claude}
    assert sent["max_tokens"] == claude + 1000 > claude
    assert answer.choices[0].message.reasoning_content == fake_anthropic.thought_text
    assert answer.choices[0].message.content == "echo: Say hello"
    assert answer.usage.completion_tokens_details.reasoning_tokens == 4
    client.chat.completions.create(model="gpt", **ask)
    assert fake_openai.last().json["reasoning_effort"] == effort
    assert "thinking" not in fake_openai.last().json


def test_no_effort_no_control_and_no_reasoning_content(gw, fake_gemini, fake_anthropic):
    client = gw.sdk(MASTER_KEY, timeout=15)
    for model, fake in (("g3", fake_gemini), ("sonnet", fake_anthropic)):
        answer = client.chat.completions.create(model=model, messages=HELLO, temperature=0.2)
        assert "reasoning_content" not in answer.choices[0].message.model_extra
        sent = fake.last().json
        assert "thinkingConfig" not in (sent.get("generationConfig") or {})
        assert "thinking" not in sent
    assert fake_anthropic.last().json["temperature"] == 0.2    # thinking off: sampling kept


def test_thinking_streams_as_reasoning_content_deltas(gw, fake_gemini, fake_anthropic):
    client = gw.sdk(MASTER_KEY, timeout=15)
    for model, fake in (("g3", fake_gemini), ("sonnet", fake_anthropic)):
        chunks = list(client.chat.completions.create(
            model=model, messages=HELLO, reasoning_effort="medium", stream=True,
            stream_options={"include_usage": True}))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        thought = "".join(d.model_extra.get("reasoning_content") or "" for d in deltas)
        text = "".join(d.content or "" for d in deltas)
        assert thought == fake.thought_text and text == "echo: Say hello", model
        first = next(i for i, d in enumerate(deltas) if d.model_extra.get("reasoning_content"))
        assert first < next(i for i, d in enumerate(deltas) if d.content)
        assert chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0


def test_the_gemini_fake_refuses_both_controls_and_so_does_the_gateway(gw, fake_gemini):
    both = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {
        "thinkingConfig": {"thinkingLevel": "LOW", "thinkingBudget": 1024}}}
    answer = httpx.post(f"{fake_gemini.base_url}/v1beta/models/gemini-3-pro:generateContent",
                        json=both, headers={"x-goog-api-key": fake_gemini.api_key})
    assert answer.status_code == 400
    assert "one of thinking budget and thinking level" in answer.json()["error"]["message"]
    client = gw.sdk(MASTER_KEY, timeout=15)
    before = len(fake_gemini.requests)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="g3", messages=HELLO, extra_body={"google": {
            "thinking_config": {"thinking_level": "low", "thinking_budget": 1024}}})
    assert err.value.body["param"] == "google.thinking_config"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="g3", messages=HELLO, reasoning_effort="low",
                                       extra_body={"extra_body": {"google": {
                                           "thinking_config": {"include_thoughts": True}}}})
    assert err.value.body["param"] == "reasoning_effort"
    assert len(fake_gemini.requests) == before                 # refused before the upstream
    shown = client.chat.completions.create(model="g3", messages=HELLO, extra_body={
        "extra_body": {"google": {"thinking_config": {"thinking_level": "high",
                                                       "include_thoughts": True}}}})
    assert shown.choices[0].message.reasoning_content == fake_gemini.thought_text
    assert fake_gemini.last().json["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "HIGH", "includeThoughts": True}


def test_anthropic_thinking_goes_back_in_front_of_its_tool_call(gw, fake_anthropic):
    fake_anthropic.reply_tool_call = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    client = gw.sdk(MASTER_KEY, timeout=15)
    ask = {"model": "sonnet", "tools": [WEATHER], "reasoning_effort": "low"}
    first = client.chat.completions.create(messages=HELLO, **ask)
    call = first.choices[0].message.tool_calls[0]
    fake_anthropic.reply_tool_call = None
    turn = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    second = client.chat.completions.create(messages=turn, **ask)
    assert second.choices[0].finish_reason == "stop"
    sent = fake_anthropic.last().json
    assert sent["thinking"]["type"] == "enabled"
    assistant = sent["messages"][1]["content"]
    assert [b["type"] for b in assistant] == ["thinking", "tool_use"]
    assert assistant[0]["signature"] in fake_anthropic.signatures
    # without reasoning asked, the kept thinking stays home
    client.chat.completions.create(messages=turn, model="sonnet", tools=[WEATHER])
    sent = fake_anthropic.last().json
    assert "thinking" not in sent and [b["type"] for b in sent["messages"][1]["content"]] == [
        "tool_use"]
    # history the gateway never saw: Anthropic would refuse thinking there, so none is asked
    turn[1]["tool_calls"][0]["id"] = turn[2]["tool_call_id"] = "toolu_elsewhere"
    client.chat.completions.create(messages=turn, **ask)
    assert "thinking" not in fake_anthropic.last().json


def test_a_thinking_request_never_carries_sampling_or_a_forced_tool():
    model = spec("anthropic", "claude-sonnet-4-5")
    body = {"messages": HELLO, "reasoning_effort": "low", "temperature": 0.3, "top_p": 0.5}
    out = to_anthropic(model, body, False, Signatures())
    assert out["thinking"]["budget_tokens"] == 2048
    assert "temperature" not in out and "top_p" not in out
    forced = to_anthropic(model, {**body, "tools": [WEATHER], "tool_choice": "required"}, False)
    assert "thinking" not in forced and forced["temperature"] == 0.3
    late = to_anthropic(spec("anthropic", "claude-opus-4-8"), {"messages": HELLO,
                                                               "temperature": 0.3}, False)
    assert "temperature" not in late                     # a model with no sampling at all
    assert json.dumps(out)
