"""POST /v1/embeddings end to end: the real gateway in front of the OpenAI and Gemini fakes,
driven with the openai SDK as users drive it (its default asks for base64 and decodes it
itself), and with plain HTTP where the SDK would hide the wire.

Each output vector is checked against the fakes' deterministic ``embedding_vector`` of its
own input, so order is checked too; the Gemini fake refuses more than 100 requests per
``batchEmbedContents`` call and records what it got."""
from __future__ import annotations

import base64
import json
import math
import socket
import struct

import openai
import pytest

from apiarium.app import routes
from apiarium.embedding import estimate_tokens
from apiarium.handlers import embeddings as handler
from tests.conftest import openai_models
from tests.fakes.base import embedding_vector
from tests.support import MASTER_KEY, Gateway, error_of, wait_for

DIMS = 256                       # the fakes' native embedding size
OA, RENAMED, GEM = "text-embedding-3-small", "embed-renamed", "gemini-embedding-001"
TEXTS = [f"note {i}: the bees of hive {i % 7} visit flower {i * 13 % 101}" for i in range(2049)]
# the fakes answer vectors of 256 numbers, but a request without `dimensions` is counted at
# 3,072 a vector against limits.max_embedding_floats: room for the 2,048 inputs sent here
ROOM = {"max_embedding_floats": 2048 * 3072}


def embedding_models(oa, gm, **extra) -> dict:
    return openai_models(oa, providers={
        # the fake builds and checks 2,048 vectors for one call: more than conftest's 1.5 s
        # on a busy machine
        "up": {"kind": "openai", "base_url": oa.base_url, "api_key": oa.api_key,
               "timeout_s": 30},
        "google": {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
                   "timeout_s": 10},
        **extra.pop("providers", {}),
    }, models={
        OA: {"provider": "up", "type": "embedding"},
        RENAMED: {"provider": "up", "upstream": "text-embedding-up", "type": "embedding"},
        GEM: {"provider": "google", "type": "embedding"},
        **extra.pop("models", {}),
    })


@pytest.fixture(scope="module")
def _shared_gateway(tmp_path_factory, _fake_openai_server, _fake_gemini_server):
    """One gateway for the tests that change nothing in it (a process start is ~1 s)."""
    gw = Gateway(tmp_path_factory.mktemp("embeddings"),
                 embedding_models(_fake_openai_server, _fake_gemini_server),
                 rate_limit={"rpm": 100_000}, limits=ROOM).start()
    yield gw
    gw.stop()


@pytest.fixture
def gw(_shared_gateway, fake_openai, fake_gemini):
    """The shared gateway, its fakes reset for this test."""
    return _shared_gateway


def unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def expected(text: str, dims: int | None = None) -> list[float]:
    """What the gateway should answer for ``text``: the fakes' vector, cut to ``dims`` and
    scaled to length 1 (OpenAI does it upstream, the gateway for Gemini)."""
    full = embedding_vector(text, DIMS)
    return unit(full[:dims]) if dims else full


def assert_close(got: list[float], want: list[float], what: str = "") -> None:
    assert len(got) == len(want), (what, len(got), len(want))
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst < 1e-6, (what, worst)        # float32 on the wire: ~1e-8 here


def decode(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def batch_calls(gm) -> list:
    return [r for r in gm.requests if r.path.endswith(":batchEmbedContents")]


def test_the_route_is_a_rate_limited_endpoint_named_embeddings():
    assert [r for r in routes() if r[0] == "/v1/embeddings"] == handler.routes
    assert handler.EmbeddingsHandler.admission["POST"].bucket == "requests"
    assert handler.EmbeddingsHandler.endpoint == "embeddings"


# ---------------------------------------------------------------------- the SDK round trip

@pytest.mark.parametrize("model", [OA, GEM])
@pytest.mark.parametrize("count", [1, 250])
@pytest.mark.parametrize("encoding", [None, "float"])
def test_the_sdk_gets_one_vector_per_input_in_order(gw, fake_openai, fake_gemini, model,
                                                    count, encoding):
    client = gw.sdk(gw.key_for())
    texts = TEXTS[:count]
    kw = {"encoding_format": encoding} if encoding else {}
    result = client.embeddings.create(model=model, input=texts if count > 1 else texts[0], **kw)
    assert result.object == "list" and result.model == model
    assert [d.index for d in result.data] == list(range(count))
    for d, text in zip(result.data, texts, strict=True):
        assert d.object == "embedding"
        assert_close(d.embedding, expected(text), text)
    if model == OA:
        sent = fake_openai.last().json
        assert sent["model"] == OA
        # always asked as base64 (float32, a third of the bytes): relayed as it came to the
        # SDK's default base64 (it decodes the float32 itself), decoded for a float client
        assert sent["encoding_format"] == "base64"
        assert result.usage.prompt_tokens == sum(len(t.split()) for t in texts)
    else:
        calls = batch_calls(fake_gemini)
        sizes = sorted((len(c.json["requests"]) for c in calls), reverse=True)
        assert sizes == ([100, 100, 50] if count == 250 else [1])
        sent = [r["content"]["parts"][0]["text"] for c in calls for r in c.json["requests"]]
        assert sorted(sent) == sorted(texts)
        assert all(r["model"] == f"models/{GEM}" and "outputDimensionality" not in r
                   for c in calls for r in c.json["requests"])
        # Gemini counts nothing: 4 bytes of UTF-8 a token, rounded up
        assert result.usage.prompt_tokens == sum(estimate_tokens(t) for t in texts)
    assert result.usage.total_tokens == result.usage.prompt_tokens


def test_an_alias_is_sent_as_the_upstream_id_and_answered_as_the_alias(gw, fake_openai):
    result = gw.sdk(gw.key_for()).embeddings.create(model=RENAMED, input="a bee")
    assert fake_openai.last().json["model"] == "text-embedding-up"
    assert result.model == RENAMED
    assert_close(result.data[0].embedding, expected("a bee"))


@pytest.mark.parametrize("model", [OA, GEM])
def test_explicit_base64_is_little_endian_float32(gw, model):
    status, headers, body = gw.post("/v1/embeddings", {
        "model": model, "input": TEXTS[:3], "encoding_format": "base64"}, key=gw.key_for())
    assert status == 200, body
    assert headers["x-apiarium-model"] == model
    answer = json.loads(body)
    assert set(answer) == {"object", "data", "model", "usage"}
    for item, text in zip(answer["data"], TEXTS[:3], strict=True):
        assert isinstance(item["embedding"], str)
        assert_close(decode(item["embedding"]), expected(text))


@pytest.mark.parametrize("model", [OA, GEM])
@pytest.mark.parametrize("encoding", [None, "float"])
def test_dimensions_are_honoured_and_vectors_have_length_one(gw, fake_gemini, model,
                                                             encoding):
    kw = {"encoding_format": encoding} if encoding else {}
    result = gw.sdk(gw.key_for()).embeddings.create(model=model, input=TEXTS[:120],
                                                    dimensions=64, **kw)
    for d, text in zip(result.data, TEXTS[:120], strict=True):
        assert len(d.embedding) == 64
        assert abs(math.sqrt(sum(v * v for v in d.embedding)) - 1.0) < 1e-6
        assert_close(d.embedding, expected(text, 64), text)
    if model == GEM:
        calls = batch_calls(fake_gemini)
        assert sorted(len(c.json["requests"]) for c in calls) == [20, 100]
        assert {r["outputDimensionality"] for c in calls for r in c.json["requests"]} == {64}
        # the fake, like Google, does not scale a truncated vector: the gateway did
        assert abs(math.sqrt(sum(v * v for v in embedding_vector(TEXTS[0], DIMS)[:64]))
                   - 1.0) > 1e-3


def test_token_arrays_pass_through_to_an_openai_kind_upstream(gw, fake_openai):
    client = gw.sdk(gw.key_for())
    result = client.embeddings.create(model=OA, input=[[1, 2, 3], [40, 50]])
    assert fake_openai.last().json["input"] == [[1, 2, 3], [40, 50]]
    assert_close(result.data[0].embedding, expected("tokens:1,2,3"))
    assert_close(result.data[1].embedding, expected("tokens:40,50"))
    assert result.usage.prompt_tokens == 5
    single = client.embeddings.create(model=OA, input=[7, 8, 9], encoding_format="float")
    assert len(single.data) == 1
    assert_close(single.data[0].embedding, expected("tokens:7,8,9"))


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_token_arrays_on_gemini_are_a_400_naming_input(gw, fake_gemini, tokens):
    with pytest.raises(openai.BadRequestError) as exc:
        gw.sdk(gw.key_for()).embeddings.create(model=GEM, input=tokens)
    assert exc.value.param == "input" and "text only" in exc.value.message
    assert batch_calls(fake_gemini) == []


# ---------------------------------------------------------------------- what is refused

def test_2049_inputs_are_a_400_naming_input(gw, fake_openai, fake_gemini):
    client = gw.sdk(gw.key_for())
    for model in (OA, GEM):
        with pytest.raises(openai.BadRequestError) as exc:
            client.embeddings.create(model=model, input=TEXTS[:2049])
        assert exc.value.param == "input" and "2048" in exc.value.message
    assert fake_openai.requests == [] and batch_calls(fake_gemini) == []
    ok = client.embeddings.create(model=OA, input=TEXTS[:2048])      # the limit itself
    assert len(ok.data) == 2048


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "encoding_format": 1}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": "64"}, "dimensions"),
    ({"input": "x", "dimensions": True}, "dimensions"),
    ({"input": "x", "user": 7}, "user"),
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": ["a", [1, 2]]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": [1, -2]}, "input"),
    ({"input": [1, 2**31]}, "input"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": [True, False]}, "input"),
])
def test_bad_fields_are_a_400_naming_them(gw, fake_openai, body, param):
    status, _, raw = gw.post("/v1/embeddings", {"model": OA, **body}, key=gw.key_for())
    err = error_of(raw)
    assert status == 400 and err["param"] == param, (body, err)
    assert fake_openai.requests == []


def test_models_of_other_types_are_refused_both_ways(gw):
    key = gw.key_for()
    status, _, raw = gw.post("/v1/embeddings", {"model": "gpt-5", "input": "a"}, key=key)
    err = error_of(raw)
    assert status == 400 and err["code"] == "model_type_mismatch"
    assert "/v1/chat/completions" in err["message"]
    status, _, raw = gw.post("/v1/chat/completions", {
        "model": OA, "messages": [{"role": "user", "content": "hi"}]}, key=key)
    err = error_of(raw)
    assert status == 400 and err["code"] == "model_type_mismatch"
    assert "/v1/embeddings" in err["message"]
    status, _, raw = gw.post("/v1/embeddings", {"model": "nope", "input": "a"}, key=key)
    assert status == 404 and error_of(raw)["code"] == "model_not_found"


def test_the_size_cap_binds_free_keys_not_the_master_key(make_gateway, fake_openai,
                                                         fake_gemini):
    gw = make_gateway(embedding_models(fake_openai, fake_gemini),
                      limits={"max_embedding_input_mb": 0.001})          # 1,048 bytes
    key = gw.key_for()
    small, large = ["bee " * 50], ["bee " * 50] * 6                        # 200 and 1,200 B
    assert gw.post("/v1/embeddings", {"model": OA, "input": small}, key=key)[0] == 200
    status, _, raw = gw.post("/v1/embeddings", {"model": GEM, "input": large}, key=key)
    err = error_of(raw)
    assert status == 400 and err["param"] == "input"
    assert "1,200 bytes" in err["message"] and "1,048 bytes (0.001 MB)" in err["message"]
    status, _, raw = gw.post("/v1/embeddings", {"model": GEM, "input": large}, key=MASTER_KEY)
    assert status == 200, raw


# ---------------------------------------------------------------------- limits and credits

def test_a_free_key_is_rate_limited_and_charged(make_gateway, fake_openai, fake_gemini):
    gw = make_gateway(embedding_models(fake_openai, fake_gemini), rate_limit={"rpm": 2},
                      limits=ROOM)
    key = gw.key_for()
    client = gw.sdk(key)
    first = client.embeddings.create(model=OA, input=["one two three four"] * 250)
    second = client.embeddings.create(model=GEM, input=["abcdefgh"] * 250)
    with pytest.raises(openai.RateLimitError) as exc:
        client.embeddings.create(model=OA, input="one more")
    assert exc.value.code == "rate_limit_exceeded"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    tokens = first.usage.prompt_tokens + second.usage.prompt_tokens
    assert (first.usage.prompt_tokens, second.usage.prompt_tokens) == (1000, 500)
    status, _, raw = gw.get("/v1/keys/me", key=key)
    assert status == 200
    usage = json.loads(raw)["usage"]
    assert usage["requests"] == 2 and usage["prompt_tokens"] == tokens
    assert usage["completion_tokens"] == 0
    assert usage["credits"] == pytest.approx(0.1 * tokens / 1000)   # 0.1 per 1k by default


def test_the_embeddings_endpoint_limit(make_gateway, fake_openai, fake_gemini):
    gw = make_gateway(embedding_models(fake_openai, fake_gemini),
                      rate_limit={"rpm": 100, "endpoints": {"embeddings": "1/minute"}})
    key = gw.key_for()
    assert gw.post("/v1/embeddings", {"model": OA, "input": "a"}, key=key)[0] == 200
    status, headers, raw = gw.post("/v1/embeddings", {"model": OA, "input": "a"}, key=key)
    assert status == 429 and "embeddings requests per minute" in error_of(raw)["message"]
    assert headers["retry-after"]
    chat = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    assert gw.post("/v1/chat/completions", chat, key=key)[0] == 200      # other endpoints


def test_a_request_the_credits_left_cannot_cover_is_refused_before_it_is_sent(
        make_gateway, fake_openai, fake_gemini):
    models = embedding_models(fake_openai, fake_gemini, models={
        "dear": {"provider": "google", "upstream": GEM, "type": "embedding",
                 "credits": {"per_1k_tokens": 100.0}}})
    gw = make_gateway(models, rate_limit={"daily_credits": 5}, limits=ROOM)
    key = gw.key_for()
    status, _, raw = gw.post("/v1/embeddings", {"model": "dear", "input": TEXTS[:100]}, key=key)
    err = error_of(raw)
    assert status == 429 and err["code"] == "insufficient_quota"
    assert batch_calls(fake_gemini) == []
    status, _, raw = gw.post("/v1/embeddings", {"model": "dear", "input": TEXTS[:2]}, key=key)
    assert status == 200, raw
    status, _, raw = gw.get("/v1/keys/me", key=key)
    assert json.loads(raw)["usage"]["credits"] == pytest.approx(
        100 * sum(estimate_tokens(t) for t in TEXTS[:2]) / 1000, abs=1e-4)


# ---------------------------------------------------------------------- upstream failures

def test_a_failing_provider_falls_back_to_the_next_model(make_gateway, fake_openai,
                                                        fake_gemini):
    models = embedding_models(fake_openai, fake_gemini, models={
        "doomed-embed": {"provider": "dead", "type": "embedding", "fallbacks": [GEM]}})
    gw = make_gateway(models)
    status, headers, raw = gw.post("/v1/embeddings", {"model": "doomed-embed", "input": "x"},
                                   key=MASTER_KEY)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["model"] == "doomed-embed" and headers["x-apiarium-model"] == GEM
    assert_close(answer["data"][0]["embedding"], expected("x"))


def test_an_upstream_refusal_is_passed_on(make_gateway, fake_gemini, fake_openai):
    gw = make_gateway(embedding_models(fake_openai, fake_gemini))
    status, _, raw = gw.post("/v1/embeddings", {"model": GEM, "input": "x",
                                                "dimensions": DIMS + 1}, key=MASTER_KEY)
    assert status == 400 and "outputDimensionality" in error_of(raw)["message"]
    fake_gemini.overloaded_next()
    status, _, raw = gw.post("/v1/embeddings", {"model": GEM, "input": TEXTS[:300]},
                             key=MASTER_KEY)
    assert status == 503 and error_of(raw)["code"] == "upstream_overloaded"
    fake_openai.garbage_next()
    status, _, raw = gw.post("/v1/embeddings", {"model": OA, "input": "x"}, key=MASTER_KEY)
    assert status == 502


def test_a_client_that_leaves_stops_the_gemini_calls(gw, fake_gemini):
    """1,000 inputs are 10 calls, 4 at a time; the client hangs up during the first round:
    the calls under way are cancelled and no further one is made."""
    fake_gemini.embed_delay = 4.0         # the first round outlasts the hang-up, under load too
                                          # (1.5 s: once in five loaded runs the test thread
                                          # saw the 4 calls only after a fifth had started)
    body = json.dumps({"model": GEM, "input": TEXTS[:1000]}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + MASTER_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert wait_for(lambda: len(batch_calls(fake_gemini)) >= 4, timeout=10)
    sock.close()                          # hang up during the first round
    # the gateway has ended the request (its access-log line): it makes no call after that
    assert wait_for(lambda: [ln for ln in gw.log if "POST /v1/embeddings 499 " in ln],
                    timeout=10), gw.log[-5:]
    assert len(batch_calls(fake_gemini)) == 4
    assert fake_gemini.embed_peak == 4
    # the fake's handlers sleep on after the hang-up: let them end before the next test
    assert wait_for(lambda: fake_gemini._embed_now == 0, timeout=15)
