"""Every request is charged for what the upstream did, and the hold bounds the bill (issue 22,
H2 and M1), against real gateways and the fakes on loopback.

H2: a client that hangs up before its answer (a whole answer, or a stream before its first
event) no longer gets the request free: the upstream call runs on and the usage the upstream
reports is booked (one upstream request, no retry); after a stream's first event the stream
is closed and what was relayed is booked; a call that fails after its client left, or that
shutdown cuts short, books its whole hold.

M1: a key's request without an output limit is sent the one its hold counts, in each
dialect's own field (the master key's body goes as sent), and a key has at most
``limits.max_concurrent_requests`` holds in flight, so concurrent unbounded chats never take
it past its daily credits, in one process or over two sharing Redis.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import aiohttp
import pytest

from apiarium.services.costs import CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS, LEGACY_OUTPUT_TOKENS
from apiarium.services.detached import Detached
from tests.support import MASTER_KEY, wait_for

REDIS_URL = os.environ.get("APIARIUM_TEST_REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason=(
    "APIARIUM_TEST_REDIS_URL is not set: scripts/test (or scripts/test-services COMMAND) "
    "starts a throwaway Redis and sets it"))

QUESTION = "tell me about bees"              # 4 words: the fakes' prompt tokens
ANSWER_WORDS = 5                             # "echo: tell me about bees"
CLAUDE_CAP = 8000
HANG_S = 0.8                                 # the fake answers this late: the client is gone
SETTINGS = {"rate_limit": {"rpm": 100_000}, "security": {"key_requests_per_minute": 0}}


def ip(n: int) -> str:
    return f"127.0.2.{n}"


def models(oa, an, gm) -> dict:
    per_1k = {"per_1k_tokens": 1.0}
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": oa.base_url, "api_key": oa.api_key,
                   "timeout_s": 5},
            "claude": {"kind": "anthropic", "base_url": an.base_url, "api_key": an.api_key,
                       "timeout_s": 5},
            "google": {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
                       "timeout_s": 5},
        },
        "models": {
            "gpt-5": {"provider": "up", "credits": per_1k},
            "claude-sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5",
                              "max_output_tokens": CLAUDE_CAP, "credits": per_1k},
            "gemini-flash": {"provider": "google", "upstream": "gemini-2.5-flash",
                             "credits": per_1k},
            "instruct": {"provider": "up", "upstream": "gpt-3.5-turbo-instruct",
                         "completions": "native", "credits": per_1k},
            "text-embedding-3-small": {"provider": "up", "type": "embedding"},
        },
    }


@pytest.fixture
def fakes(fake_openai, fake_anthropic, fake_gemini):
    return {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}


@pytest.fixture
def gw(make_gateway, fakes):
    return make_gateway(models(fakes["openai"], fakes["anthropic"], fakes["gemini"]),
                        **SETTINGS)


# --------------------------------------------------------------------------- a raw client

class Client:
    """One request on a socket of its own from ``addr``: the test decides when it hangs up."""

    def __init__(self, gw, addr: str, path: str, body: dict, key: str):
        data = json.dumps(body).encode()
        self.size = len(data)
        auth = (f"x-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"
                if path.startswith("/v1/messages") else f"Authorization: Bearer {key}\r\n")
        self.sock = socket.create_connection(("127.0.0.1", gw.port), source_address=(addr, 0))
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: "
                          f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                          + data)
        self.got = b""

    def read_until(self, marker: bytes) -> bytes:
        self.sock.settimeout(10)
        while marker not in self.got:
            chunk = self.sock.recv(65536)
            assert chunk, self.got
            self.got += chunk
        return self.got

    def hang_up(self) -> None:
        self.sock.close()


def usage(gw, addr: str) -> dict:
    status, _, body = gw.get("/v1/keys/me", ip=addr)
    assert status == 200, body
    return json.loads(body)["usage"]


def booked(gw, addr: str, requests: int = 1) -> dict:
    """The key's usage once ``requests`` are booked."""
    assert wait_for(lambda: usage(gw, addr)["requests"] >= requests, timeout=15,
                    interval=0.1), usage(gw, addr)
    return usage(gw, addr)


# --------------------------------------------------------------------------- H2: hanging up
# (path, model, body fields, the fake that answers, what it is asked for)
BEFORE_THE_ANSWER = {
    "chat": ("/v1/chat/completions", "gpt-5",
             {"messages": [{"role": "user", "content": QUESTION}]}, "openai"),
    "chat stream": ("/v1/chat/completions", "gpt-5",
                    {"stream": True, "messages": [{"role": "user", "content": QUESTION}]},
                    "openai"),
    "completions native": ("/v1/completions", "instruct", {"prompt": QUESTION}, "openai"),
    "responses translated": ("/v1/responses", "claude-sonnet", {"input": QUESTION},
                             "anthropic"),
    "responses translated stream": ("/v1/responses", "claude-sonnet",
                                    {"input": QUESTION, "stream": True}, "anthropic"),
    "responses native": ("/v1/responses", "gpt-5", {"input": QUESTION}, "openai"),
    "responses native stream": ("/v1/responses", "gpt-5", {"input": QUESTION, "stream": True},
                                "openai"),
    "messages translated": ("/v1/messages", "gpt-5", {
        "max_tokens": 100, "messages": [{"role": "user", "content": QUESTION}]}, "openai"),
    "messages translated stream": ("/v1/messages", "gpt-5", {
        "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": QUESTION}]}, "openai"),
    "messages native": ("/v1/messages", "claude-sonnet", {
        "max_tokens": 100, "messages": [{"role": "user", "content": QUESTION}]}, "anthropic"),
    "messages native stream": ("/v1/messages", "claude-sonnet", {
        "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": QUESTION}]}, "anthropic"),
    "embeddings": ("/v1/embeddings", "text-embedding-3-small", {"input": QUESTION}, "openai"),
}


@pytest.mark.parametrize("case", list(BEFORE_THE_ANSWER))
def test_hanging_up_before_the_answer_books_what_the_upstream_reports(gw, fakes, case):
    path, model, fields, upstream = BEFORE_THE_ANSWER[case]
    fake = fakes[upstream]
    fake.hang_next(HANG_S)
    addr = ip(10 + list(BEFORE_THE_ANSWER).index(case))
    client = Client(gw, addr, path, {"model": model, **fields}, gw.key_for(addr))
    assert wait_for(lambda: len(fake.requests) == 1, timeout=10)
    client.hang_up()                                 # the upstream has not answered yet
    # the gateway saw the client leave before its answer (499), and books all the same
    assert wait_for(lambda: any(f" POST {path} 499 " in line for line in gw.log),
                    timeout=10), gw.log[-5:]
    spent = booked(gw, addr)
    completion = 0 if path == "/v1/embeddings" else ANSWER_WORDS
    assert (spent["requests"], spent["prompt_tokens"], spent["completion_tokens"]) == \
        (1, len(QUESTION.split()), completion), spent       # the fake's own counts
    assert spent["credits"] > 0
    time.sleep(0.3)
    assert len(fake.requests) == 1                   # one upstream request, never retried
    assert usage(gw, addr)["requests"] == 1


AFTER_THE_FIRST_EVENT = {
    "chat": ("/v1/chat/completions", "gpt-5",
             {"stream": True, "messages": [{"role": "user", "content": QUESTION}]}, b"data: "),
    "responses native": ("/v1/responses", "gpt-5", {"input": QUESTION, "stream": True},
                         b"response.output_text.delta"),
    "messages native": ("/v1/messages", "claude-sonnet", {
        "max_tokens": 400, "stream": True,
        "messages": [{"role": "user", "content": QUESTION}]}, b"text_delta"),
}


@pytest.mark.parametrize("case", list(AFTER_THE_FIRST_EVENT))
def test_hanging_up_after_the_first_event_books_what_was_relayed(gw, fakes, case):
    path, model, fields, marker = AFTER_THE_FIRST_EVENT[case]
    fake = fakes["anthropic" if model == "claude-sonnet" else "openai"]
    fake.reply_text = " ".join(f"w{i}" for i in range(200))
    fake.stream_events, fake.stream_delay = 200, 0.02
    addr = ip(40 + list(AFTER_THE_FIRST_EVENT).index(case))
    client = Client(gw, addr, path, {"model": model, **fields}, gw.key_for(addr))
    client.read_until(marker)
    client.hang_up()                                 # mid-stream
    spent = booked(gw, addr)
    assert spent["requests"] == 1 and spent["credits"] > 0
    assert 1 <= spent["completion_tokens"] < 200     # what was relayed, not the whole answer
    assert wait_for(lambda: fake.disconnects, timeout=5)     # the upstream stream was closed
    assert len(fake.requests) == 1


def test_a_call_that_fails_after_its_client_left_books_the_whole_hold(make_gateway, fakes):
    m = models(fakes["openai"], fakes["anthropic"], fakes["gemini"])
    m["providers"]["up"]["timeout_s"] = 0.6          # the upstream never answers in time
    gw = make_gateway(m, **SETTINGS)
    fakes["openai"].hang_next(5)
    addr = ip(50)
    client = Client(gw, addr, "/v1/chat/completions",
                    {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]},
                    gw.key_for(addr))
    assert wait_for(lambda: len(fakes["openai"].requests) == 1, timeout=10)
    client.hang_up()
    spent = booked(gw, addr)                         # after the 504 nobody saw
    assert spent["prompt_tokens"] == client.size // CHARS_PER_TOKEN
    assert spent["completion_tokens"] == DEFAULT_OUTPUT_TOKENS       # the whole hold
    assert spent["credits"] == pytest.approx(
        (client.size // CHARS_PER_TOKEN + DEFAULT_OUTPUT_TOKENS) / 1000)
    assert len(fakes["openai"].requests) == 1


def test_shutdown_cuts_calls_short_promptly_and_books_their_whole_holds(make_gateway, fakes):
    gw = make_gateway(models(fakes["openai"], fakes["anthropic"], fakes["gemini"]),
                      **{**SETTINGS, "server": {"shutdown_grace_s": 0.5}})
    oa = fakes["openai"]
    oa.hang_next(30)
    oa.hang_next(30)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]}
    gone, waiting = ip(60), ip(61)
    left = Client(gw, gone, "/v1/chat/completions", body, gw.key_for(gone))
    stays = Client(gw, waiting, "/v1/chat/completions", body, gw.key_for(waiting))
    assert wait_for(lambda: len(oa.requests) == 2, timeout=10)
    left.hang_up()
    assert wait_for(lambda: any(" 499 " in line for line in gw.log), timeout=10)
    started = time.monotonic()
    gw.stop()
    assert time.monotonic() - started < 5            # the grace, then at once
    answer = stays.read_until(b"}}")
    assert b" 503 " in answer.split(b"\r\n", 1)[0] and b"server_shutting_down" in answer
    gw.start()                                       # the usage was written at shutdown
    for addr in (gone, waiting):
        spent = usage(gw, addr)
        assert (spent["requests"], spent["completion_tokens"]) == \
            (1, DEFAULT_OUTPUT_TOKENS), (addr, spent)
    assert len(oa.requests) == 2


def test_a_detached_call_is_kept_until_it_ends_and_close_cancels_the_rest():
    async def main() -> None:
        detached = Detached()
        told: list = []

        async def slow() -> str:
            await asyncio.sleep(10)
            return "late"
        waiter = asyncio.ensure_future(detached.run(slow(), told.append))
        await asyncio.sleep(0.01)
        waiter.cancel()                              # the client left
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert len(told) == 1 and not told[0].done() and detached.tasks == {told[0]}
        assert await detached.run(asyncio.sleep(0, "soon"), told.append) == "soon"

        async def failing() -> None:
            raise ValueError("upstream broke")
        with pytest.raises(ValueError):              # a caller still there gets the error
            await detached.run(failing(), told.append)
        await detached.close()                       # shutdown, after its grace
        assert told[0].cancelled() and not detached.tasks and len(told) == 1
    asyncio.run(main())


# --------------------------------------------------------------------------- M1: the bound

def test_the_reserved_bound_is_sent_upstream_in_each_dialects_field(gw, fakes):
    oa, an, gm = fakes["openai"], fakes["anthropic"], fakes["gemini"]
    addr = ip(70)
    key = gw.key_for(addr)
    chat = {"messages": [{"role": "user", "content": QUESTION}]}

    def sent(path: str, body: dict, fake) -> dict:
        status, _, raw = gw.post(path, body, key=key, ip=addr)
        assert status == 200, raw
        return fake.last().json

    assert sent("/v1/chat/completions", {"model": "gpt-5", **chat}, oa)[
        "max_completion_tokens"] == DEFAULT_OUTPUT_TOKENS
    assert sent("/v1/responses", {"model": "gpt-5", "input": QUESTION}, oa)[
        "max_output_tokens"] == DEFAULT_OUTPUT_TOKENS
    assert sent("/v1/completions", {"model": "instruct", "prompt": QUESTION}, oa)[
        "max_tokens"] == LEGACY_OUTPUT_TOKENS              # the legacy API's own default
    assert sent("/v1/chat/completions", {"model": "claude-sonnet", **chat}, an)[
        "max_tokens"] == CLAUDE_CAP                        # the model's max_output_tokens
    assert sent("/v1/messages", {"model": "claude-sonnet", **chat}, an)[
        "max_tokens"] == CLAUDE_CAP
    assert sent("/v1/chat/completions", {"model": "gemini-flash", **chat}, gm)[
        "generationConfig"]["maxOutputTokens"] == DEFAULT_OUTPUT_TOKENS
    # a limit the client set goes as it is, in its own field
    asked = sent("/v1/chat/completions", {"model": "gpt-5", "max_tokens": 50, **chat}, oa)
    assert asked["max_tokens"] == 50 and "max_completion_tokens" not in asked
    assert sent("/v1/responses", {"model": "gpt-5", "input": QUESTION,
                                  "max_output_tokens": 300}, oa)["max_output_tokens"] == 300
    # the master key is bound by nothing: its body goes byte for byte
    raw = json.dumps({"model": "gpt-5", **chat}).encode()
    assert gw.post("/v1/chat/completions", raw, key=MASTER_KEY)[0] == 200
    assert oa.last().body == raw


def test_n_answers_hold_n_times_the_bound(make_gateway, fakes):
    gw = make_gateway(models(fakes["openai"], fakes["anthropic"], fakes["gemini"]),
                      rate_limit={"rpm": 1000, "daily_credits": 6},
                      limits={"max_chat_choices": 2})
    addr = ip(71)
    key = gw.key_for(addr)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]}
    status, _, raw = gw.post("/v1/chat/completions", {**body, "n": 2}, key=key, ip=addr)
    err = json.loads(raw)["error"]
    assert status == 429 and err["code"] == "insufficient_quota"
    assert "may cost up to 8.2" in err["message"], err        # 2 x 4,096 tokens, and a prompt
    assert gw.post("/v1/chat/completions", body, key=key, ip=addr)[0] == 200
    assert fakes["openai"].last().json["max_completion_tokens"] == DEFAULT_OUTPUT_TOKENS


async def burst(urls: list[str], addr: str, key: str, count: int, body: dict
                ) -> list[tuple[int, dict]]:
    """``count`` chats at once from ``addr``, spread round-robin over ``urls``."""
    connector = aiohttp.TCPConnector(local_addr=(addr, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(i: int) -> tuple[int, dict]:
            async with http.post(urls[i % len(urls)] + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
                return resp.status, await resp.json()
        return await asyncio.gather(*(one(i) for i in range(count)))


LONG = " ".join(f"w{i}" for i in range(20_000))     # far more than any bound
DAILY = 20.0                                         # 4 holds of ~4.1 credits fit


def unbounded_burst(gws: list, fake, addr: str, count: int) -> list[tuple[int, dict]]:
    fake.reply_text, fake.obey_output_limit = LONG, True
    for _ in range(min(count, 4)):                   # those that fit reach the upstream,
        fake.hang_next(0.5)                          # all of them in flight at once
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]}
    return asyncio.run(burst([g.url for g in gws], addr, gws[0].key_for(addr), count, body))


def check_never_past_the_daily_credits(answers: list, fake, spent: float) -> None:
    statuses = sorted(status for status, _ in answers)
    fit = min(len(answers), 4)
    assert statuses == [200] * fit + [429] * (len(answers) - fit), statuses
    for status, body in answers:
        if status == 429:
            assert body["error"]["code"] == "insufficient_quota"
    assert len(fake.requests) == fit
    assert all(r.json["max_completion_tokens"] == DEFAULT_OUTPUT_TOKENS for r in fake.requests)
    assert DAILY - 4.2 < spent <= DAILY              # booked: the upstream stopped at the bound


@pytest.mark.parametrize("count", [4, 8])
def test_concurrent_unbounded_chats_never_take_a_key_past_its_daily_credits(
        make_gateway, fakes, count):
    gw = make_gateway(models(fakes["openai"], fakes["anthropic"], fakes["gemini"]),
                      rate_limit={"rpm": 1000, "daily_credits": DAILY})
    addr = ip(72 + count)
    answers = unbounded_burst([gw], fakes["openai"], addr, count)
    spent = booked(gw, addr, min(count, 4))["credits"]
    check_never_past_the_daily_credits(answers, fakes["openai"], spent)
    me = json.loads(gw.get("/v1/keys/me", ip=addr)[2])
    assert me["credits"]["remaining"] == pytest.approx(DAILY - spent, abs=1e-3)


def redis_gateways(make_gateway, fakes, tmp_path, addr: str, **limits) -> list:
    """Two gateways on one database and one Redis; the key is issued by the first."""
    shared = {"database": str(tmp_path / "shared" / "apiarium.sqlite3"),
              "secret_file": str(tmp_path / "shared" / "apiarium.secret"),
              "rate_limit": {"rpm": 1000, "backend": REDIS_URL, **limits.pop("rate_limit", {})},
              "security": {"key_requests_per_minute": 0}, **limits}
    m = models(fakes["openai"], fakes["anthropic"], fakes["gemini"])
    first = make_gateway(m, **shared)
    key = first.key_for(addr)
    second = make_gateway(m, **shared)
    assert second.get("/v1/models", key=key, ip=addr)[0] == 200    # it knows the key
    return [first, second]


@needs_redis
def test_over_two_gateways_sharing_redis_too(make_gateway, fakes, tmp_path):
    addr = ip(90)
    gws = redis_gateways(make_gateway, fakes, tmp_path, addr,
                         rate_limit={"daily_credits": DAILY})
    answers = unbounded_burst(gws, fakes["openai"], addr, 8)

    def total() -> float:
        return sum(usage(g, addr)["credits"] for g in gws)
    assert wait_for(lambda: sum(usage(g, addr)["requests"] for g in gws) == 4, timeout=15)
    check_never_past_the_daily_credits(answers, fakes["openai"], total())


# --------------------------------------------------------------------------- M1: the cap

def check_the_cap(answers: list, cap: int) -> None:
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * cap + [429] * (len(answers) - cap), statuses
    for status, body in answers:
        if status == 429:
            err = body["error"]
            assert err["code"] == "too_many_concurrent_requests"
            assert err["type"] == "rate_limit_error"
            assert f"This key has {cap} requests in flight" in err["message"]
            assert "limits.max_concurrent_requests" in err["message"]
            assert "Wait for one of them to finish" in err["message"]


def test_concurrent_holds_per_key_are_capped(make_gateway, fakes):
    gw = make_gateway(models(fakes["openai"], fakes["anthropic"], fakes["gemini"]),
                      **SETTINGS, limits={"max_concurrent_requests": 2})
    oa = fakes["openai"]
    addr = ip(91)
    key = gw.key_for(addr)
    for _ in range(2):                               # the two let through, in flight together
        oa.hang_next(0.5)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]}
    check_the_cap(asyncio.run(burst([gw.url], addr, key, 4, body)), 2)
    assert len(oa.requests) == 2
    # a call whose client hung up holds its place until it ends
    other = ip(92)
    other_key = gw.key_for(other)
    oa.hang_next(1.0)
    oa.hang_next(1.0)
    clients = [Client(gw, other, "/v1/chat/completions", body, other_key) for _ in range(2)]
    assert wait_for(lambda: len(oa.requests) == 4, timeout=10)
    for client in clients:
        client.hang_up()
    assert wait_for(lambda: sum(" 499 " in line for line in gw.log) == 2, timeout=10)
    status, headers, raw = gw.post("/v1/chat/completions", body, key=other_key, ip=other)
    assert status == 429 and json.loads(raw)["error"]["code"] == "too_many_concurrent_requests"
    assert headers["retry-after"] == "1"
    booked(gw, other, 2)                             # both ran on and were booked
    assert gw.post("/v1/chat/completions", body, key=other_key, ip=other)[0] == 200


@needs_redis
def test_the_cap_holds_over_two_gateways_sharing_redis(make_gateway, fakes, tmp_path):
    addr = ip(93)
    gws = redis_gateways(make_gateway, fakes, tmp_path, addr,
                         limits={"max_concurrent_requests": 2})
    for _ in range(2):
        fakes["openai"].hang_next(0.5)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": QUESTION}]}
    check_the_cap(asyncio.run(burst([g.url for g in gws], addr, gws[0].key_for(addr), 6,
                                    body)), 2)
    assert len(fakes["openai"].requests) == 2
