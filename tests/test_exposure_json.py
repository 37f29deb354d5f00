"""Exposure (issue 13.6), JSON the gateway could read but not write again: orjson parses 1024
levels of nesting and encodes only 254, so a deep body used to end in a 500 wherever it was
re-encoded.  Now: a 400 naming the limit, in each dialect's envelope."""
from __future__ import annotations

import json

import orjson
import pytest

from apiarium.errors import InvalidRequest
from apiarium.jsonbody import MAX_DEPTH, parse_object, too_deep
from tests.conftest import openai_models
from tests.support import error_of

MASTER = "exposure-master-key-0123456789abcdefghij"


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def deep_body(path: str, model: str, depth: int = 600) -> bytes:
    content = nested(depth)
    if path == "/v1/responses":
        body = {"model": model, "input": [{"role": "user", "content": content}]}
    elif path == "/v1/messages":
        body = {"model": model, "max_tokens": 10,
                "messages": [{"role": "user", "content": content}]}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
    # json.dumps: orjson itself refuses to write it
    return json.dumps(body).encode()


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic):
    return make_gateway(openai_models(fake_openai, providers={
        "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key}},
        models={"claude-x": {"provider": "claude"}}), master_key=MASTER)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses",
                                  "/v1/responses/compact", "/v1/messages",
                                  "/v1/messages/count_tokens", "/v1/images/generations"])
@pytest.mark.parametrize("model", ["gpt-5", "gpt-renamed", "claude-x"])
def test_a_600_deep_body_is_a_400_in_the_dialects_envelope(gw, fake_openai, path, model):
    seen = len(fake_openai.requests)
    status, headers, raw = gw.post(path, deep_body(path, model), key=MASTER)
    assert status == 400, raw
    if path.startswith("/v1/messages"):
        err = json.loads(raw)
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        message = err["error"]["message"]
    else:
        err = error_of(raw)
        assert err["code"] == "invalid_json" and err["type"] == "invalid_request_error"
        message = err["message"]
    assert f"more than {MAX_DEPTH} levels" in message
    assert headers["content-type"].startswith("application/json")
    assert len(fake_openai.requests) == seen              # nothing went upstream


def test_deep_tool_arguments_are_a_400_not_a_500(gw, fake_anthropic):
    """A tool call's ``arguments`` is a string: within the limit as JSON, but decoded and
    re-encoded on its way to Anthropic it would nest 600 levels deep."""
    args = json.dumps({"x": nested(600)})
    body = {"model": "claude-x", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
                                                    "parameters": {"type": "object"}}}]}
    for stream in (False, True):
        status, _, raw = gw.post("/v1/chat/completions", {**body, "stream": stream},
                                 key=MASTER)
        assert status == 400, raw
        err = error_of(raw)
        assert err["code"] == "invalid_json" and "too deeply" in err["message"], err


def test_depth_limit_boundaries():
    assert not too_deep(nested(MAX_DEPTH))                # levels of lists and objects
    assert too_deep(nested(MAX_DEPTH + 1))
    ok = {"a": nested(MAX_DEPTH - 1)}                     # the body object is one level
    assert parse_object(orjson.dumps(ok)) == ok
    with pytest.raises(InvalidRequest, match=f"more than {MAX_DEPTH} levels"):
        parse_object(json.dumps({"a": nested(MAX_DEPTH)}).encode())
    # many brackets side by side are not depth
    wide = {"messages": [{"role": "user", "content": [[]] * 5000}]}
    assert parse_object(orjson.dumps(wide)) == wide
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_object(b"[" * 1100 + b"]" * 1100)
