"""A request the gateway could not serve through no fault of the caller (issue 23, item 5):
no provider key, an open circuit, a shutdown.  It costs the key nothing: its token comes back
to the request bucket, no credits are booked; and every answer the limits touch says what is
left of the key's credits (``x-ratelimit-remaining-credits``)."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of, wait_for

REDIS_URL = os.environ.get("APIARIUM_TEST_REDIS_URL", "")
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def usage(gw, ip: str) -> dict:
    return json.loads(gw.get("/v1/keys/me", ip=ip)[2])


def backends() -> list:
    return ["memory", pytest.param("redis", marks=pytest.mark.skipif(
        not REDIS_URL, reason="APIARIUM_TEST_REDIS_URL is not set: scripts/test (or "
        "scripts/test-services COMMAND) starts a Redis"))]


def limits(backend: str) -> dict:
    if backend == "memory":
        return {"rpm": 4, "daily_credits": 200}
    # each gateway has its own secret, so its keys' hashes (the Redis keys) are its own
    return {"rpm": 4, "daily_credits": 200, "backend": REDIS_URL}


@pytest.mark.parametrize("backend", backends())
def test_five_unconfigured_503s_leave_the_key_untouched(make_gateway, fake_openai, backend):
    gw = make_gateway(openai_models(fake_openai), rate_limit=limits(backend))
    ip = "127.0.12.10" if backend == "memory" else "127.0.12.11"
    key = gw.key_for(ip)
    for _ in range(5):
        status, _, body = gw.post("/v1/chat/completions", {"model": "nokey-model", **CHAT},
                                  key, ip=ip)
        assert status == 503 and error_of(body)["code"] == "provider_not_configured"
    status, headers, _ = gw.post("/v1/chat/completions", {"model": "gpt-5", **CHAT}, key,
                                 ip=ip)
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "3", headers
    assert headers["x-ratelimit-limit-credits"] == "200"
    assert 199 < float(headers["x-ratelimit-remaining-credits"]) <= 200
    me = usage(gw, ip)
    assert me["usage"]["requests"] == 1                  # the answered one alone
    assert wait_for(lambda: usage(gw, ip)["credits"]["remaining"] < 200)


def test_an_open_circuit_is_not_counted_either(make_gateway, fake_openai):
    models = openai_models(fake_openai, providers={
        "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-x",
                 "connect_timeout_s": 2, "breaker_failures": 2, "breaker_cooldown_s": 60}})
    gw = make_gateway(models)
    for _ in range(2):             # the operator's own failures open it (trusted caller)
        status, _, _ = gw.post("/v1/chat/completions", {"model": "dead-model", **CHAT},
                               MASTER_KEY)
        assert status == 502
    ip = "127.0.12.20"
    key = gw.key_for(ip)
    for _ in range(6):
        status, headers, body = gw.post("/v1/chat/completions",
                                        {"model": "dead-model", **CHAT}, key, ip=ip)
        err = error_of(body)
        assert status == 503 and err["code"] == "upstream_cooling_down", body
        assert "not counted" in err["message"] and int(headers["retry-after"]) > 0
    status, headers, _ = gw.post("/v1/chat/completions", {"model": "gpt-5", **CHAT}, key,
                                 ip=ip)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "3"


def test_a_callers_own_fault_still_counts(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai))
    ip = "127.0.12.30"
    key = gw.key_for(ip)
    status, _, _ = gw.post("/v1/chat/completions", {"model": "no-such-model", **CHAT}, key,
                           ip=ip)
    assert status == 404
    status, headers, _ = gw.post("/v1/chat/completions", {"model": "gpt-5", **CHAT}, key,
                                 ip=ip)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "2"
