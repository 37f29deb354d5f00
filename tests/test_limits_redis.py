"""Limits in Redis (``rate_limit.backend: redis://…``): one GCRA script per request on
Redis's clock, shared by every gateway process; exact across gateways; the configured
answer while Redis is down (503 or a local share of each limit), counted, and recovery when
it returns.  Needs the real Redis of scripts/test-services (APIARIUM_TEST_REDIS_URL), and
``redis-server`` for the outage tests (each starts and kills its own)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from redis.asyncio import Redis

from apiarium.catalog import Credits, ModelSpec, ProviderSpec
from apiarium.config import load_config
from apiarium.config_limits import redis_url_problem
from apiarium.errors import LimiterUnavailable, QuotaExceeded, RateLimited
from apiarium.metrics import Metrics
from apiarium.services.credits_redis import RedisCredits
from apiarium.services.keys import IssuanceCaps
from apiarium.services.limits_redis import (
    RedisBackend,
    RedisLimits,
    SharedIssuance,
    bucket_key,
    spent_key,
)
from apiarium.storage import KeyRecord
from apiarium.usage import Tally, UsageLedger, today
from tests.conftest import openai_models
from tests.support import error_of, request

REDIS_URL = os.environ.get("APIARIUM_TEST_REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason=(
    "APIARIUM_TEST_REDIS_URL is not set: scripts/test (or scripts/test-services COMMAND) "
    "starts a throwaway Redis and sets it"))
needs_redis_server = pytest.mark.skipif(not shutil.which("redis-server"), reason=(
    "redis-server is not installed (scripts/test installs Debian's redis-server)"))
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}


def settings(tmp_path: Path, **rate_limit):
    (tmp_path / "apiarium.yaml").write_text(yaml.safe_dump(
        {"database": "db.sqlite3", "rate_limit": {"backend": REDIS_URL, **rate_limit}}))
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"providers": {}, "models": {}}))
    return load_config(tmp_path / "apiarium.yaml").settings


def key(name: str, rpm: int | None = None) -> KeyRecord:
    return KeyRecord(1, f"{name}-{time.time_ns()}", "api-ab", "192.0.2.1", 0, 0, rpm)


def on_redis(make, test):
    """Run ``test(make(backend), backend)`` on a fresh loop with a backend of its own (its
    own client), closed however the test ends."""
    async def go():
        backend = RedisBackend(REDIS_URL, Metrics())
        try:
            return await test(make(backend), backend)
        finally:
            await backend.close()
    return asyncio.run(go())


def run(test):
    """Run ``test(limits, backend)``: the Redis limiter."""
    return on_redis(lambda b: RedisLimits(b, UsageLedger("unused.sqlite3"), b.metrics), test)


# --------------------------------------------------------------------------- the script

@needs_redis
def test_gcra_admits_the_limit_then_answers_the_exact_wait(tmp_path):
    s, rec = settings(tmp_path, rpm=3), key("gcra")

    async def test(lim, backend):
        heads = [await lim.admit(rec, "chat", s) for _ in range(3)]
        assert [h["x-ratelimit-remaining-requests"] for h in heads] == ["2", "1", "0"]
        assert all(h["x-ratelimit-limit-requests"] == "3" for h in heads)
        with pytest.raises(RateLimited) as exc:
            await lim.admit(rec, "chat", s)
        h = exc.value.headers
        wait_ms = int(h["retry-after-ms"])                     # a token every 20 s
        assert 19_000 < wait_ms <= 20_000 and h["Retry-After"] == str(math.ceil(wait_ms / 1000))
        assert "3 requests per minute" in exc.value.message
        assert h["x-ratelimit-remaining-requests"] == "0"
        # the bucket is one Redis key that vanishes once it would be full again
        ttl = await backend.client.pttl(bucket_key(rec.key_hash, "rpm"))
        assert 59_000 < ttl <= 60_000
        assert await lim.admit(key("other"), "chat", s)        # another key: its own bucket
        return wait_ms
    run(test)


@needs_redis
def test_an_endpoint_bucket_frees_exactly_when_it_says(tmp_path):
    s, rec = settings(tmp_path, rpm=1000, endpoints={"chat": "4/second"}), key("ep")

    async def test(lim, backend):
        async def redis_ms() -> float:                        # the clock the script reads
            sec, usec = await backend.client.time()
            return sec * 1000 + usec / 1000

        for _ in range(4):
            await lim.admit(rec, "chat", s)
        before = await redis_ms()
        with pytest.raises(RateLimited) as exc:
            await lim.admit(rec, "chat", s)
        after = await redis_ms()
        wait_ms = int(exc.value.headers["retry-after-ms"])
        assert 0 < wait_ms <= 250 and "4 chat requests per second" in exc.value.message
        # due at the refusal's time (between before and after) plus the wait (rounded up to
        # a whole ms): each try is judged by when Redis ran it, bracketed the same way, so a
        # late wake-up (a busy machine) cannot make a right answer look wrong
        earliest, latest = before + wait_ms - 1, after + wait_ms
        await asyncio.sleep((wait_ms - 30) / 1000)            # shortly before it is due
        while True:
            sent = await redis_ms()
            try:
                await lim.admit(rec, "chat", s)
            except RateLimited:
                assert sent < latest, (sent, latest)          # refused only before it is due
                await asyncio.sleep(0.01)
                continue
            assert await redis_ms() >= earliest               # admitted only once it is due
            break
    run(test)


@needs_redis
def test_a_refusal_by_the_endpoint_spends_nothing_of_the_key(tmp_path):
    s, rec = settings(tmp_path, rpm=5, endpoints={"chat": "1/minute"}), key("spend")

    async def test(lim, backend):
        await lim.admit(rec, "chat", s)
        for _ in range(3):
            with pytest.raises(RateLimited):
                await lim.admit(rec, "chat", s)
        other = await lim.admit(rec, "embeddings", s)
        assert other["x-ratelimit-remaining-requests"] == "3"      # 5 - chat - this one
    run(test)


@needs_redis
def test_daily_credits_are_checked_in_the_same_script(tmp_path):
    s, rec = settings(tmp_path, rpm=100, daily_credits=5), key("daily")

    async def test(lim, backend):
        await lim.admit(rec, "chat", s)                      # no counter yet: this process's 0
        await backend.client.set(spent_key(rec.key_hash, today()), "5")   # spent by other processes
        with pytest.raises(QuotaExceeded) as exc:
            await lim.admit(rec, "chat", s)
        assert exc.value.code == "insufficient_quota" and "midnight UTC" in exc.value.message
    run(test)


@needs_redis
def test_take_shares_the_endpoint_bucket_admit_takes_from(tmp_path):
    """A Responses request with an image_generation tool takes from the key's images bucket
    alone (issue 22): the bucket /v1/images/generations is admitted from; rpm is untouched."""
    s, rec = settings(tmp_path, rpm=3, endpoints={"images": "2/hour"}), key("take")

    async def test(lim, backend):
        await lim.take(rec, "images", s)
        head = await lim.admit(rec, "images", s)
        assert head["x-ratelimit-remaining-requests"] == "2"       # only admit took from rpm
        with pytest.raises(RateLimited) as exc:
            await lim.take(rec, "images", s)
        assert "2 images requests per hour" in exc.value.message
        await lim.take(rec, "chat", s)                             # no chat limit: nothing
    run(test)


@needs_redis
def test_a_dead_redis_url_fails_closed_fast_and_counts_it(tmp_path):
    s = settings(tmp_path, rpm=4)

    async def go(dead: str):
        backend = RedisBackend(dead, Metrics())
        lim = RedisLimits(backend, UsageLedger("unused.sqlite3"), backend.metrics)
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(LimiterUnavailable) as exc:
                await lim.admit(key("dead"), "chat", s)
        assert time.monotonic() - started < 1.0       # one failed try, then the circuit
        assert exc.value.status == 503 and exc.value.code == "rate_limiter_unavailable"
        assert backend.metrics.limiter_errors.labels().value == 1
        assert backend.metrics.limiter_fallback.labels("closed").value == 20
        assert backend.state == "down"
        await backend.close()
    with refused_port() as port:
        asyncio.run(go(f"redis://127.0.0.1:{port}/0"))


def test_backend_urls_are_checked(tmp_path):
    assert redis_url_problem("redis://127.0.0.1:6379/0") is None
    assert redis_url_problem("rediss://:secret@cache.example:6380") is None
    assert "redis://" in redis_url_problem("http://127.0.0.1:6379")
    assert "database number" in redis_url_problem("redis://h:1/x")
    assert "no host" in redis_url_problem("redis:///0")
    (tmp_path / "apiarium.yaml").write_text(yaml.safe_dump({"rate_limit": {
        "backend": "redis://:hunter2@h:99999/0", "on_backend_down": "open"}}))
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"providers": {}, "models": {}}))
    with pytest.raises(Exception) as exc:
        load_config(tmp_path / "apiarium.yaml")
    text = str(exc.value)
    assert "rate_limit.backend" in text and "on_backend_down" in text
    assert "hunter2" not in text


# --------------------------------------------------------------------------- gateways

@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses every connection while the block runs: bound, never
    listening (a port found free and let go could be someone's by the time it is dialled)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def gateways(make_gateway, fake_openai, tmp_path: Path, n: int, database: str | None = None,
             **rate_limit) -> list:
    """``n`` in-process gateways on one database (one key secret) and one Redis; the test
    key is issued by the first (the others read it when they open the database)."""
    shared = {"database": database or str(tmp_path / "shared" / "apiarium.sqlite3"),
              "secret_file": str(tmp_path / "shared" / "apiarium.secret"),
              "rate_limit": {"rpm": 4, "backend": REDIS_URL, **rate_limit}}
    first = make_gateway(openai_models(fake_openai), **shared)
    first.key = first.key_for()
    rest = [make_gateway(openai_models(fake_openai), **shared) for _ in range(n - 1)]
    return [first, *rest]


async def burst(urls: list[str], key: str, count: int, path: str = "/v1/chat/completions",
                body: dict = CHAT) -> list[tuple[int, dict, dict]]:
    """``count`` requests at once, spread round-robin over ``urls``."""
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> tuple[int, dict, dict]:
            async with http.post(urls[i % len(urls)] + path, json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
                return (resp.status, {k.lower(): v for k, v in resp.headers.items()},
                        await resp.json())
        return await asyncio.gather(*(one(i) for i in range(count)))


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_database(request) -> str | None:
    """None: one SQLite file; else a new database on the test PostgreSQL (set up before the
    gateways, so that it outlives them)."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


@needs_redis
def test_forty_requests_over_three_gateways_let_exactly_four_through(shared_database,
                                                                      make_gateway, fake_openai,
                                                                      tmp_path):
    """Three gateways on different ports, sharing Redis and one database (SQLite, or the
    PostgreSQL server as gateways on several hosts share it)."""
    gws = gateways(make_gateway, fake_openai, tmp_path, 3, shared_database)
    assert len({g.url for g in gws}) == 3
    for gw in gws:       # each knows the key (read from the database) before the burst
        assert gw.get("/v1/models", key=gws[0].key)[0] == 200
    started = time.monotonic()
    answers = asyncio.run(burst([g.url for g in gws], gws[0].key, 40))
    took = time.monotonic() - started
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == 4 and statuses.count(429) == 36, statuses
    # the four came from one bucket, whichever gateway served them
    assert sorted(h["x-ratelimit-remaining-requests"] for s, h, _ in answers if s == 200) == \
        ["0", "1", "2", "3"]
    # GCRA at 4 a minute: a token every 15 s from the first admission, which happened
    # during the burst, so the true wait of each refusal lies in [15 - took, 15] s
    for status, h, body in answers:
        if status != 429:
            continue
        exact = int(h["retry-after-ms"]) / 1000
        assert 15 - took - 0.01 <= exact <= 15, (exact, took)
        assert int(h["retry-after"]) == math.ceil(exact)          # within 1 s of it
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert h["x-ratelimit-limit-requests"] == "4"


@needs_redis
def test_an_endpoint_limit_is_shared_too(make_gateway, fake_openai, tmp_path):
    gws = gateways(make_gateway, fake_openai, tmp_path, 2, rpm=1000,
                   endpoints={"chat": "3/minute"})
    answers = asyncio.run(burst([g.url for g in gws], gws[0].key, 12))
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == 3 and statuses.count(429) == 9, statuses
    refused = [(h, b) for s, h, b in answers if s == 429]
    assert all("3 chat requests per minute" in b["error"]["message"] for _, b in refused)
    assert all(19 <= int(h["retry-after"]) <= 20 for h, _ in refused)


# --------------------------------------------------------------------------- outages

def _port_free_now() -> int:
    """A port free at this moment (only for a server that cannot take a bound socket and
    says when the port was taken meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnRedis:
    """A redis-server of the test's own, killed and started again on the port of its first
    start (``url``).  redis-server cannot be handed a bound socket, so the first start takes
    a port that was free and tries another when redis-server finds it taken; a start again
    must have that port, and waits for it while another program holds it."""

    def __init__(self, tmp_path: Path) -> None:
        self.port, self.dir, self.proc = 0, tmp_path, None

    @property
    def url(self) -> str:
        assert self.port, "start() first"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str, timeout: float = 20.0) -> OwnRedis:
        deadline = time.monotonic() + timeout
        while True:
            port = self.port or _port_free_now()
            proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), *extra],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            said = []
            for line in proc.stdout:                      # the event: it says it is ready
                if "Ready to accept connections" in line:
                    self.proc, self.port = proc, port
                    return self
                said.append(line)
            proc.wait(timeout=10)
            proc.stdout.close()
            if "Address already in use" not in "".join(said) or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n" + "".join(said))
            if self.port:                                 # its port, held by someone else
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path).start()
    yield server
    server.kill()


def metric(gw, name: str) -> float:
    _, _, body = request(gw.url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def until(check, timeout: float = 10.0):
    """Call ``check`` until it returns something true (each call is a real request)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@needs_redis_server
def test_redis_down_fails_closed_with_503_then_recovers(make_gateway, fake_openai, own_redis):
    gw = make_gateway(openai_models(fake_openai),
                      rate_limit={"rpm": 4, "backend": own_redis.url})
    key, other = gw.key_for(), gw.key_for("127.0.0.2")
    assert gw.post("/v1/chat/completions", CHAT, key=key)[0] == 200
    # another client sends requests all along: before, during and after the outage
    seen: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            seen.append(gw.post("/v1/chat/completions", CHAT, key=other, ip="127.0.0.2")[0])
    thread = threading.Thread(target=hammer)
    thread.start()
    own_redis.kill()
    for _ in range(6):
        status, headers, body = gw.post("/v1/chat/completions", CHAT, key=key)
        assert status == 503, body
        err = error_of(body)
        assert err["code"] == "rate_limiter_unavailable" and err["type"] == "server_error"
        assert "Retry" in err["message"] and int(headers["retry-after"]) >= 1
    status, _, body = gw.post("/v1/messages", {"model": "gpt-5", "max_tokens": 5,
                                               "messages": [{"role": "user", "content": "x"}]},
                              key=key)
    body = json.loads(body)               # Anthropic's envelope: its 503 is 529 overloaded
    assert status == 529 and body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error" and "limits" in body["error"]["message"]
    status, _, body = gw.get("/v1/keys/me", ip="127.0.0.3")     # a visit that may issue
    assert status == 503 and error_of(body)["code"] == "rate_limiter_unavailable"
    status, headers, body = gw.get("/", ip="127.0.0.3")           # the homepage: a page
    assert status == 503 and headers["content-type"].startswith("text/html")
    assert metric(gw, "apiarium_limiter_fallback_total") >= 7
    assert metric(gw, "apiarium_limiter_backend_errors_total") >= 1
    assert json.loads(gw.get("/health")[2])["backends"]["limiter"] == {"engine": "redis",
                                                                       "state": "down"}
    own_redis.start()                                   # the same port, an empty Redis
    recovered = until(lambda: (s := gw.post("/v1/chat/completions", CHAT, key=key)[0]) != 503
                      and s)
    assert recovered == 200
    assert json.loads(gw.get("/health")[2])["backends"]["limiter"]["state"] == "ok"
    stop.set()
    thread.join(timeout=30)
    assert 503 in seen and set(seen) <= {200, 429, 503}, sorted(set(seen))    # never a 500
    assert all("Traceback" not in line for line in gw.log)


@needs_redis_server
def test_a_frozen_redis_costs_one_timeout_not_one_per_request(make_gateway, fake_openai,
                                                              own_redis):
    gw = make_gateway(openai_models(fake_openai),
                      rate_limit={"rpm": 1000, "backend": own_redis.url})
    key = gw.key_for()
    assert gw.post("/v1/chat/completions", CHAT, key=key)[0] == 200
    own_redis.proc.send_signal(signal.SIGSTOP)          # up, connected, and silent
    try:
        took = []
        for _ in range(5):
            started = time.monotonic()
            status, _, body = gw.post("/v1/chat/completions", CHAT, key=key)
            took.append(time.monotonic() - started)
            assert status == 503 and error_of(body)["code"] == "rate_limiter_unavailable"
        assert 0.2 <= took[0] < 1.0                     # the 250 ms read timeout, once
        # then the circuit answers at once (but for a probe a second, on a slow machine)
        assert sum(t >= 0.2 for t in took[1:]) <= 1, took
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    assert until(lambda: gw.post("/v1/chat/completions", CHAT, key=key)[0] == 200)


@needs_redis_server
def test_redis_down_with_local_fallback_gives_each_gateway_its_share(make_gateway, fake_openai,
                                                                     tmp_path, own_redis):
    shared = {"database": str(tmp_path / "shared" / "apiarium.sqlite3"),
              "rate_limit": {"rpm": 4, "backend": own_redis.url, "on_backend_down": "local",
                             "instances": 2}}
    first = make_gateway(openai_models(fake_openai), **shared)
    key = first.key_for()
    second = make_gateway(openai_models(fake_openai), **shared)
    own_redis.kill()
    answers = asyncio.run(burst([first.url, second.url], key, 20))
    statuses = [a[0] for a in answers]
    # ceil(4 / 2) = 2 per gateway: the two together never exceed the limit
    assert statuses.count(200) == 4 and statuses.count(429) == 16, statuses
    assert {h["x-ratelimit-limit-requests"] for s, h, _ in answers} == {"2"}
    for gw in (first, second):
        assert metric(gw, 'apiarium_limiter_fallback_total{mode="local"}') == 10
    own_redis.start()
    # back on the shared bucket (an empty Redis: a full one), whose limit is 4 again
    recovered = until(lambda: (r := first.post("/v1/chat/completions", CHAT, key=key))[0] == 200
                      and r[1]["x-ratelimit-limit-requests"] == "4")
    assert recovered


# --------------------------------------------------------------------------- credits

# a model whose every request costs one credit, and nothing per token
ONE_CREDIT = ModelSpec("m", ProviderSpec("p", "openai", "", ""), "m",
                       credits=Credits(request=1.0, per_1k_tokens=0))


def credits_run(test, usage=None):
    """Run ``test(book, backend)``: the Redis credit book (over ``usage``'s ledger)."""
    return on_redis(lambda b: RedisCredits(b, usage or UsageLedger("unused.sqlite3"),
                                           b.metrics, lambda: None), test)


@needs_redis
def test_reservations_are_atomic_and_settle_what_was_booked():
    key_hash = f"credits-{time.time_ns()}"

    async def test(book, backend):
        holds = await asyncio.gather(*(book.take(key_hash, 1.0, 3) for _ in range(8)),
                                     return_exceptions=True)
        taken = [h for h in holds if not isinstance(h, BaseException)]
        assert len(taken) == 3
        assert all(isinstance(h, QuotaExceeded) for h in holds if h not in taken)
        assert "0 of its 3 daily credits left" in next(
            h for h in holds if h not in taken).message
        # one request ends: its 1 credit booked, its hold dropped, in one script
        book.usage.record(key_hash, ONE_CREDIT, Tally(requests=1, credits=0))
        taken[0].release()
        await book.flush()
        spent_key = bucket_key(key_hash, f"spent:{today()}")
        assert float(await backend.client.get(spent_key)) == 1.0
        assert await backend.client.hlen(bucket_key(key_hash, "held")) == 2
        with pytest.raises(QuotaExceeded):               # 1 spent + 2 held + 1 > 3
            await book.take(key_hash, 1.0, 3)
        # a hold left by a process that died expires
        await backend.client.hset(bucket_key(key_hash, "held"), "dead", "1.0:1")
        await backend.client.hdel(bucket_key(key_hash, "held"), taken[1].ident)
        assert await book.take(key_hash, 1.0, 3)
        assert not await backend.client.hexists(bucket_key(key_hash, "held"), "dead")
    credits_run(test)


@needs_redis
def test_far_from_the_limit_an_ended_hold_rides_on_the_next_reservation():
    key_hash = f"ride-{time.time_ns()}"

    async def test(book, backend):
        held, spent = bucket_key(key_hash, "held"), bucket_key(key_hash, f"spent:{today()}")
        first = await book.take(key_hash, 2.0, 100)
        book.usage.record(key_hash, ONE_CREDIT, Tally(requests=1))
        first.release()                                    # no round trip of its own...
        await asyncio.sleep(0)
        assert await backend.client.hget(held, first.ident) is not None
        second = await book.take(key_hash, 2.0, 100)        # ...it rides on this one
        assert await backend.client.hkeys(held) == [second.ident.encode()]
        assert float(await backend.client.get(spent)) == 1.0
        second.release()
        await book.flush()                                  # or on the flush
        assert await backend.client.hlen(held) == 0
    credits_run(test)


@needs_redis
def test_holds_in_flight_are_capped_in_the_same_script():
    key_hash = f"cap-{time.time_ns()}"

    async def test(book, backend):
        held = bucket_key(key_hash, "held")
        # no daily limit, a cap of 2: eight at once get exactly two holds
        holds = await asyncio.gather(*(book.take(key_hash, 0.0, 0, 2) for _ in range(8)),
                                     return_exceptions=True)
        taken = [h for h in holds if not isinstance(h, BaseException)]
        assert len(taken) == 2 and await backend.client.hlen(held) == 2
        refused = [h for h in holds if isinstance(h, BaseException)]
        assert all(isinstance(h, RateLimited) and h.code == "too_many_concurrent_requests"
                   and "2 requests in flight" in h.message for h in refused)
        taken[0].release()              # at the cap: the ended hold is dropped at once
        await book.flush()
        assert await backend.client.hlen(held) == 1
        again = await book.take(key_hash, 0.0, 0, 2)
        with pytest.raises(QuotaExceeded):                  # the credits are checked first
            await book.take(key_hash, 5.0, 1, 2)
        for hold in (taken[1], again):
            hold.release()
        await book.flush()
        assert await backend.client.hlen(held) == 0
    credits_run(test)


@needs_redis
def test_8_concurrent_requests_over_two_gateways_with_3_credits_left(make_gateway,
                                                                     fake_openai, tmp_path):
    models = openai_models(fake_openai, models={
        "flat": {"provider": "up", "credits": {"request": 1.0, "per_1k_tokens": 0}}})
    shared = {"database": str(tmp_path / "shared" / "apiarium.sqlite3"),
              "rate_limit": {"rpm": 1000, "daily_credits": 10, "backend": REDIS_URL}}
    first = make_gateway(models, **shared)
    key = first.key_for()
    second = make_gateway(models, **shared)
    gws, flat = [first, second], {**CHAT, "model": "flat"}
    for i in range(7):                                   # 7 of the 10 credits, on both
        assert gws[i % 2].post("/v1/chat/completions", flat, key=key)[0] == 200

    key_hash = first.app.services.keys.verify(key).key_hash
    assert wait_settled(key_hash, spent=7.0)             # the last release has landed
    for _ in range(8):
        fake_openai.hang_next(0.5)                       # all 8 in flight at once
    answers = asyncio.run(burst([g.url for g in gws], key, 8, body=flat))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200] * 3 + [429] * 5, statuses
    for status, _, body in answers:
        if status == 429:
            assert body["error"]["code"] == "insufficient_quota"
            assert "0 of its 10 daily credits left" in body["error"]["message"]
    assert wait_settled(key_hash, spent=10.0)            # booked, nothing held, never over
    for gw in gws:                                       # each tells every process's total
        me = json.loads(gw.get("/v1/keys/me")[2])
        assert me["credits"] == {"daily_limit": 10, "remaining": 0}


def wait_settled(key_hash: str, spent: float) -> bool:
    """Until the key holds nothing in Redis and its counter says ``spent``."""
    async def go() -> bool:
        client = Redis.from_url(REDIS_URL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                count = await client.get(bucket_key(key_hash, f"spent:{today()}"))
                if not await client.hlen(bucket_key(key_hash, "held")) and count and \
                        float(count) == spent:
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await client.aclose()
    return asyncio.run(go())


# --------------------------------------------------------------------------- issuance caps

@needs_redis
def test_issuance_caps_are_counted_once_across_processes():
    ident = f"2001:db8:{time.time_ns() % 65536:x}:1::/64"
    caps = IssuanceCaps(per_64=2, per_48=3, per_hour=0)

    async def test(check, backend):
        results = await asyncio.gather(*(check(ident, caps) for _ in range(5)),
                                       return_exceptions=True)
        assert results.count(None) == 2
        refusal = next(r for r in results if r is not None)
        assert isinstance(refusal, RateLimited) and "/64" in refusal.message
        assert 86_300 < refusal.retry_after <= 86_400
        # another /64 of the same /48: one more, then the /48 is full
        sibling = ident.replace(":1::/64", ":2::/64")
        await check(sibling, caps)
        with pytest.raises(RateLimited) as exc:
            await check(sibling, caps)
        assert "/48" in exc.value.message
    on_redis(lambda b: SharedIssuance(b, lambda: None, lambda ip, n: None), test)


@needs_redis
def test_two_gateways_issue_at_most_the_hourly_cap_together(make_gateway, fake_openai,
                                                            tmp_path):
    # a fresh Redis database of the server, so the gateway-wide hourly count starts at 0
    url = REDIS_URL.rsplit("/", 1)[0] + "/7"
    asyncio.run(flushdb(url))
    shared = {"database": str(tmp_path / "shared" / "apiarium.sqlite3"),
              "rate_limit": {"backend": url},
              "security": {"new_keys_per_hour": 3}}
    gws = [make_gateway(openai_models(fake_openai), **shared) for _ in range(2)]

    def ask(i: int) -> int:
        return request(gws[i % 2].url + "/v1/keys/me", ip=f"127.0.0.{10 + i}")[0]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(ask, range(10)))
    assert statuses.count(200) == 3 and statuses.count(429) == 7, statuses


@needs_redis
def test_key_visits_a_minute_are_shared_too(make_gateway, fake_openai, tmp_path):
    url = REDIS_URL.rsplit("/", 1)[0] + "/6"               # a fresh database of the server
    asyncio.run(flushdb(url))
    shared = {"database": str(tmp_path / "shared" / "apiarium.sqlite3"),
              "rate_limit": {"backend": url}, "security": {"key_requests_per_minute": 3}}
    gws = [make_gateway(openai_models(fake_openai), **shared) for _ in range(2)]

    def ask(i: int) -> tuple[int, dict, bytes]:
        return request(gws[i % 2].url + "/v1/keys/me", ip="127.0.0.50")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(ask, range(10)))
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == 3 and statuses.count(429) == 7, statuses
    assert len({json.loads(b)["key"] for s, _, b in answers if s == 200}) == 1
    waits = [int(h["retry-after"]) for s, h, _ in answers if s == 429]
    assert all(19 <= w <= 20 for w in waits), waits        # a visit back every 20 s


async def flushdb(url: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@needs_redis
@pytest.mark.subprocess_gateway("workers are processes")
def test_forty_requests_over_four_worker_processes_let_exactly_four_through(make_gateway,
                                                                             fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"workers": 4},
                      rate_limit={"rpm": 4, "backend": REDIS_URL})
    key = gw.key_for()

    async def go() -> tuple[list[int], set[int]]:
        # a new connection per request: the kernel spreads them over the workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h:
            async def chat() -> int:
                async with h.post(gw.url + "/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": f"Bearer {key}"}) as resp:
                    return resp.status

            async def pid() -> int:
                async with h.get(gw.url + "/health") as resp:
                    return (await resp.json())["workers"]["pid"]
            statuses = await asyncio.gather(*(chat() for _ in range(40)))
            pids = set(await asyncio.gather(*(pid() for _ in range(20))))
            return statuses, pids
    statuses, pids = asyncio.run(go())
    assert len(pids) >= 2                                  # several processes answered
    assert statuses.count(200) == 4 and statuses.count(429) == 36, statuses


def test_backend_timeout_ms_is_how_long_a_request_waits_for_a_silent_redis(make_gateway,
                                                                           fake_openai):
    """A Redis that accepts connections and never answers (a stalled server, a black-holed
    route): each request waits ``rate_limit.backend_timeout_ms`` for it, no more, then the
    configured answer (503); the next second's requests do not wait at all (the circuit)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        gw = make_gateway(openai_models(fake_openai), rate_limit={
            "rpm": 4, "backend": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            "backend_timeout_ms": 600})
        assert gw.app.services.settings.limiter_timeout_s == 0.6
        started = time.monotonic()                       # a new key's caps are counted there
        status, _, raw = request(gw.url + "/v1/keys/me")
        waited = time.monotonic() - started
        assert status == 503 and error_of(raw)["code"] == "rate_limiter_unavailable"
        assert 0.55 < waited < 3.0, waited               # the setting's 600 ms, not 250
        started = time.monotonic()
        assert request(gw.url + "/v1/keys/me")[0] == 503
        assert time.monotonic() - started < 0.3           # tried again only after a second
    finally:
        silent.close()
