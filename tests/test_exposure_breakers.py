"""Abuse-proof breakers (issue 13): one key's prompts that make no image cannot switch the
image provider off for everyone; real 5xx from two keys do open it.  Breakers per (provider,
upstream model) (issue 22, M4): an image model's rate limit cools that model alone, and
opens no breaker; a 5xx run opens the breaker of that model only."""
from __future__ import annotations

import json

from tests.conftest import openai_models
from tests.fakes import openai_error
from tests.support import error_of, wait_for


def gateway_with_gemini_images(make_gateway, fake_openai, fake_gemini):
    models = openai_models(fake_openai, providers={
        "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key, "breaker_failures": 3,
                   "breaker_cooldown_s": 30}},
        models={"gemini-3-image": {"provider": "google", "type": "image",
                                   "upstream": "gemini-3-pro-image-preview"},
                "gemini-2.5-pro": {"provider": "google"}})
    return make_gateway(models, rate_limit={"rpm": 100, "endpoints": {"images": "off"}})


def draw(gw, key: str, ip: str, model: str = "gemini-3-image") -> tuple[int, dict]:
    status, _, raw = gw.post("/v1/images/generations", {"model": model, "prompt": "a fox"},
                             key=key, ip=ip)
    return status, json.loads(raw)


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


# ------------------------------------------------- M4: breakers per (provider, upstream model)

OPENAI_IPM = ("Rate limit reached for gpt-image-1 in organization org-Zx8Qm2LkP4vT on images per "
              "minute (IPM): Limit 5, Used 5, Requested 1. Please try again in 2s. Visit "
              "https://platform.openai.com/account/rate-limits to learn more.")
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "text-embedding-3-small", "input": "a bee"}
IMAGE = {"model": "gpt-image-1", "prompt": "a fox"}


def one_openai_provider(make_gateway, fake_openai):
    """gpt-5, gpt-image-1 and an embedding model on one provider (``up``), whose breaker
    opens after 3 failures from 2 keys and stays open 30 s."""
    models = openai_models(fake_openai, models={
        "text-embedding-3-small": {"provider": "up", "type": "embedding"}})
    models["providers"]["up"].update(breaker_failures=3, breaker_cooldown_s=30)
    return make_gateway(models, rate_limit={"rpm": 100, "endpoints": {"images": "off"}})


def images_asked(fake_openai) -> int:
    return sum(1 for r in fake_openai.requests if r.path.endswith("/images/generations"))


def the_others_are_served(gw, keys: dict[str, str]) -> None:
    for ip, key in keys.items():
        status, headers, raw = gw.post("/v1/chat/completions", CHAT, key=key, ip=ip)
        assert status == 200 and headers["x-apiarium-model"] == "gpt-5", raw
        status, _, raw = gw.post("/v1/embeddings", EMBED, key=key, ip=ip)
        assert status == 200 and json.loads(raw)["data"][0]["embedding"], raw


def test_an_image_models_rate_limit_leaves_the_providers_other_models_served(
        make_gateway, fake_openai):
    gw = one_openai_provider(make_gateway, fake_openai)
    keys = {ip: gw.key_for(ip) for ip in ("127.0.5.1", "127.0.5.2")}
    (ip1, key1), (ip2, key2) = keys.items()
    fake_openai.fail_next(429, openai_error(OPENAI_IPM, "requests", "rate_limit_exceeded"),
                          {"retry-after": "2"}, path_contains="/images/")
    status, headers, raw = gw.post("/v1/images/generations", IMAGE, key=key1, ip=ip1)
    assert status == 429 and headers["retry-after"] == "2", raw
    assert images_asked(fake_openai) == 1
    # the image model cools for the upstream's 2 s: both keys are told the rest of the wait,
    # and the upstream is not asked again meanwhile (more refusals than open a breaker)
    for key, ip in ((key2, ip2), (key1, ip1), (key2, ip2)):
        status, headers, raw = gw.post("/v1/images/generations", IMAGE, key=key, ip=ip)
        err = error_of(raw)
        assert (status, err["code"]) == (429, "upstream_rate_limited"), raw
        assert 1 <= int(headers["retry-after"]) <= 2
        assert "`gpt-image-1`" in err["message"] and "org-" not in err["message"]
    assert images_asked(fake_openai) == 1
    # the same provider's chat and embedding models are served all along, for both keys
    the_others_are_served(gw, keys)
    # once the cool-down is over, the image model is served again (no breaker was opened)
    served = wait_for(lambda: draw(gw, key1, ip1, "gpt-image-1")[0] == 200, timeout=10,
                      interval=0.2)
    assert served and images_asked(fake_openai) == 2


def test_a_5xx_run_opens_the_breaker_of_that_model_only(make_gateway, fake_openai):
    gw = one_openai_provider(make_gateway, fake_openai)
    keys = {ip: gw.key_for(ip) for ip in ("127.0.5.3", "127.0.5.4")}
    (ip1, key1), (ip2, key2) = keys.items()
    boom = openai_error("The server had an error while processing your request.",
                        "server_error")
    for key, ip in ((key1, ip1), (key2, ip2), (key1, ip1)):
        fake_openai.fail_next(500, boom, path_contains="/images/")
        assert gw.post("/v1/images/generations", IMAGE, key=key, ip=ip)[0] == 502
    asked = images_asked(fake_openai)
    status, headers, raw = gw.post("/v1/images/generations", IMAGE, key=key2, ip=ip2)
    err = error_of(raw)
    assert status == 503 and "skipped" in err["message"] and "`gpt-image-1`" in err["message"]
    assert 1 <= int(headers["retry-after"]) <= 30
    assert images_asked(fake_openai) == asked           # open: not asked
    the_others_are_served(gw, keys)

