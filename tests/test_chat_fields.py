"""Every OpenAI chat field, per kind (issue 15, item 6): the table of docs/api.md is
``chat_fields.FIELDS``, and the translators do what it says: a field marked 400 is refused
naming it, one marked ignored changes nothing sent, any other changes what is sent.  Gemini's
safety settings, JSON schema, seed, stop, logprobs and candidate count through the fake."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import orjson
import pytest

from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.errors import InvalidRequest
from apiarium.providers.anthropic_request import to_anthropic
from apiarium.providers.chat_fields import FIELDS, IGNORED, KINDS
from apiarium.providers.gemini_request import to_gemini
from apiarium.providers.openai import OpenAIProvider
from tests.support import MASTER_KEY

API_DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WITH_TOOLS = {**BASE, "tools": [WEATHER]}
SAFETY = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]

# a value for each field that sets it, and the body it goes in
SAMPLES: dict[str, tuple[dict, object]] = {
    "max_tokens": (BASE, 77), "max_completion_tokens": (BASE, 78), "temperature": (BASE, 0.5),
    "top_p": (BASE, 0.9), "top_k": (BASE, 5), "stop": (BASE, ["END"]), "n": (BASE, 2),
    "seed": (BASE, 7), "frequency_penalty": (BASE, 0.5), "presence_penalty": (BASE, 0.5),
    "logit_bias": (BASE, {"50256": -100}), "logprobs": (BASE, True), "top_logprobs": (BASE, 3),
    "response_format": (BASE, {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}),
    "tools": (BASE, [WEATHER]), "tool_choice": (WITH_TOOLS, "required"),
    "parallel_tool_calls": (WITH_TOOLS, False), "reasoning_effort": (BASE, "low"),
    "user": (BASE, "u-1"), "safety_identifier": (BASE, "s-1"), "prompt_cache_key": (BASE, "k"),
    "metadata": (BASE, {"a": "b"}), "store": (BASE, True), "service_tier": (BASE, "auto"),
    "verbosity": (BASE, "low"), "modalities": (BASE, ["text", "audio"]),
    "audio": (BASE, {"voice": "alloy", "format": "wav"}),
    "prediction": (BASE, {"type": "content", "content": "x"}),
    "web_search_options": (BASE, {}), "functions": (BASE, [{"name": "f"}]),
    "function_call": (BASE, "auto"),
    "extra_body.google.thinking_config": (BASE, {"thinking_level": "low"}),
    "extra_body.google.safety_settings": (BASE, SAFETY),
}
STRUCTURAL = {"model", "messages", "stream", "stream_options"}   # the request's frame


def spec(kind: str, upstream: str) -> ModelSpec:
    return ModelSpec(alias="m", provider=ProviderSpec(name="p", kind=kind, base_url="",
                                                      api_key="k"), upstream=upstream)


TRANSLATE = {
    "anthropic": lambda body: to_anthropic(spec("anthropic", "claude-sonnet-4-5"), body, False),
    "gemini": lambda body: to_gemini(body, spec("gemini", "gemini-3-flash-preview")),
}


def with_field(base: dict, field: str, value: object) -> dict:
    body = copy.deepcopy(base)
    if field.startswith("extra_body.google."):
        body["extra_body"] = {"google": {field.rpartition(".")[2]: value}}
    else:
        body[field] = value
    return body


def docs_table() -> dict[str, dict[str, str]]:
    start = API_DOC.index("| field | openai | anthropic | gemini | rag |")
    rows = {}
    for line in API_DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = dict(zip(KINDS, cells[1:], strict=True))
    return rows


def test_the_docs_table_is_the_codes_table():
    assert docs_table() == {f: dict(row) for f, row in FIELDS.items()}


def test_every_field_has_a_sample_and_every_sample_a_field():
    assert set(SAMPLES) == set(FIELDS) - STRUCTURAL


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
@pytest.mark.parametrize("field", sorted(SAMPLES))
def test_the_translators_do_what_the_table_says(kind, field):
    base, value = SAMPLES[field]
    what = FIELDS[field][kind]
    body = with_field(base, field, value)
    if what.startswith("400"):
        with pytest.raises(InvalidRequest) as err:
            TRANSLATE[kind](body)
        assert err.value.param == field
        return
    before, after = TRANSLATE[kind](copy.deepcopy(base)), TRANSLATE[kind](body)
    if what == IGNORED:
        assert after == before, (field, kind)
    else:
        assert after != before, (field, kind)


def test_an_openai_upstream_gets_every_field_as_sent():
    provider = OpenAIProvider.__new__(OpenAIProvider)
    model = spec("openai", "gpt-5")
    for field, (base, value) in SAMPLES.items():
        body = with_field(base, field, value)
        assert orjson.loads(provider._payload(model, body, None)) == {**body, "model": "gpt-5"}
    quiet = ModelSpec(alias="m", provider=model.provider, upstream="gpt-5", thinking="none")
    assert "reasoning_effort" not in orjson.loads(
        provider._payload(quiet, {**BASE, "reasoning_effort": "low"}, b"{}"))


def test_a_rag_upstream_takes_only_the_conversation():
    taken = {f for f, row in FIELDS.items() if row["rag"] != IGNORED}
    assert taken == STRUCTURAL


@pytest.mark.parametrize("body, kind, param", [
    ({**BASE, "response_format": {"type": "json_object"}}, "anthropic", "response_format"),
    ({**BASE, "response_format": {"type": "yaml"}}, "anthropic", "response_format.type"),
    ({**BASE, "response_format": {"type": "yaml"}}, "gemini", "response_format"),
    ({**BASE, "stop": [1, 2]}, "gemini", "stop"),
    ({**BASE, "extra_body": {"google": {"safety_settings": [{"category": "X"}]}}}, "gemini",
     "extra_body.google.safety_settings"),
    ({**BASE, "modalities": ["audio"]}, "gemini", "modalities"),
])
def test_what_cannot_be_mapped_is_a_400_naming_the_field(body, kind, param):
    with pytest.raises(InvalidRequest) as err:
        TRANSLATE[kind](body)
    assert err.value.param == param


def test_text_only_modalities_and_unset_fields_are_fine():
    for kind in TRANSLATE:
        TRANSLATE[kind]({**BASE, "modalities": ["text"], "logit_bias": {}, "logprobs": False,
                         "audio": None, "top_logprobs": 0})


# ---------------------------------------------------------------------- through the fake
@pytest.fixture
def gw(make_gateway, fake_gemini):
    return make_gateway({
        "providers": {"google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                                 "api_key": fake_gemini.api_key, "breaker_failures": 0}},
        "models": {"g25": {"provider": "google", "upstream": "gemini-2.5-flash"}}},
        limits={"max_chat_choices": 2})


def test_gemini_fields_reach_the_fake_and_come_back(gw, fake_gemini):
    fake_gemini.reply_text = "Sunny and mild"
    client = gw.sdk(MASTER_KEY, timeout=15)
    answer = client.chat.completions.create(
        model="g25", messages=BASE["messages"], seed=7, stop=["END"], n=2, logprobs=True,
        top_logprobs=2, response_format=SAMPLES["response_format"][1],
        extra_body={"extra_body": {"google": {"safety_settings": SAFETY}}})
    sent = fake_gemini.last().json                      # and google-genai's types took it
    assert sent["safetySettings"] == SAFETY
    assert sent["generationConfig"] == {
        "seed": 7, "candidateCount": 2, "stopSequences": ["END"], "responseLogprobs": True,
        "logprobs": 2, "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"}}
    lp = answer.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == "Sunny and mild"
    assert [t.logprob for t in lp] == [-0.25] * 3 and len(lp[0].top_logprobs) == 2
    assert lp[1].bytes == list(b"and ")
    chunks = list(client.chat.completions.create(model="g25", messages=BASE["messages"],
                                                 logprobs=True, stream=True))
    streamed = [t.token for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert "".join(streamed) == "Sunny and mild"


def test_the_fake_refuses_an_unknown_gemini_field(fake_gemini):
    from tests.support import httpx
    answer = httpx.post(f"{fake_gemini.base_url}/v1beta/models/gemini-2.5-flash:generateContent",
                        json={"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                              "generationConfig": {"temprature": 0.3}},
                        headers={"x-goog-api-key": fake_gemini.api_key})
    assert answer.status_code == 400
    assert re.search(r'Unknown name "temprature" at \'generation_?[cC]onfig\'',
                     answer.json()["error"]["message"]), answer.text
