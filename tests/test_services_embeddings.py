"""services/embeddings.py and the providers' ``embed`` (providers/openai.py,
providers/gemini_embed.py) over the real fakes, with the services built as the gateway builds
them: Gemini's chunks of 100 run at most 4 at once and come back in order, a failed chunk
fails the request and stops the others, an OpenAI-compatible server that ignores
``encoding_format`` or gives no usage is made to fit, and every request is booked and its
credits released."""
from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import Awaitable, Callable

import pytest

from apiarium import embedding
from apiarium.embedding import embedding_request, estimate_tokens
from apiarium.errors import InvalidRequest, QuotaExceeded, ServiceUnavailable, UpstreamError
from apiarium.live import Services
from apiarium.providers import gemini_embed
from apiarium.services.embeddings import EmbeddingService, prompt_tokens
from apiarium.usage import MASTER
from tests.fakes.base import embedding_vector
from tests.inprocess import InProcess, write_config

DIMS = 256
TEXTS = [f"passage {i} on the waggle dance" for i in range(1000)]
# a request without `dimensions` is counted at 3,072 numbers a vector against
# limits.max_embedding_floats: room for TEXTS
ROOM = {"max_embedding_floats": 1000 * 3072}


def models(oa, gm) -> dict:
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": oa.base_url, "api_key": oa.api_key,
                   "timeout_s": 5, "breaker_failures": 0},
            "google": {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
                       "timeout_s": 10, "breaker_failures": 0},
        },
        "models": {
            "oa-embed": {"provider": "up", "type": "embedding"},
            "gem-embed": {"provider": "google", "upstream": "gemini-embedding-001",
                          "type": "embedding", "credits": {"per_1k_tokens": 2.0}},
        },
    }


def run(tmp_path, oa, gm, scenario: Callable[[Services], Awaitable[None]],
        **settings) -> None:
    async def main() -> None:
        async with InProcess(write_config(tmp_path, models(oa, gm), **settings)) as env:
            await scenario(env.services)
    asyncio.run(main())


def create(svc: Services, model: str, key: str | None = "k1", **body):
    spec = svc.catalog.resolve(model)
    return svc.embeddings.create(spec, {"model": model, **body}, None, key)


def close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and max(
        abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6


# ---------------------------------------------------------------------- Gemini: chunks

def test_gemini_chunks_run_four_at_once_and_come_back_in_order(tmp_path, fake_openai,
                                                                fake_gemini):
    fake_gemini.embed_delay = 0.15

    async def scenario(svc: Services) -> None:
        started = asyncio.get_running_loop().time()
        answer, served = await create(svc, "gem-embed", input=TEXTS, encoding_format="float")
        took = asyncio.get_running_loop().time() - started
        assert served.alias == "gem-embed" and answer["model"] == "gem-embed"
        assert [d["index"] for d in answer["data"]] == list(range(1000))
        for d, text in zip(answer["data"], TEXTS, strict=True):
            assert close(d["embedding"], embedding_vector(text, DIMS)), text
        # 10 calls of 100, 4 at a time: at least 3 rounds of 0.15 s (the peak, below, says
        # they overlapped: not 10 rounds)
        assert took > 0.44, took

    run(tmp_path, fake_openai, fake_gemini, scenario, limits=ROOM)
    calls = [r for r in fake_gemini.requests if r.path.endswith(":batchEmbedContents")]
    assert [len(c.json["requests"]) for c in calls] == [100] * 10
    assert fake_gemini.embed_peak == gemini_embed.CONCURRENT == 4


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait on the loop, a tick at a time, until ``check()`` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def batch_calls(gm) -> list:
    return [r for r in gm.requests if r.path.endswith(":batchEmbedContents")]


def test_a_failed_gemini_chunk_fails_the_request_and_stops_the_others(tmp_path, fake_openai,
                                                                       fake_gemini):
    fake_gemini.embed_delay = 1.5
    fake_gemini.overloaded_next(path_contains=":batchEmbedContents")

    async def scenario(svc: Services) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ServiceUnavailable):
            await create(svc, "gem-embed", input=TEXTS)
        assert loop.time() - started < 1.0           # not waiting for the chunks under way
        assert svc.credits.held("k1") == 0
        assert svc.usage.spent_today("k1").requests == 0       # nothing made, nothing booked
        # every chunk's task was cancelled and awaited before the error was raised: none
        # can call now.  The fake's handlers sleep on; they end before the next test
        await until(lambda: fake_gemini._embed_now == 0)

    run(tmp_path, fake_openai, fake_gemini, scenario, limits=ROOM)
    # the first four; a fifth may have started on the failed one's slot; no more
    assert 4 <= len(batch_calls(fake_gemini)) <= 5, len(batch_calls(fake_gemini))


def test_gemini_answers_that_do_not_fit_are_a_502(tmp_path, fake_openai, fake_gemini):
    path = ":batchEmbedContents"

    async def scenario(svc: Services) -> None:
        for bad in ({"embeddings": [{"values": [0.1, 0.2]}]},           # one for two inputs
                    {"embeddings": [{"values": []}, {"values": [1]}]},
                    {"embeddings": [{"values": ["x"]}, {"values": [1]}]},
                    {"nothing": True}):
            fake_gemini.fail_next(200, bad, path_contains=path)
            with pytest.raises(UpstreamError, match="one vector of numbers per input"):
                await create(svc, "gem-embed", key=None, input=["a", "b"])

    run(tmp_path, fake_openai, fake_gemini, scenario)


def test_gemini_truncation_is_normalised_and_usage_estimated(tmp_path, fake_openai,
                                                             fake_gemini):
    texts = ["short", "ünïcödé bees", "蜜蜂在花上", "x" * 41]

    async def scenario(svc: Services) -> None:
        answer, _ = await create(svc, "gem-embed", input=texts, dimensions=32,
                                 encoding_format="base64")
        for d, text in zip(answer["data"], texts, strict=True):
            vector = embedding.decode(d["embedding"])
            assert len(vector) == 32
            assert abs(math.hypot(*vector) - 1.0) < 1e-6
            assert close(vector, embedding.normalized(embedding_vector(text, DIMS)[:32]))
        tokens = [estimate_tokens(t) for t in texts]
        assert tokens == [2, 4, 4, 11]          # ceil(UTF-8 bytes / 4)
        assert answer["usage"] == {"prompt_tokens": 21, "total_tokens": 21}
        spent = svc.usage.spent_today("k1")
        assert (spent.requests, spent.prompt_tokens) == (1, 21)
        assert spent.credits == pytest.approx(2.0 * 21 / 1000)

    run(tmp_path, fake_openai, fake_gemini, scenario)


def test_token_arrays_are_refused_by_gemini_before_any_call(tmp_path, fake_openai,
                                                            fake_gemini):
    async def scenario(svc: Services) -> None:
        with pytest.raises(InvalidRequest) as exc:
            await create(svc, "gem-embed", input=[[1, 2], [3]])
        assert exc.value.param == "input"
        assert svc.credits.held("k1") == 0

    run(tmp_path, fake_openai, fake_gemini, scenario)
    assert fake_gemini.requests == []


# ---------------------------------------------------------------------- OpenAI-compatible

def test_a_server_that_ignores_encoding_format_is_made_to_honour_it(tmp_path, fake_openai,
                                                                   fake_gemini):
    floats = [0.25, -0.5, 1.0]
    packed = embedding.encode(floats, "base64")

    async def scenario(svc: Services) -> None:
        fake_openai.fail_next(200, {"object": "list", "model": "x", "data": [
            {"object": "embedding", "index": 0, "embedding": floats}]})
        answer, _ = await create(svc, "oa-embed", input="a", encoding_format="base64")
        assert answer["data"][0]["embedding"] == packed
        assert answer["model"] == "oa-embed"
        # no usage from the server: estimated (and booked) like Gemini's
        assert answer["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
        fake_openai.fail_next(200, {"object": "list", "model": "x", "data": [
            {"object": "embedding", "index": 1, "embedding": packed},
            {"object": "embedding", "index": 0, "embedding": [9.0]}],
            "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        answer, _ = await create(svc, "oa-embed", input=["a", "b"])
        assert [d["embedding"] for d in answer["data"]] == [[9.0], floats]   # by index
        assert svc.usage.spent_today("k1").prompt_tokens == 8

    run(tmp_path, fake_openai, fake_gemini, scenario)


@pytest.mark.parametrize("answer", [
    {"data": []},
    {"data": [{"embedding": "%%%"}]},
    {"data": [{"embedding": "AAAAAAA="}]},           # 5 bytes: not float32
    {"data": [{"embedding": ["x"]}]},
    {"choices": []},
])
def test_openai_answers_that_do_not_fit_are_a_502(tmp_path, fake_openai, fake_gemini,
                                                  answer):
    async def scenario(svc: Services) -> None:
        fake_openai.fail_next(200, answer)
        fmt = "base64" if answer.get("data") and isinstance(
            answer["data"][0]["embedding"], list) else "float"
        with pytest.raises(UpstreamError):
            await create(svc, "oa-embed", input="a", encoding_format=fmt)

    run(tmp_path, fake_openai, fake_gemini, scenario)


# ---------------------------------------------------------------------- the service

def test_the_service_holds_credits_while_it_works_and_books_after(tmp_path, fake_openai,
                                                                  fake_gemini):
    fake_gemini.embed_delay = 1.0                    # the call under way while we look

    async def scenario(svc: Services) -> None:
        texts = TEXTS[:10]
        work = asyncio.ensure_future(create(svc, "gem-embed", input=texts))
        await until(lambda: batch_calls(fake_gemini))   # held before the call was made
        estimate = sum(estimate_tokens(t) for t in texts)
        assert svc.credits.held("k1") == pytest.approx(2.0 * estimate / 1000)
        await work
        assert svc.credits.held("k1") == 0
        assert svc.usage.spent_today("k1").prompt_tokens == estimate
        # the master key: booked under its own name, bound by no cap
        await create(svc, "oa-embed", key=None, input=["one two"])
        assert svc.usage.spent_today(MASTER).prompt_tokens == 2

    run(tmp_path, fake_openai, fake_gemini, scenario)


def test_the_daily_credits_refuse_what_they_cannot_cover(tmp_path, fake_openai, fake_gemini):
    async def scenario(svc: Services) -> None:
        with pytest.raises(QuotaExceeded):
            await create(svc, "gem-embed", input=["b" * 4000] * 3)    # 3,000 tokens: 6 credits
        await create(svc, "gem-embed", input=["b" * 4000] * 2)        # 4 credits
        assert svc.usage.spent_today("k1").credits == pytest.approx(4.0)

    run(tmp_path, fake_openai, fake_gemini, scenario, rate_limit={"daily_credits": 5})
    assert len(fake_gemini.requests) == 1


def test_the_size_cap_is_a_free_keys(tmp_path, fake_openai, fake_gemini):
    async def scenario(svc: Services) -> None:
        assert svc.settings.max_embedding_input_bytes == 1048
        body = {"input": ["é" * 525]}                                  # 1,050 bytes
        with pytest.raises(InvalidRequest) as exc:
            svc.embeddings.request(body, None, "k1")
        assert exc.value.param == "input" and "1,050 bytes" in exc.value.message
        assert svc.embeddings.request(body, None, None).size == 1050
        assert svc.embeddings.request({"input": ["é" * 524]}, None, "k1").size == 1048

    run(tmp_path, fake_openai, fake_gemini, scenario,
        limits={"max_embedding_input_mb": 0.001})


def test_prompt_tokens_trust_only_a_count():
    req = embedding_request({"input": ["abcdefgh", "abc"]})
    assert prompt_tokens({"usage": {"prompt_tokens": 9}}, req) == 9
    for usage in (None, {}, {"prompt_tokens": "9"}, {"prompt_tokens": -1},
                  {"prompt_tokens": True}):
        assert prompt_tokens({"usage": usage}, req) == 3
    assert isinstance(EmbeddingService.create, object)


# ---------------------------------------------------------------------- the request itself

def test_requests_are_parsed_into_inputs_and_sizes():
    one = embedding_request({"input": "héllo"})
    assert (one.inputs, one.tokens, one.size, one.encoding_format) == (("héllo",), False, 6,
                                                                        "float")
    tokens = embedding_request({"input": [[1, 2, 3], [4]], "dimensions": 64.0,
                                "encoding_format": "base64", "user": "u1"})
    assert tokens.inputs == ((1, 2, 3), (4,)) and tokens.tokens
    assert (tokens.dimensions, tokens.encoding_format, tokens.user) == (64, "base64", "u1")
    assert tokens.size == 16 and tokens.estimate() == 4
    single = embedding_request({"input": [5, 6]})
    assert single.inputs == ((5, 6),) and single.tokens
    with pytest.raises(InvalidRequest, match="text only") as exc:
        single.texts("gem")
    assert exc.value.param == "input"
    assert embedding_request({"input": ["a", "b"]}).texts("gem") == ("a", "b")
    assert embedding_request({"input": ["x"] * 2048}).estimate() == 2048


def test_vectors_encode_as_little_endian_float32():
    values = [0.1, -2.5, 3.0e-8, 1.0]
    packed = embedding.encode(values, "base64")
    assert isinstance(packed, str)
    raw = base64.b64decode(packed)
    assert list(struct.unpack("<4f", raw)) == pytest.approx(values, rel=1e-6)
    assert embedding.decode(packed) == pytest.approx(values, rel=1e-6)
    assert embedding.encode(values, "float") == values
    assert embedding.normalized([3.0, 4.0]) == [0.6, 0.8]
    assert embedding.normalized([0.0, 0.0]) == [0.0, 0.0]
    assert json.loads(json.dumps(embedding.answer("m", [[1.0]], "float", 3))) == {
        "object": "list", "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3},
        "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}
