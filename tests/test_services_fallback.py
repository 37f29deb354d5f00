"""services/fallback.py: ``first_success`` over a real Catalog and ``Breakers``, with calls
that fail with the real error classes of apiarium.errors (no network: the "upstream" is the
call itself)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from apiarium.catalog import Catalog, ModelSpec, ProviderSpec
from apiarium.errors import (
    ApiError,
    AuthError,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamPassthrough,
    UpstreamTimeout,
)
from apiarium.resilience import CLOSED, HALF_OPEN, OPEN
from apiarium.services.fallback import MAX_COOL_S, BreakerKey, Breakers, first_success

FAILURES = 2            # a streak that opens a circuit (from two callers at least)
COOLDOWN = 30.0


def provider(name: str, failures: int = FAILURES, cooldown: float = COOLDOWN) -> ProviderSpec:
    return ProviderSpec(name=name, kind="openai", base_url=f"http://{name}.invalid/v1",
                        api_key="k", breaker_failures=failures, breaker_cooldown_s=cooldown)


def catalog(cooldown: float = COOLDOWN, failures: int = FAILURES) -> Catalog:
    """main (on provider a) falls back to spare (b), then third (c); alone (a) has none."""
    provs = {n: provider(n, failures, cooldown) for n in "abc"}
    models = {
        "main": ModelSpec("main", provs["a"], "up-main", fallbacks=("spare", "third")),
        "spare": ModelSpec("spare", provs["b"], "up-spare"),
        "third": ModelSpec("third", provs["c"], "up-third"),
        "alone": ModelSpec("alone", provs["a"], "up-alone"),
    }
    return Catalog(provs, models)


class Upstreams:
    """The ``call`` handed to first_success: per provider, either an error to raise or an
    answer; records every (alias it was called under, provider, upstream id)."""

    def __init__(self, **behaviour: ApiError | None):
        self.behaviour = behaviour
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, m: ModelSpec) -> str:
        self.calls.append((m.alias, m.provider.name, m.upstream))
        outcome = self.behaviour.get(m.provider.name)
        if isinstance(outcome, ApiError):
            raise outcome
        return f"answer from {m.provider.name}"

    @property
    def providers(self) -> list[str]:
        return [p for _, p, _ in self.calls]


def run(cat: Catalog, breakers: Breakers, alias: str, call: Callable, caller: str | None):
    return asyncio.run(first_success(cat, breakers, cat.resolve(alias), call, caller))


def upstream_429() -> RateLimited:
    return RateLimited("the upstream is rate limiting", code="upstream_rate_limited",
                       retry_after=3)


MOVING_ON = {
    "502 unreachable": lambda: UpstreamError("refused", code="upstream_unreachable"),
    "502 upstream error": lambda: UpstreamError("HTTP 500"),
    "504 timeout": lambda: UpstreamTimeout("silent"),
    "503 overloaded": lambda: ServiceUnavailable("overloaded"),
    "upstream out of quota": lambda: RateLimited("out of credit", code="upstream_rate_limited",
                                                 headers={"x-should-retry": "false"}),
}

STAYING = {
    "400 invalid request": lambda: InvalidRequest("bad field", param="temperature"),
    "4xx passthrough": lambda: UpstreamPassthrough("upstream says no", status=422),
    "404 upstream model": lambda: NotFound("no such upstream model", code="model_not_found"),
    "the gateway's own 429": lambda: RateLimited("slow down", retry_after=1),
    "quota": lambda: QuotaExceeded("out of credits"),
    "401": lambda: AuthError("who are you"),
}


def test_the_model_itself_serves_when_it_answers():
    cat, breakers, up = catalog(), Breakers(), Upstreams()
    result, served = run(cat, breakers, "main", up, "k1")
    assert result == "answer from a"
    assert served is cat.models["main"]
    assert up.calls == [("main", "a", "up-main")]
    assert breakers.of(cat.models["main"]).state == CLOSED


@pytest.mark.parametrize("make_error", MOVING_ON.values(), ids=MOVING_ON.keys())
def test_a_provider_failure_moves_on_and_the_fallback_answers_as_asked(make_error):
    cat, breakers = catalog(), Breakers()
    up = Upstreams(a=make_error())
    result, served = run(cat, breakers, "main", up, "k1")
    assert result == "answer from b"
    # the fallback is called under the alias the client asked for, with its own upstream id
    assert up.calls == [("main", "a", "up-main"), ("main", "b", "up-spare")]
    # ... and the caller learns which model served (x-apiarium-model names it)
    assert served is cat.models["spare"]
    assert breakers.of(cat.models["main"]).streak == 1          # booked against a
    assert breakers.of(cat.models["spare"]).streak == 0


@pytest.mark.parametrize("make_error", STAYING.values(), ids=STAYING.keys())
def test_a_failure_about_the_request_is_raised_at_once(make_error):
    cat, breakers = catalog(), Breakers()
    err = make_error()
    up = Upstreams(a=err)
    with pytest.raises(ApiError) as raised:
        run(cat, breakers, "main", up, "k1")
    assert raised.value is err
    assert up.providers == ["a"]                   # no fallback tried
    assert breakers.of(cat.models["main"]).streak == 0


def test_a_request_error_does_not_count_and_an_answer_ends_a_streak():
    cat, breakers = catalog(), Breakers()
    a = breakers.of(cat.models["main"])
    run(cat, breakers, "main", Upstreams(a=UpstreamError("down")), "k1")
    assert a.streak == 1
    with pytest.raises(InvalidRequest):
        run(cat, breakers, "main", Upstreams(a=InvalidRequest("bad")), "k2")
    assert a.streak == 0 and a.state == CLOSED      # the provider answered: it is up


def test_an_unconfigured_provider_moves_on_without_counting_against_it():
    cat, breakers = catalog(), Breakers()
    missing = ServiceUnavailable("no key", code="provider_not_configured")
    for caller in ("k1", "k2", "k3", None):
        up = Upstreams(a=missing)
        assert run(cat, breakers, "main", up, caller)[0] == "answer from b"
        assert up.providers == ["a", "b"]
    a = breakers.of(cat.models["main"])
    assert a.state == CLOSED and a.streak == 0


def test_when_every_candidate_fails_the_last_failure_is_raised():
    cat, breakers = catalog(), Breakers()
    last = ServiceUnavailable("c is overloaded")
    up = Upstreams(a=UpstreamError("a down"), b=UpstreamTimeout("b silent"), c=last)
    with pytest.raises(ServiceUnavailable) as raised:
        run(cat, breakers, "main", up, "k1")
    assert raised.value is last
    assert up.calls == [("main", "a", "up-main"), ("main", "b", "up-spare"),
                        ("main", "c", "up-third")]


def test_a_model_without_fallbacks_raises_its_own_failure():
    cat, breakers = catalog(), Breakers()
    err = UpstreamTimeout("silent")
    up = Upstreams(a=err)
    with pytest.raises(UpstreamTimeout) as raised:
        run(cat, breakers, "alone", up, "k1")
    assert raised.value is err and up.providers == ["a"]


def open_a(cat: Catalog, breakers: Breakers, callers=("k1", "k2"), alias: str = "main") -> None:
    """Open the breaker of ``alias``'s upstream model on provider a."""
    for caller in callers:
        with contextlib.suppress(UpstreamError):
            run(cat, breakers, alias, Upstreams(a=UpstreamError("down")), caller)
    assert breakers.of(cat.models[alias]).state == OPEN


def test_an_open_circuit_is_skipped_without_a_call():
    cat, breakers = catalog(), Breakers()
    open_a(cat, breakers)
    up = Upstreams()                        # a would answer now: it is not asked
    result, served = run(cat, breakers, "main", up, "k3")
    assert result == "answer from b" and served is cat.models["spare"]
    assert up.providers == ["b"]


def test_with_every_circuit_open_the_first_refusal_is_raised_with_retry_after():
    cat, breakers = catalog(), Breakers()
    open_a(cat, breakers, alias="alone")
    up = Upstreams()
    with pytest.raises(ServiceUnavailable) as raised:
        run(cat, breakers, "alone", up, "k3")
    assert up.calls == []
    err = raised.value
    assert err.status == 503 and "`a`" in err.message and "`alone`" in err.message
    assert err.headers["Retry-After"] == str(round(COOLDOWN))


def test_a_real_failure_after_a_skipped_circuit_is_what_is_raised():
    cat, breakers = catalog(), Breakers()
    open_a(cat, breakers)
    b_down = UpstreamError("b down")
    up = Upstreams(b=b_down, c=UpstreamTimeout("c silent"))
    with pytest.raises(UpstreamTimeout):
        run(cat, breakers, "main", up, "k3")
    assert up.providers == ["b", "c"]


def test_one_caller_alone_cannot_open_a_circuit():
    cat, breakers = catalog(), Breakers()
    a = breakers.of(cat.models["main"])
    for _ in range(10):
        up = Upstreams(a=UpstreamError("down"))
        run(cat, breakers, "main", up, "attacker")
        assert up.providers == ["a", "b"]           # a is still tried every time
    assert a.state == CLOSED and a.streak == 10
    run(cat, breakers, "main", Upstreams(a=UpstreamError("down")), "victim")
    assert a.state == OPEN                          # a second caller confirms it


@pytest.mark.parametrize("callers", [(None, None), (None, "k1"), ("k1", None)],
                         ids=["master twice", "master then a key", "a key then master"])
def test_the_master_key_is_trusted_each_failure_counts_as_another_caller(callers):
    cat, breakers = catalog(), Breakers()
    open_a(cat, breakers, callers)


def test_breaker_failures_0_never_opens():
    cat, breakers = catalog(failures=0), Breakers()
    for caller in ("k1", "k2", "k3", None, "k4"):
        up = Upstreams(a=UpstreamError("down"))
        run(cat, breakers, "main", up, caller)
        assert up.providers == ["a", "b"]
    assert breakers.of(cat.models["main"]).state == CLOSED


def test_the_probe_is_never_a_caller_that_just_failed():
    cooldown = 0.15
    cat, breakers = catalog(cooldown=cooldown), Breakers()
    open_a(cat, breakers)                           # by k1 and k2
    a = breakers.of(cat.models["main"])

    async def after_the_cooldown():
        await asyncio.sleep(cooldown + 0.05)
        for caller in ("k1", "k2"):                 # half-open, but not for them
            up = Upstreams()
            _, served = await first_success(cat, breakers, cat.models["main"], up, caller)
            assert up.providers == ["b"] and served is cat.models["spare"], caller
        assert a.state == HALF_OPEN

        # k3 is the probe; while it is in flight nobody else reaches a
        release = asyncio.Event()
        probe_calls: list[str] = []

        async def slow_a(m: ModelSpec) -> str:
            probe_calls.append(m.provider.name)
            if m.provider.name == "a":
                await release.wait()
            return f"answer from {m.provider.name}"
        probe = asyncio.ensure_future(first_success(cat, breakers, cat.models["main"],
                                                    slow_a, "k3"))
        await asyncio.sleep(0)
        assert probe_calls == ["a"]
        other = Upstreams()
        await first_success(cat, breakers, cat.models["main"], other, "k4")
        assert other.providers == ["b"]             # one probe at a time
        release.set()
        assert (await probe)[0] == "answer from a"
        assert a.state == CLOSED
        back = Upstreams()                          # closed again: k1 reaches a too
        await first_success(cat, breakers, cat.models["main"], back, "k1")
        assert back.providers == ["a"]
    asyncio.run(after_the_cooldown())


def test_a_failed_probe_opens_the_circuit_again():
    cooldown = 0.1
    cat, breakers = catalog(cooldown=cooldown), Breakers()
    open_a(cat, breakers)
    a = breakers.of(cat.models["main"])

    async def probe_fails():
        await asyncio.sleep(cooldown + 0.05)
        up = Upstreams(a=UpstreamTimeout("still silent"))
        await first_success(cat, breakers, cat.models["main"], up, "k3")
        assert up.providers == ["a", "b"]
        assert a.state == OPEN                      # one failed probe is enough
        again = Upstreams()
        await first_success(cat, breakers, cat.models["main"], again, "k4")
        assert again.providers == ["b"]
    asyncio.run(probe_fails())


def on(name: str, upstream: str = "up", failures: int = FAILURES,
       cooldown: float = COOLDOWN) -> ModelSpec:
    """A model on provider ``name`` (its breaker settings as given)."""
    return ModelSpec(f"{name}-{upstream}", provider(name, failures, cooldown), upstream)


def test_breakers_are_kept_per_provider_and_model_and_rebuilt_when_their_settings_change():
    breakers = Breakers()
    a = breakers.of(on("a"))
    assert breakers.of(on("a")) is a                        # a reload with the same settings
    assert breakers.of(on("b")) is not a
    assert breakers.of(on("a", "other-model")) is not a     # one breaker per upstream model
    assert BreakerKey.of(on("a")) == BreakerKey("a", "up")
    a.failure("k1")
    changed = breakers.of(on("a", failures=5))
    assert changed is not a and changed.failures == 5 and changed.streak == 0
    assert breakers.of(on("a", failures=5, cooldown=9)).cooldown_s == 9


# ---------------------------------------------------------------------- per upstream model

def test_a_run_of_failures_opens_the_breaker_of_that_model_only():
    cat, breakers = catalog(), Breakers()
    open_a(cat, breakers)                           # main's upstream model on a
    up = Upstreams()
    assert run(cat, breakers, "alone", up, "k3")[0] == "answer from a"
    assert up.calls == [("alone", "a", "up-alone")]    # the same provider's other model
    assert breakers.of(cat.models["alone"]).state == CLOSED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_upstream_rate_limit_cools_only_its_model_and_opens_nothing():
    clock = Clock()
    cat, breakers = catalog(), Breakers(clock)
    for caller in ("k1", "k2", None, "k3"):         # more than enough to open a breaker
        up = Upstreams(a=upstream_429())            # retry in 3 s
        assert run(cat, breakers, "main", up, caller)[0] == "answer from b"
        clock.now += 0.5
    main = breakers.of(cat.models["main"])
    assert main.state == CLOSED and main.streak == 0
    # cooling: main goes straight to its fallback, without calling a
    up = Upstreams()
    assert run(cat, breakers, "main", up, "k4")[0] == "answer from b"
    assert up.providers == ["b"]
    # ... and a's other model is not cooled
    up = Upstreams()
    assert run(cat, breakers, "alone", up, "k4")[0] == "answer from a"
    assert up.calls == [("alone", "a", "up-alone")]
    # 3 s after the last 429, a is asked again
    clock.now += 2.6
    up = Upstreams()
    assert run(cat, breakers, "main", up, "k4")[0] == "answer from a"


def test_a_cooling_model_without_fallbacks_answers_429_with_the_rest_of_the_wait():
    clock = Clock()
    cat, breakers = catalog(), Breakers(clock)
    with pytest.raises(RateLimited):
        run(cat, breakers, "alone", Upstreams(a=RateLimited(
            "slow down", code="upstream_rate_limited", retry_after=20)), "k1")
    clock.now += 5.5
    up = Upstreams()
    with pytest.raises(RateLimited) as raised:
        run(cat, breakers, "alone", up, "k2")
    assert up.calls == []
    err = raised.value
    assert (err.status, err.code) == (429, "upstream_rate_limited")
    assert err.headers["Retry-After"] == "15" and "`a`" in err.message
    assert "`alone`" in err.message and "retry in 15 s" in err.message


def test_a_cool_down_is_bounded_and_needs_a_wait_from_the_upstream():
    clock = Clock()
    cat, breakers = catalog(), Breakers(clock)
    alone = cat.models["alone"]
    breakers.book(alone, RateLimited("no hint", code="upstream_rate_limited"), "k1")
    assert breakers.cooling(alone) == 0             # no Retry-After: nothing to wait for
    breakers.book(alone, RateLimited("a day", code="upstream_rate_limited",
                                     retry_after=86400), "k1")
    assert breakers.cooling(alone) == MAX_COOL_S
    clock.now += MAX_COOL_S
    assert breakers.cooling(alone) == 0


def test_breaker_failures_0_never_cools_either():
    cat, breakers = catalog(failures=0), Breakers(Clock())
    for caller in ("k1", "k2"):
        up = Upstreams(a=upstream_429())
        run(cat, breakers, "main", up, caller)
        assert up.providers == ["a", "b"]               # asked every time
    assert breakers.cooling(cat.models["main"]) == 0


def test_a_rate_limited_probe_closes_the_half_open_breaker():
    """A 429 is an answer: the provider is up.  (Left half-open with its probe taken, the
    breaker would refuse every request after it.)"""
    clock = Clock()
    cat, breakers = catalog(), Breakers(clock)
    open_a(cat, breakers)
    clock.now += COOLDOWN
    main = breakers.of(cat.models["main"])
    assert main.allow("k3") and main.state == HALF_OPEN
    breakers.book(cat.models["main"], upstream_429(), "k3")
    assert main.state == CLOSED
