"""The Responses dialect on an OpenAI upstream: passed through natively to its own
``/responses`` (hosted tools, ``include``, reasoning and history items reach it as sent;
``store`` false), with the gateway's rules on top (key, credits, usage from the Responses
usage, fallbacks, the alias as the model); hosted tools on other kinds are a 400 naming the
tool."""
from __future__ import annotations

import json
import socket
import time

import openai
import pytest
import yaml

from apiarium.config import ConfigError, load_config
from tests.inprocess import write_config
from tests.support import wait_for
from tests.test_dialects_sdk import kinds_models

HOSTED = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}},
          {"type": "local_shell"}]


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic, fake_gemini):
    models = kinds_models(fake_openai, fake_anthropic, fake_gemini)
    models["models"]["gpt"].update(          # the hosted tools of HOSTED pass (issue 22)
        allow={"tools": [t["type"] for t in HOSTED]},
        credits={"tools": {"web_search": 1, "code_interpreter": 3}})
    models["providers"]["oa2"] = {"kind": "openai", "base_url": fake_openai.base_url,
                                  "api_key": fake_openai.api_key}
    models["providers"]["vllm"] = {"kind": "openai", "base_url": fake_openai.base_url,
                                   "api_key": fake_openai.api_key, "responses": False}
    models["models"].update({
        "gpt-mini": {"provider": "oa2", "upstream": "gpt-5-mini"},
        "gpt-then-mini": {"provider": "oa", "upstream": "gpt-5", "fallbacks": ["gpt-mini"]},
        "gpt-then-claude": {"provider": "oa", "upstream": "gpt-5", "fallbacks": ["claude"]},
        "local": {"provider": "vllm", "upstream": "qwen3"},
    })
    return make_gateway(models, rate_limit={"rpm": 1000})


def usage_today(gw, ip: str = "127.0.0.1") -> dict:
    return json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]


def test_the_request_reaches_openai_as_sent(gw, fake_openai):
    fake_openai.cached_tokens = 2
    client = gw.sdk(gw.key_for())
    history = [{"role": "user", "content": "list the files"},
               {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_ls",
                "status": "completed", "action": {"type": "exec", "command": ["ls"], "env": {}}},
               {"type": "local_shell_call_output", "id": "lsh_1", "output": "a.txt b.txt"},
               {"role": "user", "content": "and now search the web"}]
    answer = client.responses.create(
        model="gpt", input=history, tools=HOSTED, include=["reasoning.encrypted_content"],
        reasoning={"effort": "low", "summary": "auto"}, store=True, instructions="Be brief.")
    assert answer.model == "gpt" and answer.output_text == "echo: and now search the web"
    sent = fake_openai.last()
    assert sent.path == "/v1/responses"
    assert sent.json["model"] == "gpt-5"                          # the upstream id
    assert sent.json["store"] is False and sent.json["stream"] is False
    assert sent.json["tools"] == HOSTED and sent.json["input"] == history
    assert sent.json["include"] == ["reasoning.encrypted_content"]
    assert sent.json["reasoning"] == {"effort": "low", "summary": "auto"}
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"   # ours
    used = usage_today(gw)
    assert used["requests"] == 1
    assert used["prompt_tokens"] == answer.usage.input_tokens > 0
    assert used["cached_tokens"] == answer.usage.input_tokens_details.cached_tokens == 2
    assert used["completion_tokens"] == answer.usage.output_tokens
    assert used["reasoning_tokens"] == answer.usage.output_tokens_details.reasoning_tokens > 0


def test_a_stream_is_relayed_event_by_event_and_metered(gw, fake_openai):
    fake_openai.reply_text = "one two three four"
    client = gw.sdk(gw.key_for())
    with client.responses.stream(model="gpt", input="count", tools=HOSTED[:1],
                                 reasoning={"effort": "high"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.model == "gpt" and final.output_text == "one two three four"
    assert kinds.count("response.output_text.delta") == fake_openai.stream_events
    sent = fake_openai.last()
    assert sent.path == "/v1/responses" and sent.json["stream"] is True
    assert sent.json["tools"] == HOSTED[:1]
    used = usage_today(gw)
    assert (used["requests"], used["prompt_tokens"]) == (1, final.usage.input_tokens)
    assert used["completion_tokens"] == final.usage.output_tokens
    assert used["reasoning_tokens"] == final.usage.output_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("field, value", [("previous_response_id", "resp_1"),
                                          ("conversation", "conv_1"), ("background", True)])
def test_stateful_fields_are_still_refused(gw, fake_openai, field, value):
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gpt", input="hi", extra_body={field: value})
    assert exc.value.body["param"] == field
    assert exc.value.body["code"] == "unsupported_parameter"
    assert fake_openai.requests == []


@pytest.mark.parametrize("model", ["claude", "gem", "gpt-then-claude"])
@pytest.mark.parametrize("tool", HOSTED[1:], ids=lambda t: t["type"])
def test_hosted_tools_elsewhere_are_a_400_naming_the_tool(gw, model, tool, fake_openai,
                                                          fake_anthropic, fake_gemini):
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=model, input="hi", tools=[tool])
    assert exc.value.body["param"] == "tools[0]"
    assert f"`{tool['type']}`" in exc.value.body["message"]
    assert not (fake_openai.requests or fake_anthropic.requests or fake_gemini.requests)


def test_web_search_is_dropped_elsewhere_as_codex_sends_it_every_turn(gw, fake_gemini):
    client = gw.sdk(gw.key_for())
    answer = client.responses.create(model="gem", input="hi", tools=HOSTED[:1])
    assert answer.output_text == "echo: hi"
    assert "tools" not in fake_gemini.last().json


def test_fallbacks_native_when_every_model_of_the_chain_is_openai(gw, fake_openai):
    fake_openai.fail_next(500, {"error": {"message": "boom", "type": "server_error",
                                          "param": None, "code": None}})
    client = gw.sdk(gw.key_for())
    answer = client.responses.with_raw_response.create(model="gpt-then-mini", input="hi",
                                                       tools=HOSTED[:1])
    assert answer.headers["x-apiarium-model"] == "gpt-mini"
    assert [r.json["model"] for r in fake_openai.requests] == ["gpt-5", "gpt-5-mini"]
    assert {r.path for r in fake_openai.requests} == {"/v1/responses"}


def test_a_chain_with_another_kind_is_translated(gw, fake_openai):
    client = gw.sdk(gw.key_for())
    answer = client.responses.create(model="gpt-then-claude", input="hi")
    assert answer.output_text == "echo: hi"
    assert fake_openai.last().path == "/v1/chat/completions"


def test_upstream_errors_before_the_stream_are_openais_envelope(gw, fake_openai):
    fake_openai.fail_next(429, {"error": {"message": "slow down", "type": "requests",
                                          "param": None, "code": "rate_limit_exceeded"}},
                          headers={"retry-after": "7"})
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.RateLimitError) as exc:
        client.responses.create(model="gpt", input="hi", stream=True)
    assert exc.value.response.headers["retry-after"] == "7"
    assert exc.value.body["code"] == "upstream_rate_limited"


@pytest.mark.parametrize("shape", ["responses_error_event", "chat_error_frame"])
def test_an_upstream_error_event_ends_the_stream_with_response_failed(gw, fake_openai, shape):
    fake_openai.stream_events = 10
    if shape == "responses_error_event":
        fake_openai.responses_error_next(5, code="rate_limit_exceeded")
    else:
        fake_openai.error_mid_stream_next(5)
    client = gw.sdk(gw.key_for())
    with client.responses.stream(model="gpt", input="hi") as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.id == events[0].response.id
    assert events[-1].response.error.code == ("rate_limit_exceeded" if shape.startswith(
        "responses") else "server_error")


def test_the_gateways_compaction_items_are_expanded_before_openai_sees_them(gw, fake_openai):
    client = gw.sdk(gw.key_for())
    history = [{"role": "user", "content": "the secret word is honey"},
               {"role": "assistant", "content": "noted"}]
    compacted = client.post("/responses/compact", cast_to=object,
                            body={"model": "gpt", "input": history})
    assert fake_openai.requests == []                     # answered by the gateway
    theirs = {"type": "compaction", "encrypted_content": "gAAAA-openai-own"}
    follow = [*compacted["output"], theirs, {"role": "user", "content": "which word?"}]
    client.responses.create(model="gpt", input=follow)
    sent = fake_openai.last().json["input"]
    assert sent[:2] == history and sent[2] == theirs         # ours expanded, OpenAI's kept
    assert sent[-1] == {"role": "user", "content": "which word?"}


def test_a_provider_without_responses_gets_them_translated(gw, fake_openai):
    client = gw.sdk(gw.key_for())
    assert client.responses.create(model="local", input="hi").output_text == "echo: hi"
    sent = fake_openai.last()
    assert sent.path == "/v1/chat/completions" and sent.json["model"] == "qwen3"
    with pytest.raises(openai.BadRequestError) as exc:          # so hosted tools are refused
        client.responses.create(model="local", input="hi", tools=HOSTED[1:2])
    assert exc.value.body["param"] == "tools[0]"


def test_the_responses_setting_is_a_boolean(tmp_path, fake_openai):
    models = {"providers": {"up": {"kind": "openai", "base_url": fake_openai.base_url,
                                   "responses": "sometimes"}},
              "models": {"m": {"provider": "up"}}}
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path, models))
    assert "models.yaml:" in str(exc.value) and "responses" in str(exc.value)
    models["providers"]["up"]["responses"] = False
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(models))
    assert load_config(tmp_path / "apiarium.yaml").catalog.providers["up"].responses is False


def test_a_client_that_drops_the_stream_closes_the_upstream_request(gw, fake_openai):
    fake_openai.stream_events, fake_openai.stream_delay = 50, 0.2
    fake_openai.reply_text = " ".join(f"w{i}" for i in range(200))
    key = gw.key_for()
    body = json.dumps({"model": "gpt", "stream": True, "input": "long"}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"response.output_text.delta") < 2:      # the text is flowing
        got += sock.recv(65536)
    dropped = time.monotonic()
    sock.close()
    assert wait_for(lambda: fake_openai.disconnects, timeout=3)
    assert fake_openai.disconnects[0] - dropped < 1.0
    assert fake_openai.last().path == "/v1/responses" and len(fake_openai.requests) == 1
    used = wait_for(lambda: usage_today(gw)["requests"] and usage_today(gw), timeout=3)
    assert used["requests"] == 1 and used["prompt_tokens"] > 0      # booked, estimated


@pytest.mark.parametrize("extra, param", [
    ({"input": [{"type": "item_reference", "id": "msg_theirs"}]}, "input[0]"),
    ({"input": [{"id": "msg_theirs"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "see"}, {"type": "input_image", "file_id": "file-2",
                                                "detail": "auto"}]}]},
     "input[0].content[1].file_id"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_operator"]}]}, "tools[0]"),
    ({"tools": [{"type": "code_interpreter", "container": "cntr_operator"}]},
     "tools[0].container"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto",
                                                            "file_ids": ["file-3"]}}]},
     "tools[0].container"),
])
def test_what_is_stored_in_the_gateways_openai_account_is_out_of_reach(gw, fake_openai,
                                                                        extra, param):
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(**{"model": "gpt", "input": "hi", **extra})
    assert exc.value.body["param"] == param, exc.value.body
    assert fake_openai.requests == []


def test_a_stream_that_ends_without_its_terminal_event_gets_response_failed(gw, fake_openai):
    created = {"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_cut", "object": "response", "created_at": 1767225600,
        "status": "in_progress", "model": "gpt-5", "output": []}}
    fake_openai.fail_next(200, "event: response.created\ndata: " + json.dumps(created)
                          + "\n\n", headers={"Content-Type": "text/event-stream"},
                          path_contains="/responses")
    client = gw.sdk(gw.key_for())
    with client.responses.stream(model="gpt", input="hi") as stream:
        events = list(stream)
    assert [e.type for e in events] == ["response.created", "response.failed"]
    assert events[0].response.model == "gpt"                     # the alias, not gpt-5
    failed = events[1]
    assert failed.sequence_number == 1 and failed.response.id == "resp_cut"
    assert failed.response.error.code == "server_error"
    assert "ended the stream before it was complete" in failed.response.error.message


def test_local_shell_history_is_a_400_on_a_translated_model(gw, fake_gemini):
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="gem", input=[
            {"role": "user", "content": "list the files"},
            {"type": "local_shell_call", "id": "lsh_1", "call_id": "call_ls",
             "status": "completed", "action": {"type": "exec", "command": ["ls"], "env": {}}}])
    assert exc.value.body["param"] == "input[1].type"
    assert "local_shell_call" in exc.value.body["message"]
    assert fake_gemini.requests == []


def _cut_stream(fake_openai, *events: dict) -> None:
    """The next /responses stream: ``response.created``, then ``events``, then the end."""
    created = {"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_up", "object": "response", "created_at": 1767225600,
        "status": "in_progress", "model": "gpt-5", "output": []}}
    fake_openai.fail_next(200, "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n"
                                       for e in (created, *events)),
                          headers={"Content-Type": "text/event-stream"},
                          path_contains="/responses")


@pytest.mark.parametrize("code, message, status_words", [
    ("rate_limit_exceeded", ("Rate limit reached for gpt-5 in organization org-SECRET123 on "
                             "tokens per min. Please try again in 1.5s."), "rate limiting"),
    ("context_length_exceeded", "Your input exceeds the context window of this model.",
     "context window"),
    ("server_error", "Internal failure at shard 7 of org-SECRET123.", "failed with HTTP 500"),
])
def test_an_upstream_response_failed_is_told_in_the_gateways_words(gw, fake_openai, code,
                                                                    message, status_words):
    _cut_stream(fake_openai, {"type": "response.failed", "sequence_number": 1, "response": {
        "id": "resp_up", "object": "response", "created_at": 1767225600, "status": "failed",
        "model": "gpt-5", "output": [], "error": {"code": code, "message": message}}})
    client = gw.sdk(gw.key_for())
    with client.responses.stream(model="gpt", input="hi") as stream:
        events = list(stream)
    assert [e.type for e in events] == ["response.created", "response.failed"]
    error = events[1].response.error
    assert error.code == code and status_words in error.message
    assert "org-SECRET123" not in error.message and events[1].response.id == "resp_up"


def test_a_whole_failed_response_is_an_error_in_the_gateways_words(gw, fake_openai):
    fake_openai.fail_next(200, {"id": "resp_up", "object": "response", "status": "failed",
                                "created_at": 1767225600, "model": "gpt-5", "output": [],
                                "error": {"code": "rate_limit_exceeded",
                                          "message": "Slow down, org-SECRET123."}},
                          path_contains="/responses")
    client = gw.sdk(gw.key_for())
    with pytest.raises(openai.RateLimitError) as exc:
        client.responses.create(model="gpt", input="hi")
    assert exc.value.body["code"] == "upstream_rate_limited"
    assert "org-SECRET123" not in exc.value.body["message"]
