"""The demo provider (apiarium/providers/demo.py) on its own: its answers (chat, tool calls,
structured output, streams, legacy completions, embeddings, PNG images) checked against the
SDKs' own types, deterministic and marked ``[demo]``, usage from the text lengths; the
``--demo`` catalog transformation (``with_demo``) and the start-up notes; the ``demo`` kind in
models.yaml.  Then an in-process gateway whose models are all demo, through every dialect
(the openai SDK's chat and Responses, the anthropic SDK's Messages, legacy completions,
images through chat).  tests/test_demo.py runs ``apiarium serve --demo`` as a process."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import textwrap
import time
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from openai.types import CreateEmbeddingResponse, ImagesResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from PIL import Image
from pydantic import TypeAdapter

from apiarium import sse
from apiarium.catalog import Catalog, ModelSpec, ProviderSpec
from apiarium.config import ConfigError, load_config
from apiarium.embedding import embedding_request
from apiarium.errors import InvalidRequest
from apiarium.generation import ImageRequest
from apiarium.providers import KINDS
from apiarium.providers.demo import (
    FILLER,
    DemoProvider,
    example,
    image_size,
    keyless_note,
    reply,
    with_demo,
)
from tests.support import httpx

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "kelvin"]},
        "days": {"type": "integer", "minimum": 2, "maximum": 7},
        "alerts": {"type": "boolean"}, "note": {"type": "string"}},
        "required": ["city", "unit", "days", "alerts"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Lyon?"}]


def strict(model_type, value):
    """``value`` (plain JSON data) validated as the SDK's ``model_type`` (the SDKs build
    their answers without validation, so this is where a wrong field would show)."""
    return TypeAdapter(model_type).validate_python(value)


def spec(delay_ms: float = 0.0) -> ProviderSpec:
    return ProviderSpec(name="play", kind="demo", base_url="", api_key="", auth="none",
                        frame_delay_ms=delay_ms)


def model(alias: str = "gpt-5", upstream: str = "", type_: str = "chat",
          provider: ProviderSpec | None = None) -> ModelSpec:
    return ModelSpec(alias=alias, provider=provider or spec(), upstream=upstream or alias,
                     type=type_)


@pytest.fixture
def demo():
    """``demo(delay_ms)``: a DemoProvider.  It never sends anything, so it has no session."""
    def build(delay_ms: float = 0.0) -> DemoProvider:
        return DemoProvider(spec(delay_ms), None)
    return build


def frames(provider: DemoProvider, body: dict, m: ModelSpec | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [f async for f in provider.chat_stream(m or model(), body, None)]
    return asyncio.run(collect())


def chunks_of(events: list[bytes]) -> list[dict]:
    """The JSON of each frame before ``[DONE]`` (which must end the stream)."""
    assert events[-1] == sse.DONE
    out = []
    for event in events[:-1]:
        assert event.endswith(b"\n\n")
        _, data = sse.parse(event[:-2])
        out.append(json.loads(data))
    return out


# ---------------------------------------------------------------------------- JSON schemas

def test_example_fills_the_required_properties_of_simple_schemas():
    assert example(WEATHER["function"]["parameters"]) == {
        "city": FILLER, "unit": "celsius", "days": 2, "alerts": False}
    assert example({"type": "object", "properties": {
        "where": {"type": "object", "properties": {"lat": {"type": "number"}},
                  "required": ["lat"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "mode": {"const": "fast"}, "level": {"type": ["null", "integer"], "maximum": 0},
        "code": {"type": "string", "minLength": 18}, "id": {"type": "string", "maxLength": 2},
        "pick": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        "size": {"type": "number", "exclusiveMinimum": 10},
        "given": {"type": "string", "default": "as-is"}},
        "required": ["where", "tags", "mode", "level", "code", "id", "pick", "size",
                     "given"]}) == {
        "where": {"lat": 1}, "tags": [FILLER, FILLER], "mode": "fast", "level": 0,
        "code": "apiarium-demo apia", "id": "ap", "pick": False, "size": 11, "given": "as-is"}
    assert example({"type": "object"}) == {}
    assert example(None) == FILLER


# ---------------------------------------------------------------------------- chat

def test_a_chat_answer_quotes_the_user_and_says_it_is_the_demo(demo):
    answer = asyncio.run(demo().chat(model(), {"messages": ASK}, None))
    strict(ChatCompletion, answer)
    message = answer["choices"][0]["message"]
    assert message["content"] == ("[demo] This answer comes from Apiarium's demo provider, "
                                  "standing in for `gpt-5`: no model was asked. You wrote: "
                                  "“What is the weather in Lyon?”")
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["model"] == "gpt-5"
    # usage: one token per 4 characters of the prompt's text and of the answer, rounded up
    assert answer["usage"] == {"prompt_tokens": math.ceil(len(ASK[0]["content"]) / 4),
                               "completion_tokens": math.ceil(len(message["content"]) / 4),
                               "total_tokens": answer["usage"]["prompt_tokens"]
                               + answer["usage"]["completion_tokens"]}


def test_the_same_request_gets_the_same_answer():
    body = {"messages": ASK, "tools": [WEATHER]}
    assert reply("gpt-5", body) == reply("gpt-5", json.loads(json.dumps(body)))
    other = reply("gpt-5", {"messages": [{"role": "user", "content": "Elsewhere?"}],
                            "tools": [WEATHER]})
    assert other.call[0] != reply("gpt-5", body).call[0]      # the call id follows the request


def test_the_last_paragraph_of_the_last_user_turn_is_quoted_cut_to_one_line():
    long = "word " * 100
    r = reply("m", {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "<reminder>ignore</reminder>"},
                                     {"type": "text", "text": "Say\n  hello."}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": long}]})
    said = r.content.split("You wrote: “", 1)[1]
    assert said.endswith("…”") and len(said) == 161
    r = reply("m", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "<reminder>ignore</reminder>"},
        {"type": "text", "text": "Say\n  hello."}]}]})
    assert r.content.endswith("You wrote: “Say hello.”")
    r = reply("m", {"messages": [{"role": "user", "content": "<reminder>\nignore\n</reminder>"
                                                             "\n\n \nSay hello.\n\n"}]})
    assert r.content.endswith("You wrote: “Say hello.”")
    r = reply("m", {"messages": [{"role": "system", "content": "Only a system turn."}]})
    assert r.content.endswith("There was no user text to quote.")


def test_offered_tools_get_one_call_of_the_first_then_text_quoting_the_result(demo):
    p = demo()
    body = {"messages": ASK, "tools": [WEATHER, CLOCK]}
    answer = asyncio.run(p.chat(model(), body, None))
    strict(ChatCompletion, answer)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])
    assert args == {"city": FILLER, "unit": "celsius", "days": 2, "alerts": False}
    prompt_chars = len(ASK[0]["content"]) + len(orjson.dumps([WEATHER["function"],
                                                              CLOCK["function"]]))
    assert answer["usage"]["prompt_tokens"] == math.ceil(prompt_chars / 4)
    # the client runs the tool and sends the result back: the answer quotes it
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 °C"}]
    answer = asyncio.run(p.chat(model(), {"messages": history, "tools": [WEATHER]}, None))
    strict(ChatCompletion, answer)
    assert answer["choices"][0]["message"]["content"] == (
        "[demo] The tool `get_weather` answered: “Sunny, 21 °C”. (Apiarium's demo provider, "
        "standing in for `gpt-5`: no model was asked.)")
    # a next user turn in the same conversation is answered in text
    later = reply("gpt-5", {"messages": [*history, {"role": "assistant", "content": "Ok."},
                                         {"role": "user", "content": "Thanks"}],
                            "tools": [WEATHER]})
    assert later.call is None and later.content.endswith("You wrote: “Thanks”")


def test_agent_clients_shapes_a_trailing_system_turn_and_a_sub_agent_on_the_demos_task():
    """Claude Code sends a system message after the turns, and its Agent tool runs a
    sub-agent whose task is what the demo made up: that one is answered in text (else each
    sub-agent would call Agent again), and the tool result before the system turn is quoted."""
    system = {"role": "system", "content": "Available agent types: ..."}
    first = reply("m", {"messages": [*ASK, system], "tools": [WEATHER]})
    assert first.call is not None
    task = f"<system-reminder>\nToday is Monday.\n</system-reminder>\n\n\n\n{FILLER}"
    sub_agent = reply("m", {"messages": [{"role": "user", "content": task}, system],
                            "tools": [WEATHER]})
    assert sub_agent.call is None and sub_agent.content.endswith(f"You wrote: “{FILLER}”")
    call = {"id": first.call[0], "type": "function",
            "function": {"name": first.call[1], "arguments": first.call[2]}}
    back = reply("m", {"messages": [*ASK, {"role": "assistant", "content": None,
                                          "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": call["id"],
                                     "content": "Done."}, system], "tools": [WEATHER]})
    assert back.content.startswith("[demo] The tool `get_weather` answered: “Done.”")


def test_tool_choice_none_or_named_is_honoured():
    body = {"messages": ASK, "tools": [WEATHER, CLOCK]}
    assert reply("m", {**body, "tool_choice": "none"}).call is None
    named = reply("m", {**body, "tool_choice": {"type": "function",
                                                "function": {"name": "get_time"}}})
    assert named.call[1:] == ("get_time", "{}")
    assert reply("m", {**body, "tool_choice": "required"}).call[1] == "get_weather"


def test_response_format_gets_json_and_max_tokens_cuts_the_text():
    schema = {"type": "object", "properties": {"title": {"type": "string"}},
              "required": ["title"]}
    r = reply("m", {"messages": ASK, "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": schema}}})
    assert json.loads(r.content) == {"title": FILLER}
    r = reply("m", {"messages": ASK, "response_format": {"type": "json_object"}})
    parsed = json.loads(r.content)
    assert parsed["demo"] is True and parsed["answer"].startswith("[demo]")
    r = reply("m", {"messages": ASK, "max_completion_tokens": 3})
    assert (r.content, r.finish, r.completion_tokens) == ("[demo] This ", "length", 3)
    assert reply("m", {"messages": ASK, "max_tokens": 1000}).finish == "stop"


def test_a_stream_is_the_same_answer_a_word_a_frame_ending_with_done(demo):
    p = demo()
    whole = reply("gpt-5", {"messages": ASK})
    events = frames(p, {"messages": ASK, "stream": True})
    chunks = [strict(ChatCompletionChunk, c) for c in chunks_of(events)]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.content
    assert len(chunks) == 2 + len(whole.content.split())       # role, words, finish
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)                 # not asked for
    # include_usage: the usage chunk, with no choices, before [DONE]
    events = frames(p, {"messages": ASK, "stream_options": {"include_usage": True}})
    last = chunks_of(events)[-1]
    assert last["choices"] == [] and last["usage"] == whole.usage()
    assert len({c["id"] for c in chunks_of(events)}) == 1


def test_a_streamed_tool_call_comes_in_openai_deltas(demo):
    chunks = chunks_of(frames(demo(), {"messages": ASK, "tools": [WEATHER],
                                       "stream_options": {"include_usage": True}}))
    for c in chunks:
        strict(ChatCompletionChunk, c)
    calls = [tc for c in chunks for ch in c["choices"]
             for tc in ch["delta"].get("tool_calls") or []]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {
        "city": FILLER, "unit": "celsius", "days": 2, "alerts": False}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_frames_are_paced_by_frame_delay_ms(demo):
    words = len(reply("gpt-5", {"messages": ASK}).content.split())
    started = time.monotonic()
    frames(demo(delay_ms=10), {"messages": ASK})
    assert time.monotonic() - started >= words * 0.010     # a pause before each word


def test_legacy_completions_natively(demo):
    p = demo()
    body = {"model": "gpt-5", "prompt": "Once upon a time", "max_tokens": 50}
    answer = asyncio.run(p.completions(model(), body))
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"].startswith("[demo] ")
    assert answer["choices"][0]["text"].endswith("“Once upon a time”")

    async def stream() -> list[bytes]:
        return [f async for f in p.completions_stream(model(), {**body, "stream": True})]
    events = asyncio.run(stream())
    texts = [json.loads(sse.parse(e[:-2])[1])["choices"][0]["text"] for e in events[:-1]
             if b'"choices":[{' in e]
    assert "".join(texts) == answer["choices"][0]["text"] and events[-1] == sse.DONE


# ---------------------------------------------------------------------------- embeddings

def embed(p: DemoProvider, body: dict, m: ModelSpec | None = None) -> dict:
    m = m or model("text-embedding-3-small", type_="embedding")
    return asyncio.run(p.embed(m, embedding_request(body)))


def test_embeddings_are_deterministic_unit_vectors_of_the_dimensions_asked(demo):
    p = demo()
    answer = embed(p, {"input": ["The bee visits the flower.", "Honey is sweet."]})
    strict(CreateEmbeddingResponse, answer)
    first, second = (d["embedding"] for d in answer["data"])
    assert len(first) == len(second) == 1536                     # the model's usual size
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-9)
    assert first != second
    assert embed(p, {"input": "The bee visits the flower."})["data"][0]["embedding"] == first
    assert answer["usage"] == {"prompt_tokens": 7 + 4, "total_tokens": 11}
    # dimensions: the longer vector's start, renormalized
    short = embed(p, {"input": "The bee visits the flower.", "dimensions": 8})
    vec = short["data"][0]["embedding"]
    scale = math.sqrt(math.fsum(x * x for x in first[:8]))
    assert len(vec) == 8 and all(math.isclose(a, b / scale) for a, b in zip(vec, first[:8],
                                                                            strict=True))
    large = embed(p, {"input": "x"}, model("big", "text-embedding-3-large", "embedding"))
    assert len(large["data"][0]["embedding"]) == 3072
    # base64: little-endian float32, as the SDK decodes it
    packed = embed(p, {"input": "The bee visits the flower.", "encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert len(raw) == 4 * 1536
    # token arrays are inputs too
    assert len(embed(p, {"input": [[1, 2, 3]], "dimensions": 4})["data"][0]["embedding"]) == 4


def test_more_dimensions_than_the_demo_makes_is_a_400_naming_the_field(demo):
    with pytest.raises(InvalidRequest) as caught:
        embed(demo(), {"input": "x", "dimensions": 3073})
    assert caught.value.param == "dimensions" and "3072" in caught.value.message


# ---------------------------------------------------------------------------- images

@pytest.mark.parametrize(("size", "expected"), [
    ("1024x1024", (1024, 1024)), ("1792x1024", (1792, 1024)), ("256x256", (256, 256)),
    ("16:9", (1024, 576)), ("9:16", (576, 1024)), ("4:3", (1024, 768)), ("auto", (1024, 1024)),
])
def test_image_sizes(size, expected):
    assert image_size(size) == expected


def test_images_are_real_pngs_of_the_size_asked_deterministic_per_prompt(demo):
    p = demo()
    m = model("gpt-image-1", type_="image")
    made = asyncio.run(p.image(m, ImageRequest("A bee on a sunflower", n=2, size="16:9")))
    assert len(made) == 2 and made[0].data != made[1].data      # each its own colours
    for media in made:
        assert media.mime == "image/png" and media.revised_prompt == "[demo] A bee on a sunflower"
        with Image.open(io.BytesIO(media.data)) as img:
            assert (img.format, img.size) == ("PNG", (1024, 576))
    again = asyncio.run(p.image(m, ImageRequest("A bee on a sunflower", n=1, size="16:9")))
    assert again[0].data == made[0].data
    other = asyncio.run(p.image(m, ImageRequest("A fox", n=1, size="256x256")))
    with Image.open(io.BytesIO(other[0].data)) as img:
        assert img.size == (256, 256)
        corner = img.convert("RGB").getpixel((img.width - 1, img.height - 1))
    with Image.open(io.BytesIO(made[0].data)) as img:
        assert img.convert("RGB").getpixel((img.width - 1, img.height - 1)) != corner


def test_the_demo_cannot_make_videos_and_needs_no_configuration(demo):
    p = demo()
    p.require_configured()                           # no URL, no key: nothing to raise
    assert p.headers == {"content-type": "application/json"}     # no credential header
    assert KINDS["demo"] is DemoProvider


# ---------------------------------------------------------------------------- --demo

def catalog() -> Catalog:
    keyed = ProviderSpec("keyed", "openai", "http://127.0.0.1:9/v1", "sk-x", owned_by="openai")
    keyless = ProviderSpec("openai", "openai", "https://api.openai.com/v1", "",
                           owned_by="openai")
    google = ProviderSpec("google", "gemini", "https://generativelanguage.googleapis.com", "")
    own = ProviderSpec("play", "demo", "", "")
    specs = {p.name: p for p in (keyed, keyless, google, own)}
    models = [model("real", provider=keyed), model("gpt-5", provider=keyless),
              model("pic", "gpt-image-1", "image", keyless),
              model("vec", "text-embedding-3-small", "embedding", keyless),
              model("gemini", provider=google), model("veo", "veo-3", "video", google),
              model("toy", provider=own)]
    return Catalog(specs, {m.alias: m for m in models})


def test_with_demo_puts_a_demo_provider_in_front_of_each_model_without_a_key():
    cat, served, left = with_demo(catalog())
    assert served == ["gpt-5", "pic", "vec", "gemini"] and left == ["veo"]
    kinds = {alias: (m.provider.kind, m.provider.name) for alias, m in cat.models.items()}
    assert kinds == {"real": ("openai", "keyed"), "gpt-5": ("demo", "openai-demo"),
                     "pic": ("demo", "openai-demo"), "vec": ("demo", "openai-demo"),
                     "gemini": ("demo", "google-demo"), "veo": ("gemini", "google"),
                     "toy": ("demo", "play")}
    # one stand-in per provider; the original stays where a model still uses it
    assert sorted(cat.providers) == ["google", "google-demo", "keyed", "openai-demo", "play"]
    assert cat.models["gpt-5"].upstream == "gpt-5" and cat.models["pic"].type == "image"
    assert cat.listing()[1]["owned_by"] == "apiarium-demo"
    assert with_demo(cat)[1] == []                        # applying it again changes nothing
    assert all(p.configured for p in cat.providers.values() if p.kind == "demo")


def test_without_a_key_the_note_names_the_variables_models_yaml_reads():
    # what the loader records of `base_url: "${OPENAI_BASE_URL:-…}"`, `api_key: "${…}"`
    specs = {p.name: p for p in (
        ProviderSpec("openai", "openai", "https://api.openai.com/v1", "",
                     base_url_vars=("OPENAI_BASE_URL",), api_key_vars=("OPENAI_API_KEY",)),
        ProviderSpec("hub", "rag", "", "", base_url_vars=("HUB_URL",),
                     api_key_vars=("HUB_KEY",)),
        ProviderSpec("plain", "openai", "https://example.invalid/v1", ""))}
    note = keyless_note(Catalog(specs, {}))
    assert note == ("no provider has a key, so every model answers 503 "
                    "provider_not_configured: for real answers set OPENAI_API_KEY (openai), "
                    "HUB_URL and HUB_KEY (hub), providers.plain.api_key (plain) and restart; "
                    "for demo answers start with `scripts/serve --demo` (apiarium serve --demo)")
    keyed = {**specs, "x": ProviderSpec("x", "openai", "http://127.0.0.1:9/v1", "sk-x")}
    assert keyless_note(Catalog(keyed, {})) is None
    assert keyless_note(Catalog({"play": ProviderSpec("play", "demo", "", "")}, {})) is None


def test_the_shipped_catalog_names_every_providers_variable():
    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "config" / "apiarium.yaml", env={})
    note = keyless_note(config.catalog)
    for needed in ("OPENAI_API_KEY (openai)", "ANTHROPIC_API_KEY (anthropic)",
                   "GEMINI_API_KEY (google)", "GEMINI_HUB_URL and GEMINI_HUB_KEY (hub)",
                   "`scripts/serve --demo`"):
        assert needed in note


# ---------------------------------------------------------------------------- models.yaml

def write(tmp_path: Path, models: str) -> Path:
    (tmp_path / "models.yaml").write_text(textwrap.dedent(models))
    path = tmp_path / "apiarium.yaml"
    path.write_text(f"database: {tmp_path}/k.sqlite3\ncatalog: models.yaml\n")
    return path


def test_a_demo_provider_needs_no_url_or_key_and_takes_frame_delay_ms(tmp_path):
    config = load_config(write(tmp_path, """\
        providers:
          play: {kind: demo, frame_delay_ms: 5}
        models:
          toy: {provider: play}
          pic: {provider: play, type: image}
          vec: {provider: play, type: embedding}
          old: {provider: play, completions: native}
        """))
    assert config.catalog.providers["play"].frame_delay_ms == 5
    assert config.catalog.models["toy"].provider.kind == "demo"


def test_demo_config_problems_are_file_line_errors(tmp_path):
    path = write(tmp_path, """\
        providers:
          play: {kind: demo, frame_delay_ms: -1}
        models:
          clip: {provider: play, type: video}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = [str(p) for p in caught.value.problems]
    models = tmp_path / "models.yaml"
    assert any(p.startswith(f"{models}:2: ") and "frame_delay_ms" in p for p in problems)
    assert any(p.startswith(f"{models}:4: ") and "cannot serve video models" in p
               for p in problems)


# ---------------------------------------------------------------------------- the dialects

@pytest.fixture
def gw(make_gateway):
    return make_gateway({
        "providers": {"play": {"kind": "demo", "frame_delay_ms": 0}},
        "models": {"gpt-5": {"provider": "play"},
                   "claude-sonnet": {"provider": "play", "upstream": "claude-sonnet-4-5"},
                   "gpt-image-1": {"provider": "play", "type": "image"},
                   "text-embedding-3-small": {"provider": "play", "type": "embedding"}},
    }, rate_limit={"rpm": 100})


def test_every_dialect_answers_through_the_demo(gw):
    ip = "127.0.9.10"
    client = gw.sdk(gw.key_for(ip), ip)
    # Responses (translated to chat), whole and streamed
    response = client.responses.create(model="gpt-5", input="Hello there")
    assert response.output_text.startswith("[demo] ") and "“Hello there”" in response.output_text
    assert response.usage.input_tokens == 3 and response.usage.output_tokens > 0
    with client.responses.stream(model="gpt-5", input="Hello there") as stream:
        final = stream.get_final_response()
    assert final.output_text == response.output_text
    # Responses with a function tool: the call, then the answer quoting its output
    tools = [{"type": "function", "name": "get_weather", "parameters":
              WEATHER["function"]["parameters"], "strict": False}]
    first = client.responses.create(model="gpt-5", input="Weather?", tools=tools)
    [call] = [i for i in first.output if i.type == "function_call"]
    assert json.loads(call.arguments)["unit"] == "celsius"
    second = client.responses.create(model="gpt-5", tools=tools, input=[
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Rain"}])
    assert "“Rain”" in second.output_text
    # legacy completions
    legacy = client.completions.create(model="gpt-5", prompt="Say this is a test")
    assert legacy.choices[0].text.startswith("[demo] ")
    # an image model asked through chat answers with the image's URL
    chat = client.chat.completions.create(model="gpt-image-1", messages=[
        {"role": "user", "content": "A bee"}])
    assert "/media/" in chat.choices[0].message.content


def test_the_anthropic_sdk_gets_messages_from_the_demo(gw):
    ip = "127.0.9.11"
    claude = anthropic.Anthropic(
        base_url=gw.url, api_key=gw.key_for(ip), max_retries=0,
        http_client=anthropic.DefaultHttpxClient(
            transport=httpx.HTTPTransport(local_address=ip)))
    message = claude.messages.create(model="claude-sonnet", max_tokens=200,
                                     messages=[{"role": "user", "content": "Hello!"}])
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("[demo] ") and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2
    with claude.messages.stream(model="claude-sonnet", max_tokens=200,
                                messages=[{"role": "user", "content": "Hello!"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == message.content[0].text
    # a tool: tool_use with the schema's required input, then text quoting the result
    tool = {"name": "get_weather", "description": "Weather.",
            "input_schema": WEATHER["function"]["parameters"]}
    first = claude.messages.create(model="claude-sonnet", max_tokens=200, tools=[tool],
                                   messages=[{"role": "user", "content": "Weather?"}])
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.input["days"] == 2
    second = claude.messages.create(model="claude-sonnet", max_tokens=200, tools=[tool],
                                    messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id,
                                           "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "Windy"}]}])
    assert "“Windy”" in second.content[0].text


def test_images_and_embeddings_through_the_endpoints(gw):
    ip = "127.0.9.12"
    client = gw.sdk(gw.key_for(ip), ip)
    images = client.images.generate(model="gpt-image-1", prompt="A bee", size="1024x1536",
                                    response_format="b64_json")
    strict(ImagesResponse, images.model_dump(mode="json", exclude_unset=True))
    with Image.open(io.BytesIO(base64.b64decode(images.data[0].b64_json))) as img:
        assert img.format == "PNG" and img.size == (1024, 1536)
    vectors = client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=3)
    assert len(vectors.data[0].embedding) == 3
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="hi", dimensions=9000)
    assert caught.value.body["param"] == "dimensions"
