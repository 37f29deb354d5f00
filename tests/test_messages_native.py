"""The Messages dialect on an Anthropic upstream: passed through natively (the client's
blocks, cache_control, thinking and beta flags reach Anthropic as sent), with the gateway's
rules on top (key, credits, usage, the alias as the model)."""
from __future__ import annotations

import json

import anthropic
import pytest

from tests.conftest import with_claude
from tests.support import httpx  # the httpx the SDKs are built on


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic):
    models = with_claude(fake_openai, fake_anthropic)
    return make_gateway(models, rate_limit={"rpm": 100})


def client(gw, ip: str) -> anthropic.Anthropic:
    """The anthropic SDK as a user runs it, from the address ``ip`` (keys are bound to it)."""
    transport = httpx.HTTPTransport(local_address=ip)
    return anthropic.Anthropic(
        base_url=gw.url, api_key=gw.key_for(ip), max_retries=0,
        http_client=anthropic.DefaultHttpxClient(transport=transport),
        default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})


MESSAGES = [{"role": "user", "content": [
    {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}}]}]


def test_the_request_reaches_anthropic_as_sent(gw, fake_anthropic):
    c = client(gw, "127.0.0.71")
    message = c.messages.create(model="sonnet", max_tokens=2048, messages=MESSAGES,
                                system=[{"type": "text", "text": "Be brief.",
                                         "cache_control": {"type": "ephemeral"}}],
                                thinking={"type": "enabled", "budget_tokens": 1024})
    assert message.model == "sonnet" and message.content[0].type == "thinking"
    assert message.content[1].text
    sent = fake_anthropic.last()
    assert sent.json["model"] == "claude-sonnet-4-5"                    # the upstream id
    assert sent.json["messages"] == MESSAGES                            # blocks untouched
    assert sent.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent.json["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent.headers["x-api-key"] == fake_anthropic.api_key          # ours, not the client's
    me = json.loads(gw.get("/v1/keys/me", ip="127.0.0.71")[2])["usage"]
    assert me["requests"] == 1
    used = message.usage                 # the breakpoints wrote the prompt to the cache
    assert used.cache_creation_input_tokens > 0
    assert me["prompt_tokens"] == (used.input_tokens + used.cache_creation_input_tokens
                                   + used.cache_read_input_tokens)
    assert me["cache_write_tokens"] == used.cache_creation_input_tokens
    assert me["completion_tokens"] == message.usage.output_tokens


def test_a_stream_is_relayed_event_by_event_and_metered(gw, fake_anthropic):
    fake_anthropic.reply_text = "one two three four"
    c = client(gw, "127.0.0.72")
    with c.messages.stream(model="sonnet", max_tokens=300, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four" and final.model == "sonnet"
    assert final.stop_reason == "end_turn"
    assert fake_anthropic.last().json["stream"] is True
    me = json.loads(gw.get("/v1/keys/me", ip="127.0.0.72")[2])["usage"]
    assert (me["requests"], me["completion_tokens"]) == (1, final.usage.output_tokens)
    used = final.usage
    assert me["prompt_tokens"] == (used.input_tokens + used.cache_creation_input_tokens
                                   + used.cache_read_input_tokens) > 0


def test_count_tokens_asks_the_upstreams_counter(gw, fake_anthropic):
    c = client(gw, "127.0.0.73")
    counted = c.messages.count_tokens(model="sonnet", messages=[
        {"role": "user", "content": "one two three four five"}])
    sent = fake_anthropic.last()
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.json["model"] == "claude-sonnet-4-5"
    assert counted.input_tokens == 5                 # the fake counts words: its own answer


def test_upstream_errors_come_back_in_anthropics_envelope(gw, fake_anthropic):
    fake_anthropic.overloaded_next()
    c = client(gw, "127.0.0.74")
    with pytest.raises(anthropic.APIStatusError) as exc:
        c.messages.create(model="sonnet", max_tokens=50, messages=MESSAGES)
    assert exc.value.status_code == 529
    assert exc.value.body["type"] == "error"
    assert exc.value.body["error"]["type"] == "overloaded_error"


def test_the_models_list_in_anthropics_shape(gw):
    key = gw.key_for("127.0.0.75")
    status, _, body = gw.get("/v1/models?limit=2", ip="127.0.0.75",
                             headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    page = json.loads(body)
    assert status == 200 and len(page["data"]) == 2 and page["has_more"] is True
    assert page["data"][0]["type"] == "model" and page["first_id"] == page["data"][0]["id"]
    listed = anthropic.types.ModelInfo.model_validate(page["data"][0])
    assert listed.id == page["data"][0]["id"]
    status, _, body = gw.get("/v1/models", key=key, ip="127.0.0.75")      # OpenAI's shape
    assert json.loads(body)["object"] == "list"
