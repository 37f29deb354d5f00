"""Usage normalised (issue 15, item 3): one record (``tokens.TokenUsage``: uncached input,
cache read, cache write, output, reasoning) from each vendor's arithmetic, shown in the chat
usage fields, in /v1/keys/me, and priced per model (``credits: {input, cached_input,
cache_write, output}`` per 1k tokens); ``cache: auto`` Anthropic breakpoints; OpenAI's
``prompt_cache_key`` passed through."""
from __future__ import annotations

import json

import pytest

from apiarium.catalog import Credits, ModelSpec, ProviderSpec
from apiarium.services.chat import anthropic_tally, tally_of
from apiarium.tokens import TokenUsage
from apiarium.usage import Tally, price
from tests.support import MASTER_KEY

# one request, as each vendor reports it: 100 input tokens of which 60 read from the cache
# and 10 written to it (Anthropic only), 30 output tokens of which 12 thinking
SAME = [
    ("openai", {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
                "completion_tokens_details": {"reasoning_tokens": 12}}),
    ("anthropic", {"input_tokens": 30, "cache_read_input_tokens": 60,
                   "cache_creation_input_tokens": 10, "output_tokens": 30,
                   "output_tokens_details": {"thinking_tokens": 12}}),
]
EXPECTED = TokenUsage(input=30, cache_read=60, cache_write=10, output=30, reasoning=12)


@pytest.mark.parametrize("vendor, usage", SAME, ids=[v for v, _ in SAME])
def test_each_vendors_arithmetic_gives_one_record(vendor, usage):
    read = TokenUsage.from_openai if vendor == "openai" else TokenUsage.from_anthropic
    assert read(usage) == EXPECTED
    assert EXPECTED.prompt == 100
    assert EXPECTED.chat() == SAME[0][1]               # the OpenAI fields, exactly


@pytest.mark.parametrize("meta, expected", [
    # promptTokenCount INCLUDES cachedContentTokenCount; thoughts are reported apart
    ({"promptTokenCount": 90, "cachedContentTokenCount": 60, "toolUsePromptTokenCount": 10,
      "candidatesTokenCount": 18, "thoughtsTokenCount": 12, "totalTokenCount": 130},
     TokenUsage(input=40, cache_read=60, output=30, reasoning=12)),
    ({"promptTokenCount": 5}, TokenUsage(input=5)),
    ({}, TokenUsage()),
    ({"promptTokenCount": 5, "cachedContentTokenCount": 9}, TokenUsage(cache_read=5)),
])
def test_gemini_arithmetic(meta, expected):
    assert TokenUsage.from_gemini(meta) == expected


@pytest.mark.parametrize("usage, expected", [
    # OpenAI's prompt_tokens INCLUDES cached_tokens: never a negative uncached count
    ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}},
     TokenUsage(cache_read=10)),
    ({"prompt_tokens": 10, "completion_tokens": 3,
      "completion_tokens_details": {"reasoning_tokens": 7}},
     TokenUsage(input=10, output=3, reasoning=3)),
    ({"prompt_tokens": -4, "completion_tokens": "lots", "prompt_tokens_details": None},
     TokenUsage()),
    (None, TokenUsage()),
    # what an upstream may write for a count: a bool, a float (kept whole), an infinity or a
    # number past any real count, a string, a list: never a crash, never a bogus count
    ({"prompt_tokens": True, "completion_tokens": 7.9,
      "prompt_tokens_details": {"cached_tokens": False}}, TokenUsage(output=7)),
    ({"prompt_tokens": float("inf"), "completion_tokens": 1e30,
      "completion_tokens_details": {"reasoning_tokens": float("nan")}}, TokenUsage()),
    ({"prompt_tokens": "12", "completion_tokens": [3],
      "prompt_tokens_details": {"cached_tokens": 4.0}}, TokenUsage()),
    ({"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 4.0,
                                                    "cache_write_tokens": 20}},
     TokenUsage(input=0, cache_read=4, cache_write=8)),
])
def test_odd_counts_are_clamped(usage, expected):
    assert TokenUsage.from_openai(usage) == expected


def test_the_services_tally_from_either_shape():
    t = tally_of({"usage": SAME[0][1]})
    assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.cache_write_tokens,
            t.reasoning_tokens) == (100, 30, 60, 10, 12)
    streamed = anthropic_tally({"type": "message_start", "message": {"usage": {
        "input_tokens": 30, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 10,
        "output_tokens": 1}}}, None)
    streamed = anthropic_tally({"type": "message_delta", "usage": {
        "output_tokens": 30, "output_tokens_details": {"thinking_tokens": 12}}}, streamed)
    assert streamed == Tally(requests=1, prompt_tokens=100, completion_tokens=30,
                             cached_tokens=60, cache_write_tokens=10, reasoning_tokens=12)


def model(**prices: float) -> ModelSpec:
    return ModelSpec(alias="m", provider=ProviderSpec(name="p", kind="openai", base_url="",
                                                      api_key="k"),
                     upstream="m", credits=Credits.for_model("m", "chat", prices))


def test_credits_are_priced_per_kind_of_token():
    tally = tally_of({"usage": SAME[0][1]})
    priced = model(input=1.0, cached_input=0.1, cache_write=1.25, output=4.0)
    assert price(priced, tally) == pytest.approx((30 * 1 + 60 * 0.1 + 10 * 1.25 + 30 * 4) / 1000)
    flat = model(per_1k_tokens=2.0)              # the older key: every token alike
    assert price(flat, tally) == pytest.approx(130 * 2 / 1000)
    assert price(model(), tally) == pytest.approx(130 / 1000)      # the chat default, 1 per 1k
    half = model(per_1k_tokens=2.0, cached_input=0.5)
    assert price(half, tally) == pytest.approx((40 * 2 + 60 * 0.5 + 30 * 2) / 1000)
    pro = Credits.for_model("x-pro", "chat", {"output": 3.0})
    assert (pro.input_rate, pro.cached_input_rate, pro.output_rate) == (2.0, 2.0, 3.0)


# ---------------------------------------------------------------------- through the fakes
PRICES = {"input": 1.0, "cached_input": 0.25, "cache_write": 2.0, "output": 4.0}


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic, fake_gemini):
    return make_gateway({
        "providers": {
            "oa": {"kind": "openai", "base_url": fake_openai.base_url,
                   "api_key": fake_openai.api_key},
            "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                       "api_key": fake_anthropic.api_key},
            "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                       "api_key": fake_gemini.api_key}},
        "models": {"gpt": {"provider": "oa", "upstream": "gpt-5", "credits": PRICES},
                   "sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5",
                              "cache": "auto", "credits": PRICES,
                              "allow": {"fields": ["cache_control.ttl"]}},   # the 1h TTL
                   "plain": {"provider": "claude", "upstream": "claude-sonnet-4-5"},
                   "g25": {"provider": "google", "upstream": "gemini-2.5-flash",
                           "credits": PRICES}}},
        rate_limit={"rpm": 100, "daily_credits": 1000})


def ask(client, model: str, stream: bool, messages: list[dict]) -> dict:
    """One chat request; its usage as the client got it (a dict of the chat fields)."""
    if not stream:
        return client.chat.completions.create(model=model, messages=messages).usage.model_dump()
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    return chunks[-1].usage.model_dump()


def me(gw, ip: str) -> dict:
    return json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]


def cost(u: dict) -> float:
    read = u["prompt_tokens_details"]["cached_tokens"]
    write = u["prompt_tokens_details"].get("cache_write_tokens") or 0
    return (PRICES["input"] * (u["prompt_tokens"] - read - write) + PRICES["cached_input"] * read
            + PRICES["cache_write"] * write + PRICES["output"] * u["completion_tokens"]) / 1000


MESSAGES = [{"role": "system", "content": "You answer questions about the weather in Oslo."},
            {"role": "user", "content": "Is it raining in Oslo today or not?"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_cached_tokens_reach_the_client_keys_me_and_the_credits(gw, fake_openai, fake_gemini,
                                                                 stream):
    ip = "127.0.0.91" if stream else "127.0.0.92"
    client = gw.sdk(gw.key_for(ip), ip=ip, timeout=15)
    fake_openai.cached_tokens = fake_gemini.cached_tokens = 7
    seen = []
    for alias in ("gpt", "sonnet", "sonnet", "g25"):     # sonnet twice: written, then read
        seen.append(ask(client, alias, stream, MESSAGES))
    oa, written, read, gm = seen
    prompt = 16                                          # the fakes count words
    assert oa["prompt_tokens"] == prompt and oa["prompt_tokens_details"]["cached_tokens"] == 7
    assert gm["prompt_tokens"] == prompt and gm["prompt_tokens_details"]["cached_tokens"] == 7
    # cache: auto: the system block and the last block are breakpoints; the first request
    # writes the prompt, the second reads it (Anthropic's input_tokens excludes both)
    assert written["prompt_tokens"] == prompt
    assert written["prompt_tokens_details"]["cached_tokens"] == 0
    assert written["prompt_tokens_details"]["cache_write_tokens"] == prompt
    assert read["prompt_tokens"] == prompt
    assert read["prompt_tokens_details"]["cached_tokens"] == prompt
    assert not read["prompt_tokens_details"].get("cache_write_tokens")
    total = me(gw, ip)
    assert total["requests"] == 4
    assert total["prompt_tokens"] == 4 * prompt
    assert total["cached_tokens"] == 7 + 0 + prompt + 7
    assert total["cache_write_tokens"] == prompt
    assert total["completion_tokens"] == sum(u["completion_tokens"] for u in seen)
    assert total["credits"] == pytest.approx(sum(map(cost, seen)), abs=1e-4)
    assert cost(read) < cost(written)                    # a cache hit is cheaper


def test_cache_auto_adds_breakpoints_only_when_the_client_sent_none(gw, fake_anthropic):
    client = gw.sdk(MASTER_KEY, timeout=15)
    client.chat.completions.create(model="sonnet", messages=MESSAGES)
    sent = fake_anthropic.last().json
    assert sent["cache_control"] == {"type": "ephemeral"}
    assert sent["system"] == [{"type": "text", "text": MESSAGES[0]["content"],
                               "cache_control": {"type": "ephemeral"}}]
    client.chat.completions.create(model="plain", messages=MESSAGES)
    assert "cache_control" not in json.dumps(fake_anthropic.last().json)
    # a native Messages request that placed its own keeps them as they are
    mine = {"model": "sonnet", "max_tokens": 50, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    status, _, body = gw.post("/v1/messages", mine, key=MASTER_KEY,
                              headers={"anthropic-version": "2023-06-01"})
    assert status == 200, body
    sent = fake_anthropic.last().json
    assert "cache_control" not in sent and sent["messages"] == mine["messages"]
    bare = {**mine, "messages": [{"role": "user", "content": "hi"}], "system": "Be brief."}
    assert gw.post("/v1/messages", bare, key=MASTER_KEY,
                   headers={"anthropic-version": "2023-06-01"})[0] == 200
    sent = fake_anthropic.last().json
    assert sent["cache_control"] == {"type": "ephemeral"}
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_prompt_cache_key_is_passed_through_to_openai(gw, fake_openai):
    client = gw.sdk(MASTER_KEY, timeout=15)
    client.chat.completions.create(model="gpt", messages=MESSAGES, prompt_cache_key="user-42")
    assert fake_openai.last().json["prompt_cache_key"] == "user-42"


def test_the_other_dialects_show_the_cached_tokens(gw, fake_gemini):
    fake_gemini.cached_tokens = 7
    status, _, body = gw.post("/v1/responses", {"model": "g25", "input": "Is it raining?"},
                              key=MASTER_KEY)
    assert status == 200, body
    usage = json.loads(body)["usage"]
    assert usage["input_tokens"] == 3 and usage["input_tokens_details"]["cached_tokens"] == 3
    status, _, body = gw.post("/v1/messages", {
        "model": "g25", "max_tokens": 50, "messages": [
            {"role": "user", "content": "Is it raining in Oslo today or not?"}]},
        key=MASTER_KEY, headers={"anthropic-version": "2023-06-01"})
    assert status == 200, body
    usage = json.loads(body)["usage"]
    # Anthropic's input_tokens EXCLUDES what was read from the cache
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (1, 7)


def test_the_messages_dialect_reads_cache_writes_from_the_chat_fields():
    from apiarium.dialects.anthropic_answer import anthropic_usage
    assert anthropic_usage(SAME[0][1]) == {"input_tokens": 30, "output_tokens": 30,
                                           "cache_creation_input_tokens": 10,
                                           "cache_read_input_tokens": 60}
