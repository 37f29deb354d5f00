"""services/chat.py: ChatService.complete and .stream over the real OpenAI fake upstream (a
loopback HTTP server), with the services built as the gateway builds them.  Usage is booked
however a request ends: the upstream's counts when they come, else an estimate."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from apiarium import sse
from apiarium.errors import ApiError, InvalidRequest, ServiceUnavailable, UpstreamError
from apiarium.live import Services
from apiarium.resilience import OPEN
from apiarium.services.chat import ChatStream
from apiarium.services.costs import CHARS_PER_TOKEN
from apiarium.usage import MASTER, Tally, price
from tests.fakes import words
from tests.inprocess import InProcess, write_config

QUESTION = "which bees make the most honey in a warm summer"
CAP = 300


def models(fake, breaker_failures: int = 3) -> dict:
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": fake.base_url, "api_key": fake.api_key,
                   "timeout_s": 5, "breaker_failures": breaker_failures},
            "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "k",
                     "connect_timeout_s": 2},
        },
        "models": {
            "gpt-5": {"provider": "up", "max_output_tokens": CAP,
                      "credits": {"request": 0.5, "per_1k_tokens": 3.0}},
            "doomed": {"provider": "dead", "fallbacks": ["pricey"]},
            "pricey": {"provider": "up", "credits": {"request": 4.0, "per_1k_tokens": 0}},
        },
    }


def run(tmp_path, fake, scenario: Callable[[Services], Awaitable[None]], **kw) -> None:
    """Build the services on ``models(fake)`` and run ``scenario`` on a loop of its own."""
    async def main() -> None:
        async with InProcess(write_config(tmp_path, models(fake, **kw))) as env:
            await scenario(env.services)
    asyncio.run(main())


def chat_body(stream: bool = False, usage: bool | None = None, **extra) -> dict:
    body: dict = {"model": "gpt-5", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": QUESTION}],
                  **extra}
    if stream:
        body["stream"] = True
    if usage is not None:
        body["stream_options"] = {"include_usage": usage}
    return body


def fake_counts(body: dict, answer: str) -> tuple[int, int]:
    """What the fake counts (tests/fakes/base.py): words of every message, words of the
    answer."""
    return sum(words(m["content"]) for m in body["messages"]), words(answer)


def data_of(frame: bytes) -> dict:
    return orjson.loads(sse.parse(frame)[1])


async def read_all(stream: ChatStream) -> list[bytes]:
    try:
        return [frame async for frame in stream]
    finally:
        await stream.aclose()


# ---------------------------------------------------------------------- complete

def test_complete_books_the_upstreams_usage(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body()
        answer, served = await svc.chat.complete(m, body, orjson.dumps(body), "key-a")
        assert served is m and answer["model"] == "gpt-5"
        text = answer["choices"][0]["message"]["content"]
        assert text == f"echo: {QUESTION}"
        prompt, completion = fake_counts(body, text)
        assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == \
            (prompt, completion)
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.prompt_tokens, spent.completion_tokens) == \
            (1, prompt, completion)
        assert spent.credits == pytest.approx(
            price(m, Tally(requests=1, prompt_tokens=prompt, completion_tokens=completion)))
        assert svc.credits.held("key-a") == 0
    run(tmp_path, fake_openai, scenario)


def test_a_fallback_answers_under_the_alias_asked_and_is_booked_at_its_own_price(
        tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        doomed = svc.catalog.resolve("doomed")
        body = {**chat_body(), "model": "doomed"}
        answer, served = await svc.chat.complete(doomed, body, orjson.dumps(body), None)
        assert served is svc.catalog.resolve("pricey")
        assert answer["model"] == "doomed"                  # the alias the client asked for
        assert fake_openai.last().json["model"] == "pricey"   # the fallback's upstream id
        booked = svc.usage.spent_today(MASTER)            # the master key's usage
        assert booked.requests == 1
        assert booked.credits == pytest.approx(served.credits.request)
        assert svc.breakers.of(doomed).streak == 1   # the refusal counted
    run(tmp_path, fake_openai, scenario)


def test_caps_are_checked_before_the_upstream_but_not_for_the_master_key(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body(max_tokens=CAP + 1)
        with pytest.raises(InvalidRequest) as raised:
            await svc.chat.complete(m, body, None, "key-a")
        assert raised.value.param == "max_tokens"
        assert fake_openai.requests == []
        assert svc.usage.spent_today("key-a").requests == 0
        answer, _ = await svc.chat.complete(m, body, None, None)
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert fake_openai.last().json["max_tokens"] == CAP + 1
    run(tmp_path, fake_openai, scenario)


def test_a_failed_complete_releases_its_hold_and_books_nothing(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        fake_openai.fail_next(500, {"error": {"message": "boom", "type": "server_error",
                                              "param": None, "code": None}})
        m = svc.catalog.resolve("gpt-5")
        with pytest.raises(UpstreamError):
            await svc.chat.complete(m, chat_body(), None, "key-a")
        assert svc.credits.held("key-a") == 0
        assert svc.usage.spent_today("key-a").requests == 0
        assert svc.breakers.of(m).streak == 1
    run(tmp_path, fake_openai, scenario)


# ---------------------------------------------------------------------- stream

def test_a_stream_read_to_the_end_books_the_upstreams_usage(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body(stream=True, usage=True)
        stream = await svc.chat.stream(m, body, orjson.dumps(body), "key-a")
        assert stream.served is m
        frames = await read_all(stream)
        assert frames[-1] == sse.DONE
        tail = data_of(frames[-2])                 # the usage frame: the client asked for it
        assert tail["choices"] == [] and tail["usage"]["total_tokens"] > 0
        text = "".join(data_of(f)["choices"][0]["delta"].get("content") or ""
                       for f in frames[:-2])
        prompt, completion = fake_counts(body, text)
        assert (tail["usage"]["prompt_tokens"], tail["usage"]["completion_tokens"]) == \
            (prompt, completion)
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.prompt_tokens, spent.completion_tokens) == \
            (1, prompt, completion)
        assert svc.credits.held("key-a") == 0
        await stream.aclose()                      # closing again books nothing more
        assert svc.usage.spent_today("key-a").requests == 1
    run(tmp_path, fake_openai, scenario)


@pytest.mark.parametrize("asked", [None, False], ids=["no stream_options", "include_usage false"])
def test_the_usage_frame_is_hidden_when_not_asked_for_but_still_booked(
        tmp_path, fake_openai, asked):
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body(stream=True, usage=asked)
        frames = await read_all(await svc.chat.stream(m, body, orjson.dumps(body), "key-a"))
        # the gateway asked the upstream for usage all the same ...
        sent = fake_openai.last().json
        assert sent["stream_options"]["include_usage"] is True
        assert sent["messages"] == body["messages"]
        # ... and the client does not see it
        assert frames[-1] == sse.DONE
        chunks = [data_of(f) for f in frames[:-1]]
        assert all(c["choices"] for c in chunks)
        assert not any(isinstance(c.get("usage"), dict) for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        prompt, completion = fake_counts(body, text)
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.prompt_tokens, spent.completion_tokens) == \
            (1, prompt, completion)
    run(tmp_path, fake_openai, scenario)


def test_a_stream_closed_early_books_one_request_and_an_estimate(tmp_path, fake_openai):
    fake_openai.stream_events = 40
    fake_openai.stream_delay = 0.02

    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body(stream=True, usage=True)
        raw = orjson.dumps(body)
        stream = await svc.chat.stream(m, body, raw, "key-a")
        relayed = [await anext(stream), await anext(stream)]
        assert all(f.startswith(b"data: {") for f in relayed)
        await stream.aclose()                        # the client went away
        spent = svc.usage.spent_today("key-a")
        assert spent.requests == 1
        assert spent.prompt_tokens == len(raw) // CHARS_PER_TOKEN > 0
        assert spent.completion_tokens == len(relayed)
        assert spent.credits == pytest.approx(price(m, Tally(
            requests=1, prompt_tokens=len(raw) // CHARS_PER_TOKEN,
            completion_tokens=len(relayed))))
        assert svc.credits.held("key-a") == 0
        for _ in range(100):                         # the upstream request is closed too
            if fake_openai.disconnects:
                break
            await asyncio.sleep(0.02)
        assert fake_openai.disconnects
    run(tmp_path, fake_openai, scenario)


def test_closing_a_translated_stream_closes_and_books_the_chat_stream(tmp_path, fake_openai):
    fake_openai.stream_events = 40
    fake_openai.stream_delay = 0.02

    async def shout(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for frame in frames:
            yield frame.upper()

    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        body = chat_body(stream=True)
        translated = (await svc.chat.stream(m, body, orjson.dumps(body), "key-a")).through(
            shout)
        first = await anext(translated)
        assert first.startswith(b"DATA: {")
        await translated.aclose()
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.completion_tokens) == (1, 1)
        assert svc.credits.held("key-a") == 0
    run(tmp_path, fake_openai, scenario)


def test_a_stream_falls_back_before_its_first_frame(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        doomed = svc.catalog.resolve("doomed")
        body = {**chat_body(stream=True), "model": "doomed"}
        stream = await svc.chat.stream(doomed, body, None, "key-a")
        assert stream.served is svc.catalog.resolve("pricey")
        frames = await read_all(stream)
        assert all(data_of(f)["model"] == "doomed" for f in frames[:-1])
        assert svc.usage.spent_today("key-a").credits == pytest.approx(
            stream.served.credits.request)
    run(tmp_path, fake_openai, scenario)


async def die_mid_stream(svc: Services, fake, key: str) -> list[bytes]:
    """A stream whose upstream connection dies after 3 frames, read by ``key``: the frames
    relayed before the error."""
    fake.die_mid_stream_next(3)
    m = svc.catalog.resolve("gpt-5")
    stream = await svc.chat.stream(m, chat_body(stream=True), None, key)
    got: list[bytes] = []
    with pytest.raises(ApiError) as raised:
        async for frame in stream:
            got.append(frame)
    await stream.aclose()
    assert raised.value.status >= 500
    return got


def test_an_upstream_failure_mid_stream_is_booked_on_the_breaker(tmp_path, fake_openai):
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        breaker = svc.breakers.of(m)
        got = await die_mid_stream(svc, fake_openai, "key-a")
        assert len(got) == 3
        assert breaker.streak == 1 and breaker.callers == {"key-a"}
        spent = svc.usage.spent_today("key-a")         # ... and the usage up to there
        assert (spent.requests, spent.completion_tokens) == (1, len(got))
        assert svc.credits.held("key-a") == 0
    run(tmp_path, fake_openai, scenario)


def test_streams_that_keep_dying_mid_way_open_the_circuit(tmp_path, fake_openai):
    """Every stream of two callers in a row dies half-way: by resilience.py's rule
    (``failures`` consecutive failures from ``min_callers`` callers) the circuit opens,
    and the next request is refused without calling the provider."""
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        breaker = svc.breakers.of(m)
        await die_mid_stream(svc, fake_openai, "key-a")
        await die_mid_stream(svc, fake_openai, "key-b")
        assert breaker.state == OPEN, (
            f"two streams in a row died mid-way, from two callers, and the breaker is "
            f"{breaker.state} (streak {breaker.streak}): each stream's first frame was "
            f"booked as a success, which reset the streak the previous stream's failure began")
        asked = len(fake_openai.requests)
        with pytest.raises(ServiceUnavailable) as raised:
            await svc.chat.stream(m, chat_body(stream=True), None, "key-c")
        assert "Retry-After" in raised.value.headers
        assert len(fake_openai.requests) == asked     # the open circuit was not called
        assert svc.credits.held("key-c") == 0
    run(tmp_path, fake_openai, scenario, breaker_failures=2)


def test_an_upstream_error_frame_mid_stream_is_booked_on_the_breaker(tmp_path, fake_openai):
    """OpenAI reports a failure inside a started stream as a ``data: {"error": …}`` frame;
    that is as much the provider's failure as a dropped connection."""
    async def scenario(svc: Services) -> None:
        m = svc.catalog.resolve("gpt-5")
        fake_openai.error_mid_stream_next(3)
        stream = await svc.chat.stream(m, chat_body(stream=True), None, "key-a")
        with pytest.raises(UpstreamError):       # raised: the handler ends the client's
            await read_all(stream)               # stream with the gateway's error frame
        breaker = svc.breakers.of(m)
        assert breaker.streak == 1 and breaker.callers == {"key-a"}
    run(tmp_path, fake_openai, scenario)
