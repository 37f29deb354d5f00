"""The openai SDK (sync and async, stream and not) against Apiarium in front of a fake
OpenAI-compatible upstream: what the client gets, and what the upstream was sent."""
from __future__ import annotations

import asyncio
import json
import socket
import time

from tests.fakes import split_pieces
from tests.support import MASTER_KEY, wait_for


def test_chat_non_stream_relays_the_upstream_answer(gateway, fake_openai):
    fake_openai.reply_text = "The capital of Norway is Oslo."
    key = gateway.key_for()
    resp = gateway.sdk(key).chat.completions.create(
        model="gpt-5", messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Capital of Norway?"}],
        temperature=0.2)
    assert resp.choices[0].message.content == "The capital of Norway is Oslo."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-5"
    assert resp.usage.prompt_tokens == 5 and resp.usage.completion_tokens == 6
    sent = fake_openai.last()
    assert sent.path == "/v1/chat/completions"
    assert sent.json["messages"][1] == {"role": "user", "content": "Capital of Norway?"}
    assert sent.json["temperature"] == 0.2
    # the upstream sees the provider's key, never the client's
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert key not in json.dumps(sent.headers)


def test_chat_stream_preserves_content_and_chunk_count(gateway, fake_openai):
    fake_openai.reply_text = "one two three four five six seven eight nine ten"
    fake_openai.stream_events = 7
    stream = gateway.sdk(gateway.key_for()).chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "count"}], stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert pieces == split_pieces(fake_openai.reply_text, 7)
    assert "".join(pieces) == fake_openai.reply_text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"gpt-5"}


def test_stream_include_usage_passes_through(gateway, fake_openai):
    stream = gateway.sdk(gateway.key_for()).chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "a b c"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert fake_openai.last().json["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.total_tokens == 3 + chunks[-1].usage.completion_tokens


def test_alias_is_what_the_client_sees_and_upstream_id_what_upstream_sees(gateway, fake_openai):
    client = gateway.sdk(gateway.key_for())
    resp = client.chat.completions.create(model="gpt-renamed",
                                          messages=[{"role": "user", "content": "hi"}])
    assert resp.model == "gpt-renamed"
    assert fake_openai.last().json["model"] == "gpt-upstream-id"
    chunks = list(client.chat.completions.create(
        model="gpt-renamed", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert chunks and {c.model for c in chunks} == {"gpt-renamed"}
    assert fake_openai.last().json["model"] == "gpt-upstream-id"


def test_legacy_completions_stream_and_not(gateway, fake_openai):
    fake_openai.reply_text = "Once upon a time there was a gateway"
    client = gateway.sdk(MASTER_KEY)
    resp = client.completions.create(model="gpt-5", prompt="Tell me a story", max_tokens=20)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == fake_openai.reply_text
    assert resp.choices[0].finish_reason == "stop" and resp.model == "gpt-5"
    # the prompt became one user turn
    assert fake_openai.last().json["messages"] == [{"role": "user", "content": "Tell me a story"}]
    assert fake_openai.last().json["max_tokens"] == 20
    chunks = list(client.completions.create(model="gpt-5", prompt="Tell me a story",
                                            stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == fake_openai.reply_text
    assert all(c.object == "text_completion" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4


def test_models_list_through_the_sdk(gateway):
    models = gateway.sdk(gateway.key_for()).models.list()
    ids = {m.id: m for m in models.data}
    assert set(ids) == {"gpt-5", "gpt-renamed", "dead-model", "nokey-model", "gpt-image-1"}
    assert ids["gpt-image-1"].model_extra["type"] == "image"
    assert ids["gpt-5"].model_extra["type"] == "chat" and ids["gpt-5"].owned_by == "openai"
    one = gateway.sdk(gateway.key_for()).models.retrieve("gpt-image-1")
    assert one.id == "gpt-image-1"


def test_async_sdk_concurrent_streams(gateway, fake_openai):
    fake_openai.reply_text = "alpha beta gamma delta"
    fake_openai.stream_events = 4

    async def main():
        client = gateway.async_sdk(MASTER_KEY)
        resp = await client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}])

        async def one():
            stream = await client.chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "x"}], stream=True)
            return [c.choices[0].delta.content async for c in stream
                    if c.choices and c.choices[0].delta.content]
        results = await asyncio.gather(*(one() for _ in range(10)))
        await client.close()
        return resp, results

    resp, results = asyncio.run(main())
    assert resp.choices[0].message.content == "alpha beta gamma delta"
    assert all("".join(r) == "alpha beta gamma delta" and len(r) == 4 for r in results)


def test_client_that_drops_a_stream_closes_the_upstream_request(gateway, fake_openai):
    fake_openai.stream_events = 50
    fake_openai.stream_delay = 0.2
    fake_openai.reply_text = " ".join(f"w{i}" for i in range(200))
    body = json.dumps({"model": "gpt-5", "stream": True,
                       "messages": [{"role": "user", "content": "long"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:            # a few events have arrived
        got += sock.recv(65536)
    assert b"200 OK" in got.split(b"\r\n", 1)[0]
    dropped = time.monotonic()
    sock.close()
    assert wait_for(lambda: fake_openai.disconnects, timeout=3)
    assert fake_openai.disconnects[0] - dropped < 1.0
    # and the upstream did not keep streaming to nobody for the remaining ~9 s
    assert len(fake_openai.requests) == 1
    # the access log says the client left (499), not the 200 its first bytes carried
    assert wait_for(lambda: any(" POST /v1/chat/completions 499 " in line
                                for line in gateway.log), timeout=3), gateway.log[-5:]
