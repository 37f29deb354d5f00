"""Abuse-proof breakers (issue 13): one key's prompts that make no image cannot switch the
image provider off for everyone; real 5xx from two keys do open it."""
from __future__ import annotations

import json

from tests.conftest import openai_models
from tests.support import error_of


def gateway_with_gemini_images(make_gateway, fake_openai, fake_gemini):
    models = openai_models(fake_openai, providers={
        "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key, "breaker_failures": 3,
                   "breaker_cooldown_s": 30}},
        models={"gemini-3-image": {"provider": "google", "type": "image",
                                   "upstream": "gemini-3-pro-image-preview"},
                "gemini-2.5-pro": {"provider": "google"}})
    return make_gateway(models, rate_limit={"rpm": 100, "endpoints": {"images": "off"}})


def draw(gw, key: str, ip: str) -> tuple[int, dict]:
    status, _, body = gw.post("/v1/images/generations", {"model": "gemini-3-image",
                                                         "prompt": "a fox"}, key=key, ip=ip)
    return status, json.loads(body)


def test_no_image_answers_are_the_requests_own_failure(make_gateway, fake_openai, fake_gemini):
    gw = gateway_with_gemini_images(make_gateway, fake_openai, fake_gemini)
    attacker = gw.key_for("127.0.0.41")
    fake_gemini.image_in_words = True
    for _ in range(6):                        # twice the breaker's threshold
        status, body = draw(gw, attacker, "127.0.0.41")
        assert status == 400, body
        assert body["error"]["code"] == "upstream_no_output" and body["error"]["param"] == \
            "prompt"
    # everyone else still reaches the provider: the breaker stayed closed
    fake_gemini.image_in_words = False
    victim = gw.key_for("127.0.0.42")
    status, body = draw(gw, victim, "127.0.0.42")
    assert status == 200 and body["data"][0]["url"]


def test_real_5xx_from_two_keys_open_the_breaker(make_gateway, fake_openai, fake_gemini):
    from tests.fakes.gemini import google_error
    gw = gateway_with_gemini_images(make_gateway, fake_openai, fake_gemini)
    one, two = gw.key_for("127.0.0.43"), gw.key_for("127.0.0.44")
    chat = {"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "hi"}]}
    boom = google_error(500, "INTERNAL", "boom")
    for _ in range(3):                       # one key alone, three failures: still closed
        fake_gemini.fail_next(500, boom)
        assert gw.post("/v1/chat/completions", chat, key=one, ip="127.0.0.43")[0] == 502
    assert gw.post("/v1/chat/completions", chat, key=one, ip="127.0.0.43")[0] == 200
    for key, ip in ((one, "127.0.0.43"), (two, "127.0.0.44"), (one, "127.0.0.43")):
        fake_gemini.fail_next(500, boom)
        assert gw.post("/v1/chat/completions", chat, key=key, ip=ip)[0] == 502
    seen = len(fake_gemini.requests)
    status, headers, body = gw.post("/v1/chat/completions", chat, key=two, ip="127.0.0.44")
    assert status == 503 and "skipped" in error_of(body)["message"]
    assert int(headers["retry-after"]) >= 1
    assert len(fake_gemini.requests) == seen           # open: the provider was not called
