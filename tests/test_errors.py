"""Every status of the contract's table that the core gateway produces, provoked for real:
status, type/code, a message a user can act on, and x-request-id on each."""
from __future__ import annotations

import json
import time

import openai
import pytest

from tests.conftest import openai_models
from tests.fakes import openai_error
from tests.support import MASTER_KEY, error_of, request

MSG = [{"role": "user", "content": "hi"}]


def chat(gateway, body, key=MASTER_KEY, **kw):
    status, headers, raw = gateway.post("/v1/chat/completions", body, key=key, **kw)
    assert headers.get("x-request-id", "").startswith("req_")
    assert headers["content-type"].startswith("application/json")
    return status, headers, error_of(raw) if status >= 400 else json.loads(raw)


@pytest.mark.parametrize("body, param, code, words", [
    (b"{not json", None, "invalid_json", "not valid JSON"),
    (b"", None, "invalid_json", "empty"),
    (b"[1, 2]", None, "invalid_json", "JSON object"),
    ({"messages": MSG}, "model", "invalid_model", "/v1/models"),
    ({"model": "gpt-5"}, "messages", "missing_messages", "`messages` is required"),
    ({"model": "gpt-5", "messages": []}, "messages", "invalid_messages", "non-empty"),
    ({"model": "gpt-5", "messages": ["hi"]}, "messages[0]", "invalid_messages", "role"),
    ({"model": "gpt-5", "messages": MSG, "stream": "yes"}, "stream", "invalid_request",
     "true or false"),
    ({"model": "gpt-5", "messages": MSG, "stream": True, "stream_options": "usage"},
     "stream_options", "invalid_request", "must be an object"),
])
def test_bad_requests_are_400_naming_the_field(gateway, body, param, code, words):
    status, _, err = chat(gateway, body)
    assert status == 400 and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["code"] == code and words in err["message"]


def test_unknown_model_is_404(gateway):
    status, _, err = chat(gateway, {"model": "gpt-9000", "messages": MSG})
    assert status == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    assert "gpt-9000" in err["message"] and "GET /v1/models" in err["message"]
    with pytest.raises(openai.NotFoundError):
        gateway.sdk(MASTER_KEY).chat.completions.create(model="gpt-9000", messages=MSG)


def test_empty_legacy_prompt_names_prompt(gateway):
    status, _, raw = gateway.post("/v1/completions", {"model": "gpt-5", "prompt": " "},
                                  key=MASTER_KEY)
    assert status == 400 and error_of(raw)["param"] == "prompt"


def test_wrong_type_model_for_the_endpoint_is_400(gateway):
    status, _, raw = gateway.post("/v1/completions", {"model": "gpt-image-1", "prompt": "x"},
                                  key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["code"] == "model_type_mismatch" and err["param"] == "model"
    assert "image model" in err["message"] and "/v1/images/generations" in err["message"]


def test_unknown_route_and_method_are_json(gateway):
    status, headers, raw = gateway.get("/v2/whatever")
    err = error_of(raw)
    assert status == 404 and err["code"] == "not_found" and "/v1" in err["message"]
    assert headers["x-request-id"]
    status, headers, raw = request(gateway.url + "/v1/chat/completions", "DELETE",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    err = error_of(raw)
    assert status == 405 and err["code"] == "method_not_allowed"
    assert headers["x-request-id"]
    status, headers, _ = request(gateway.url + "/health", "POST", body=b"{}")
    assert status == 405 and headers["allow"] == "GET"


def test_refused_upstream_is_502_within_a_second(gateway):
    started = time.monotonic()
    status, _, err = chat(gateway, {"model": "dead-model", "messages": MSG})
    assert time.monotonic() - started < 1.0
    assert status == 502 and err["code"] == "upstream_unreachable"
    assert "Cannot connect" in err["message"] and "dead" in err["message"]


def test_silent_upstream_is_504_after_its_timeout(gateway, fake_openai):
    fake_openai.hang_next(5)
    started = time.monotonic()
    status, _, err = chat(gateway, {"model": "gpt-5", "messages": MSG})
    assert 1.4 < time.monotonic() - started < 4      # the provider's timeout_s is 1.5
    assert status == 504 and err["code"] == "upstream_timeout" and "1.5 s" in err["message"]


def test_upstream_garbage_is_502(gateway, fake_openai):
    fake_openai.garbage_next()
    status, _, err = chat(gateway, {"model": "gpt-5", "messages": MSG})
    assert status == 502 and err["code"] == "upstream_error" and "not a JSON" in err["message"]


def test_upstream_4xx_about_the_request_passes_through(gateway, fake_openai):
    fake_openai.fail_next(400, openai_error("Invalid value for 'temperature': 7 is above 2.",
                                            "invalid_request_error", None, "temperature"))
    status, _, err = chat(gateway, {"model": "gpt-5", "messages": MSG, "temperature": 7})
    assert status == 400 and "7 is above 2" in err["message"]


@pytest.mark.parametrize("up_status, headers, status, code", [
    (401, {}, 502, "upstream_error"),           # the gateway's own provider key was refused
    (403, {}, 502, "upstream_error"),
    (500, {}, 502, "upstream_error"),
    (503, {"retry-after": "3"}, 503, "upstream_overloaded"),
    (429, {"retry-after": "7"}, 429, "upstream_rate_limited"),
])
def test_upstream_failures_are_mapped(gateway, fake_openai, up_status, headers, status, code):
    fake_openai.fail_next(up_status, openai_error("upstream says no", "server_error", None,
                                                  None), headers=headers)
    status_, resp_headers, err = chat(gateway, {"model": "gpt-5", "messages": MSG})
    assert (status_, err["code"]) == (status, code)
    # the gateway's own words: such upstream texts name accounts and keys (exposure 13.6)
    assert "upstream says no" not in err["message"] and "`up`" in err["message"]
    if "retry-after" in headers:
        assert resp_headers["retry-after"] == headers["retry-after"]
    if up_status in (401, 403):
        assert "providers.up.api_key" in err["message"]


def test_provider_without_key_is_503(gateway, fake_openai):
    status, _, err = chat(gateway, {"model": "nokey-model", "messages": MSG})
    assert status == 503 and err["code"] == "provider_not_configured"
    assert "providers.nokey.api_key" in err["message"]
    assert fake_openai.requests == []


def test_body_over_the_limit_is_413(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"max_body_mb": 1})
    big = {"model": "gpt-5", "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    status, _, err = chat(gw, big)
    assert status == 413 and err["code"] == "body_too_large" and "1 MB" in err["message"]
    assert fake_openai.requests == []
    status, _, _ = chat(gw, {"model": "gpt-5", "messages": MSG})   # the server is fine after
    assert status == 200


def test_stream_whose_upstream_dies_ends_with_an_error_event(gateway, fake_openai):
    fake_openai.stream_events = 10
    fake_openai.die_mid_stream_next(after_events=4)
    client = gateway.sdk(MASTER_KEY)
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(model="gpt-5", messages=MSG, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert len(got) == 3                             # role frame + 3 content frames were sent
    assert "before it was complete" in str(exc.value) or "failed" in str(exc.value)


def test_errors_before_the_first_byte_of_a_stream_are_plain_http(gateway, fake_openai):
    fake_openai.fail_next(500, openai_error("boom", "server_error", None, None))
    status, headers, raw = gateway.post("/v1/chat/completions",
                                        {"model": "gpt-5", "messages": MSG, "stream": True},
                                        key=MASTER_KEY)
    assert status == 502 and headers["content-type"].startswith("application/json")
    assert error_of(raw)["code"] == "upstream_error"


def test_echo_quotes_at_most_200_characters_of_a_client_value():
    from apiarium.errors import ECHO_CHARS, echo
    assert ECHO_CHARS == 200
    assert echo("short") == "'short'" and echo("short", quote=False) == "short"
    cut = echo("z" * 10**6, quote=False)
    assert cut == "z" * 200 + "… (1,000,000 characters)"
    assert len(echo("z" * 10**6)) < 240
    assert echo("\0" * 1000).count("\\x00") < 60                  # repr's escapes count too
    shown = echo([7] * 10**6)
    assert shown.startswith("[7, 7") and len(shown) < 60            # never rendered whole
    assert len(echo({"k" * 10**6: ["v" * 10**6]})) <= 201
    assert echo(None) == "None" and echo(3) == "3" and echo(True) == "True"
