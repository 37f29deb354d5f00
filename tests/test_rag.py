"""The openai SDK against Apiarium in front of a fake RAG service (kind: rag): the flattened
query, answers with their sources, the emulated stream, and the configuration errors."""
from __future__ import annotations

import json

import openai
import pytest

from tests.support import MASTER_KEY, error_of

UPSTREAM = "hub-model-v1"


@pytest.fixture
def fake_rag(fake_rag):          # the shared fake, with two sources (one needing escapes)
    fake_rag.sources = [{"title": "Doc A", "url": "https://example.com/a"},
                           {"title": "Guide [v2]", "url": "https://example.com/guide v2"}]
    return fake_rag


@pytest.fixture
def gw(make_gateway, fake_rag):
    return make_gateway({
        "providers": {
            # these tests provoke error after error: no circuit breaker in the way
            "hub": {"kind": "rag", "base_url": fake_rag.base_url, "api_key": fake_rag.api_key,
                    "breaker_failures": 0},
            "hub-off": {"kind": "rag", "base_url": "", "api_key": "some-key"},
            "hub-wrong": {"kind": "rag", "base_url": fake_rag.base_url,
                          "api_key": "rag-wrong-key-987"},
        },
        "models": {"gemini-3": {"provider": "hub", "upstream": UPSTREAM},
                   "gemini-off": {"provider": "hub-off"},
                   "gemini-wrong": {"provider": "hub-wrong"}},
    })


MESSAGES = [{"role": "system", "content": "Cite your sources."},
            {"role": "user", "content": "What is a hive?"},
            {"role": "assistant", "content": "A home for bees."},
            {"role": "user", "content": [{"type": "text", "text": "And a queen?"}]}]
QUERY = "Cite your sources.\n\nWhat is a hive?\n\nAnd a queen?"
SOURCES = ("\n\nSources:\n1. [Doc A](https://example.com/a)\n"
           "2. [Guide \\[v2\\]](https://example.com/guide%20v2)")


def test_chat_answer_with_sources(gw, fake_rag):
    fake_rag.reply_text = "A queen lays the eggs. She is the mother of the colony."
    resp = gw.sdk(MASTER_KEY).chat.completions.create(model="gemini-3", messages=MESSAGES,
                                                      temperature=0.1)
    content = resp.choices[0].message.content
    assert content == fake_rag.reply_text + SOURCES
    assert resp.choices[0].finish_reason == "stop" and resp.model == "gemini-3"
    # usage is estimated at one token per 4 characters
    assert resp.usage.prompt_tokens == -(-len(QUERY) // 4)
    assert resp.usage.completion_tokens == -(-len(content) // 4)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    sent = fake_rag.last()
    assert sent.path == "/query" and sent.method == "POST"
    assert sent.json == {"query": QUERY, "model": UPSTREAM}
    assert sent.headers["authorization"] == f"Bearer {fake_rag.api_key}"


def test_no_sources_no_section(gw, fake_rag):
    fake_rag.sources = []
    client = gw.sdk(MASTER_KEY)
    resp = client.chat.completions.create(model="gemini-3",
                                          messages=[{"role": "user", "content": "Hi there"}])
    assert resp.choices[0].message.content == "echo: Hi there"
    fake_rag.sources = [{"title": "", "url": ""}, "junk"]        # nothing citable either
    chunks = list(client.chat.completions.create(
        model="gemini-3", messages=[{"role": "user", "content": "Hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: Hi" and "Sources" not in text


def test_emulated_stream(gw, fake_rag):
    fake_rag.reply_text = "Bees dance. The dance shows the way! Does it work? Yes"
    chunks = list(gw.sdk(MASTER_KEY).chat.completions.create(
        model="gemini-3", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not chunks[0].choices[0].delta.content
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert pieces == ["Bees dance. ", "The dance shows the way! ", "Does it work? ", "Yes",
                      SOURCES]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.prompt_tokens == -(-len(QUERY) // 4)
    assert usage.completion_tokens == -(-len("".join(pieces)) // 4)
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"gemini-3"}
    assert fake_rag.last().json == {"query": QUERY, "model": UPSTREAM}

    # on the wire: role, content..., finish, [DONE] (no usage chunk unless asked for)
    status, headers, body = gw.post("/v1/chat/completions", {
        "model": "gemini-3", "messages": MESSAGES, "stream": True}, key=MASTER_KEY)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    frames = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert frames[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    assert "".join(f["choices"][0]["delta"]["content"] for f in frames[1:-1]) \
        == fake_rag.reply_text + SOURCES


def test_legacy_completions(gw, fake_rag):
    fake_rag.sources = []
    client = gw.sdk(MASTER_KEY)
    resp = client.completions.create(model="gemini-3", prompt="Why do bees buzz?")
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "echo: Why do bees buzz?"
    assert resp.choices[0].finish_reason == "stop"
    assert fake_rag.last().json == {"query": "Why do bees buzz?", "model": UPSTREAM}
    chunks = list(client.completions.create(model="gemini-3", prompt="Why do bees buzz?",
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "echo: Why do bees buzz?"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_configuration_and_upstream_errors(gw, fake_rag):
    req = {"messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        status, _, body = gw.post("/v1/chat/completions",
                                  {**req, "model": "gemini-off", "stream": stream},
                                  key=MASTER_KEY)
        err = error_of(body)
        assert (status, err["code"]) == (503, "provider_not_configured")
        assert "providers.hub-off.base_url" in err["message"]
    assert fake_rag.requests == []

    with pytest.raises(openai.InternalServerError) as exc:      # our key refused: 502
        gw.sdk(MASTER_KEY).chat.completions.create(model="gemini-wrong", **req)
    assert exc.value.status_code == 502
    assert "providers.hub-wrong.api_key" in exc.value.body["message"]

    for bad in ({"answer": None, "sources": []}, {"text": "hello"}, ["answer"]):
        for stream in (False, True):
            fake_rag.fail_next(200, bad)
            status, _, body = gw.post("/v1/chat/completions",
                                      {**req, "model": "gemini-3", "stream": stream},
                                      key=MASTER_KEY)
            assert (status, error_of(body)["code"]) == (502, "upstream_error")

    fake_rag.fail_next(503, {"error": "busy"})
    status, _, body = gw.post("/v1/chat/completions", {**req, "model": "gemini-3"},
                              key=MASTER_KEY)
    assert (status, error_of(body)["code"]) == (503, "upstream_overloaded")

    status, _, body = gw.post("/v1/chat/completions", {
        "model": "gemini-3", "messages": [{"role": "assistant", "content": "hm"}]},
        key=MASTER_KEY)
    assert (status, error_of(body)["param"]) == (400, "messages")

    # neither key ever reaches a client or the log
    log = "\n".join(gw.log)
    assert fake_rag.api_key not in log and "rag-wrong-key-987" not in log
    assert "rag-wrong-key-987" not in json.dumps(exc.value.body)
