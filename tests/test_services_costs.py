"""services/costs.py: the caps on a request's size (``n``, output tokens), the most a chat
may cost, and the ``CreditBook`` that holds what requests in flight may still spend; then
the acceptance case of issues 13/17: one key, 3 credits left, 8 requests at once: exactly
the affordable ones reach the upstream."""
from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from apiarium.catalog import Credits, ModelSpec, ProviderSpec
from apiarium.errors import InvalidRequest, QuotaExceeded, RateLimited
from apiarium.services.costs import (
    CHARS_PER_TOKEN,
    DEFAULT_OUTPUT_TOKENS,
    LEGACY_OUTPUT_TOKENS,
    OUTPUT_FIELDS,
    CreditBook,
    chat_estimate,
    chat_output_bound,
    check_images_n,
    output_limit,
    upstream_limit,
)
from apiarium.usage import Tally, UsageLedger
from tests.inprocess import InProcess, write_config

PROVIDER = ProviderSpec(name="p", kind="openai", base_url="http://p.invalid/v1", api_key="k")


def model(cap: int = 0, request: float = 0.0, per_1k: float = 0.0) -> ModelSpec:
    return ModelSpec("m", PROVIDER, "up-m", max_output_tokens=cap,
                     credits=Credits(request=request, per_1k_tokens=per_1k))


# ---------------------------------------------------------------------- chat_output_bound

def test_without_fields_the_bound_is_the_models_cap_or_the_default():
    assert chat_output_bound({}, model(cap=700), 1) == 700
    assert chat_output_bound({}, model(), 1) == DEFAULT_OUTPUT_TOKENS
    assert chat_output_bound({"max_tokens": None}, model(cap=700), 1) == 700


@pytest.mark.parametrize("field", OUTPUT_FIELDS)
def test_each_output_field_is_checked_against_the_models_cap(field):
    m = model(cap=500)
    assert chat_output_bound({field: 500}, m, 1) == 500          # at the cap: fine
    assert chat_output_bound({field: 20}, m, 1) == 20
    with pytest.raises(InvalidRequest) as raised:
        chat_output_bound({field: 501}, m, 1)
    err = raised.value
    assert err.status == 400 and err.param == field
    assert f"`{field}`" in err.message and "500" in err.message and "`m`" in err.message


def test_a_model_without_a_cap_takes_any_output_size():
    assert chat_output_bound({"max_tokens": 10**7}, model(), 1) == 10**7


def test_the_largest_output_field_given_bounds_the_answer():
    body = {"max_tokens": 30, "max_completion_tokens": 90, "max_output_tokens": 60}
    assert chat_output_bound(body, model(cap=100), 1) == 90
    # any one field over the cap is refused, naming that field
    with pytest.raises(InvalidRequest) as raised:
        chat_output_bound({"max_tokens": 30, "max_output_tokens": 101}, model(cap=100), 1)
    assert raised.value.param == "max_output_tokens"


@pytest.mark.parametrize("value", [True, False, 0, -1, 1.5, "100", [100], {}])
@pytest.mark.parametrize("field", ["n", *OUTPUT_FIELDS])
def test_a_field_that_is_not_a_positive_whole_number_is_refused(field, value):
    with pytest.raises(InvalidRequest) as raised:
        chat_output_bound({field: value}, model(cap=100), 4)
    assert raised.value.param == field and raised.value.status == 400


def test_n_is_capped_and_multiplies_the_bound():
    m = model(cap=200)
    assert chat_output_bound({"n": 3, "max_tokens": 50}, m, 3) == 150
    assert chat_output_bound({"n": 3}, m, 3) == 600
    with pytest.raises(InvalidRequest) as raised:
        chat_output_bound({"n": 4, "max_tokens": 50}, m, 3)
    assert raised.value.param == "n" and "3" in raised.value.message


def test_legacy_best_of_counts_like_n_and_a_default_yields_to_a_smaller_cap():
    m = model(cap=200)
    assert output_limit({"best_of": 3, "n": 2, "max_tokens": 50}, m, 3) == (50, 3, True)
    with pytest.raises(InvalidRequest) as raised:
        output_limit({"best_of": 4}, m, 3)
    assert raised.value.param == "best_of"
    assert output_limit({}, model(), 1, LEGACY_OUTPUT_TOKENS) == \
        (LEGACY_OUTPUT_TOKENS, 1, False)
    assert output_limit({}, model(cap=10), 1, LEGACY_OUTPUT_TOKENS) == (10, 1, False)
    assert output_limit({"max_tokens": None}, m, 1) == (200, 1, False)


def test_the_upstream_limit_counts_an_anthropic_thinking_budget():
    claude = ModelSpec("c", ProviderSpec("a", "anthropic", "http://a.invalid", "k"),
                       "claude-sonnet-4-5")
    thinking = {"reasoning_effort": "high"}
    assert upstream_limit(claude, thinking, 4096) == 24576 + 4096     # raised above it
    assert upstream_limit(claude, {}, 4096) == 4096
    assert upstream_limit(model(), thinking, 4096) == 4096          # OpenAI: inside the limit


def test_check_images_n():
    check_images_n(4, 4)
    with pytest.raises(InvalidRequest) as raised:
        check_images_n(5, 4)
    assert raised.value.param == "n" and raised.value.status == 400


def test_chat_estimate_prices_the_whole_body_as_prompt_and_every_output_token():
    m = model(request=0.5, per_1k=2.0)
    size, out = 4000, 250
    expected = 0.5 + 2.0 * (size / CHARS_PER_TOKEN + out) / 1000
    assert chat_estimate(m, size, out) == pytest.approx(expected)
    assert chat_estimate(model(), size, out) == 0.0
    assert chat_estimate(m, size + 1000, out) > chat_estimate(m, size, out)


# ---------------------------------------------------------------------- CreditBook

@pytest.fixture
def ledger(tmp_path):
    """A real ledger on SQLite (opened and closed on a loop of its own)."""
    usage = asyncio.run(UsageLedger(tmp_path / "usage.sqlite3").open())
    yield usage
    asyncio.run(usage.close())


def spend(usage: UsageLedger, key: str, amount: float) -> None:
    usage.record(key, model(request=amount), Tally(requests=1))


def test_reservations_are_held_until_released(ledger):
    book = CreditBook(ledger)
    first = book.reserve("k", 2.5, 10)
    second = book.reserve("k", 1.0, 10)
    assert book.held("k") == pytest.approx(3.5) and book.held("other") == 0
    first.release()
    assert book.held("k") == pytest.approx(1.0)
    first.release()                                    # a second release changes nothing
    assert book.held("k") == pytest.approx(1.0)
    second.release()
    assert book.held("k") == 0


def test_a_request_that_would_pass_the_limit_is_refused_and_holds_nothing(ledger):
    book = CreditBook(ledger)
    spend(ledger, "k", 6.0)
    held = book.reserve("k", 3.0, 10)                  # 6 + 3 = 9 <= 10
    with pytest.raises(QuotaExceeded) as raised:
        book.reserve("k", 1.5, 10)                     # 6 + 3 + 1.5 > 10
    err = raised.value
    assert err.status == 429 and err.code == "insufficient_quota"
    assert err.headers.get("x-should-retry") == "false"
    assert "1 of its 10 daily credits left" in err.message
    assert book.held("k") == pytest.approx(3.0)
    exact = book.reserve("k", 1.0, 10)                 # exactly the limit: allowed
    exact.release()
    held.release()
    book.reserve("k", 4.0, 10).release()               # what was held is free again
    assert book.held("k") == 0


def test_other_keys_are_not_touched_by_one_keys_spending(ledger):
    book = CreditBook(ledger)
    spend(ledger, "spender", 10.0)
    with pytest.raises(QuotaExceeded):
        book.reserve("spender", 0.01, 10)
    book.reserve("thrifty", 10.0, 10).release()


def test_the_master_key_and_limit_0_bypass_the_book(ledger):
    book = CreditBook(ledger)
    spend(ledger, "k", 1e6)
    unlimited = book.reserve("k", 1e9, 0)               # 0: no daily limit
    master = book.reserve(None, 1e9, 10)
    assert unlimited.amount == 0 and master.amount == 0
    assert book.held("k") == 0
    unlimited.release()
    master.release()


def test_holds_in_flight_are_capped_per_key_and_each_release_frees_a_place(ledger):
    book = CreditBook(ledger)
    first = book.reserve("k", 0.0, 0, at_once=2)        # counted with no daily limit too
    second = book.reserve("k", 1.0, 10, at_once=2)
    assert book.in_flight("k") == 2
    with pytest.raises(RateLimited) as raised:
        book.reserve("k", 1.0, 10, at_once=2)
    err = raised.value
    assert err.status == 429 and err.code == "too_many_concurrent_requests"
    assert "2 requests in flight" in err.message and err.headers["Retry-After"] == "1"
    book.reserve("other", 1.0, 10, at_once=2).release()    # per key
    first.release()
    first.release()                                      # a second release frees nothing
    assert book.in_flight("k") == 1 and book.held("k") == pytest.approx(1.0)
    third = book.reserve("k", 1.0, 10, at_once=2)
    second.release()
    third.release()
    assert book.in_flight("k") == 0 and book.held("k") == 0
    assert book.reserve("k", 1.0, 10).amount == 1.0      # 0: no cap


# ---------------------------------------------------------------------- the acceptance case

LIMIT = 10.0
REQUEST_PRICE = 0.25          # per request
PER_1K = 2.0                  # per 1000 prompt + completion tokens
MAX_TOKENS = 150
CONCURRENT = 8
HANG_S = 0.6                  # the upstream is slow: all requests are in flight at once


def priced_models(fake) -> dict:
    return {"providers": {"up": {"kind": "openai", "base_url": fake.base_url,
                                 "api_key": fake.api_key}},
            "models": {
                "priced": {"provider": "up", "max_output_tokens": 1000,
                           "credits": {"request": REQUEST_PRICE, "per_1k_tokens": PER_1K}},
                "flat": {"provider": "up", "credits": {"request": 1.0, "per_1k_tokens": 0}}}}


@pytest.fixture
def app(io_loop, tmp_path, fake_openai):
    env = InProcess(write_config(tmp_path, priced_models(fake_openai),
                                 rate_limit={"rpm": 100, "daily_credits": LIMIT},
                                 limits={"max_concurrent_requests": 0}))   # credits alone
    io_loop.run_sync(env.open)
    yield env.app()
    io_loop.run_sync(env.close)


@pytest.mark.gen_test(timeout=20)
async def test_8_concurrent_requests_with_3_credits_left_exactly_the_affordable_pass(
        app, http_client, base_url, fake_openai):
    svc = app.settings["services"]
    me = json.loads((await http_client.fetch(base_url + "/v1/keys/me")).body)
    key_hash = svc.keys.verify(me["key"]).key_hash
    # the key has spent all but 3 credits today (7 requests on a model at 1 credit each)
    flat = svc.catalog.resolve("flat")
    svc.usage.record(key_hash, flat, Tally(requests=round((LIMIT - 3) / flat.credits.request)))
    left = LIMIT - svc.usage.spent_today(key_hash).credits
    assert left == pytest.approx(3.0)

    body = json.dumps({"model": "priced", "max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": "What is the capital of France? Answer in a word."}]})
    # the most one request can cost, from the configured prices: the whole body as prompt
    worst = REQUEST_PRICE + PER_1K * (len(body.encode()) // CHARS_PER_TOKEN + MAX_TOKENS) / 1000
    affordable = math.floor(left / worst + 1e-9)
    assert 0 < affordable < CONCURRENT, "the prices must make some, not all, affordable"

    for _ in range(CONCURRENT):
        fake_openai.hang_next(HANG_S)
    started = time.monotonic()
    answers = await asyncio.gather(*(
        http_client.fetch(base_url + "/v1/chat/completions", method="POST", body=body,
                          headers={"Authorization": f"Bearer {me['key']}",
                                   "Content-Type": "application/json"},
                          raise_error=False, request_timeout=10)
        for _ in range(CONCURRENT)))
    codes = sorted(a.code for a in answers)
    assert codes == [200] * affordable + [429] * (CONCURRENT - affordable), codes
    for refused in (a for a in answers if a.code == 429):
        err = json.loads(refused.body)["error"]
        assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
        assert refused.request_time < HANG_S        # refused at once, not after the others
    # exactly the affordable ones reached the upstream, all of them in flight together
    arrived = [r.at for r in fake_openai.requests]
    assert len(arrived) == affordable
    assert max(arrived) - min(arrived) < HANG_S
    assert time.monotonic() - started >= HANG_S

    # settled: the real costs booked, nothing held any more, and never over the limit
    assert svc.credits.held(key_hash) == 0
    spent = svc.usage.spent_today(key_hash)
    assert spent.requests == round((LIMIT - 3) / flat.credits.request) + affordable
    assert LIMIT - 3 < spent.credits <= LIMIT


@pytest.mark.gen_test(timeout=20)
async def test_an_open_stream_holds_its_credits_until_it_is_closed(app, fake_openai):
    svc = app.settings["services"]
    chat = svc.chat
    m = svc.catalog.resolve("priced")
    body = {"model": "priced", "max_tokens": MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "count to ten"}]}
    raw = json.dumps(body).encode()
    worst = chat_estimate(m, len(raw), MAX_TOKENS)
    fits = math.floor(LIMIT / worst + 1e-9)
    assert 1 < fits < 20

    fake_openai.stream_delay = 0.05
    streams = [await chat.stream(m, body, raw, "streamer") for _ in range(fits)]
    assert svc.credits.held("streamer") == pytest.approx(worst * fits)
    with pytest.raises(QuotaExceeded):
        await chat.stream(m, body, raw, "streamer")
    for _ in range(2):
        await streams.pop().aclose()
    assert svc.credits.held("streamer") == pytest.approx(worst * (fits - 2))
    # the closed streams' costs are booked, far less than they held: a new one fits again
    spent = svc.usage.spent_today("streamer")
    assert spent.requests == 2 and 0 < spent.credits < 2 * worst
    assert LIMIT - spent.credits - svc.credits.held("streamer") >= worst
    streams.append(await chat.stream(m, body, raw, "streamer"))
    for s in streams:
        await s.aclose()
    assert svc.credits.held("streamer") == 0
    assert svc.usage.spent_today("streamer").requests == fits + 1      # every one booked
