"""The two other ingress dialects in-process (pytest-tornado, fake OpenAI upstream on
loopback): handlers/messages.py (Anthropic Messages: ``x-api-key``, Anthropic's error
envelope and statuses, count_tokens, streams) and handlers/responses.py (OpenAI Responses:
stateless only, streams that always end with a terminal event, Codex compaction).  The
provider says ``responses: false`` (an OpenAI-compatible server without /responses), so
Responses requests are translated to chat here too."""
from __future__ import annotations

import json

import pytest

from apiarium.handlers import messages, responses
from tests.inprocess import MASTER, InProcess, write_config

HELLO = "hello busy bees"


def models(fake) -> dict:
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": fake.base_url, "api_key": fake.api_key,
                   "timeout_s": 5, "responses": False},
            "nokey": {"kind": "openai", "base_url": fake.base_url, "api_key": ""},
        },
        "models": {
            "gpt-5": {"provider": "up"},
            "nokey-model": {"provider": "nokey"},
            "gpt-image-1": {"provider": "up", "type": "image"},
        },
    }


@pytest.fixture
def app(io_loop, tmp_path, fake_openai):
    env = InProcess(write_config(tmp_path, models(fake_openai)))
    io_loop.run_sync(env.open)
    yield env.app()
    io_loop.run_sync(env.close)


async def key_of(http_client, base_url) -> str:
    return json.loads((await http_client.fetch(base_url + "/v1/keys/me")).body)["key"]


async def post(http_client, base_url, path: str, body, headers: dict | None = None):
    return await http_client.fetch(
        base_url + path, method="POST", raise_error=False,
        body=body if isinstance(body, str) else json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})})


def events(resp) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE event of the answer."""
    out = []
    for block in resp.body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", ""), json.loads(fields["data"])))
    return out


# ---------------------------------------------------------------------- Messages

def ask(**extra) -> dict:
    return {"model": "gpt-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": HELLO}], **extra}


def anthropic_error(resp, status: int, kind: str) -> str:
    assert resp.code == status, (resp.code, resp.body)
    body = json.loads(resp.body)
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    assert body["request_id"] == resp.headers["x-request-id"]
    return body["error"]["message"]


@pytest.mark.gen_test(timeout=20)
async def test_messages_with_x_api_key(app, http_client, base_url, fake_openai):
    key = await key_of(http_client, base_url)
    resp = await post(http_client, base_url, "/v1/messages?beta=true", ask(),
                      {"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert resp.code == 200, resp.body
    answer = json.loads(resp.body)
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "gpt-5"
    assert answer["content"] == [{"type": "text", "text": f"echo: {HELLO}"}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["output_tokens"] == len(f"echo: {HELLO}".split())
    assert resp.headers["x-apiarium-model"] == "gpt-5"
    assert "x-ratelimit-remaining-requests" in resp.headers      # a limited endpoint
    sent = fake_openai.last().json                  # translated to the internal chat request
    assert sent["messages"][-1] == {"role": "user", "content": HELLO}
    assert 64 in (sent.get("max_tokens"), sent.get("max_completion_tokens")), sent
    # the bearer header works as well
    resp = await post(http_client, base_url, "/v1/messages", ask(),
                      {"Authorization": f"Bearer {key}"})
    assert resp.code == 200


@pytest.mark.gen_test(timeout=20)
async def test_messages_errors_are_anthropics_envelope(app, http_client, base_url,
                                                       fake_openai):
    key = await key_of(http_client, base_url)
    auth = {"x-api-key": key}
    msg = anthropic_error(await post(http_client, base_url, "/v1/messages", ask()),
                          401, "authentication_error")
    assert "Missing API key" in msg
    anthropic_error(await post(http_client, base_url, "/v1/messages", ask(),
                               {"x-api-key": "api-wrongwrongwrong"}), 401,
                    "authentication_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages",
                               ask(model="claude-nope"), auth), 404, "not_found_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages",
                               ask(model="gpt-image-1"), auth), 400, "invalid_request_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages", ask(stream="yes"),
                               auth), 400, "invalid_request_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages", "{oops", auth),
                    400, "invalid_request_error")
    assert fake_openai.requests == []

    fake_openai.fail_next(503, {"error": {"message": "overloaded", "type": "server_error",
                                          "param": None, "code": None}})
    anthropic_error(await post(http_client, base_url, "/v1/messages", ask(), auth),
                    529, "overloaded_error")
    # (after it, gpt-5 cools for the 7 s the upstream asks)
    fake_openai.fail_next(429, {"error": {"message": "slow down", "type": "requests",
                                          "param": None, "code": "rate_limit_exceeded"}},
                          headers={"retry-after": "7"})
    limited = await post(http_client, base_url, "/v1/messages", ask(), auth)
    anthropic_error(limited, 429, "rate_limit_error")
    assert limited.headers["retry-after"] == "7"

    # a provider without its key: the gateway's own 503, in Anthropic's words a 529 too
    anthropic_error(await post(http_client, base_url, "/v1/messages",
                               ask(model="nokey-model"), auth), 529, "overloaded_error")


@pytest.mark.gen_test(timeout=20)
async def test_count_tokens_grows_with_the_input_and_takes_no_rate_limit_token(
        app, http_client, base_url, fake_openai):
    auth = {"x-api-key": await key_of(http_client, base_url)}
    short = await post(http_client, base_url, "/v1/messages/count_tokens", ask(), auth)
    assert short.code == 200, short.body
    assert "x-ratelimit-remaining-requests" not in short.headers
    longer = ask(messages=[{"role": "user", "content": HELLO * 40}])
    long_ = await post(http_client, base_url, "/v1/messages/count_tokens", longer, auth)
    n_short = json.loads(short.body)["input_tokens"]
    n_long = json.loads(long_.body)["input_tokens"]
    assert 0 < n_short < n_long
    no_max = {k: v for k, v in ask().items() if k != "max_tokens"}    # not needed here
    assert (await post(http_client, base_url, "/v1/messages/count_tokens", no_max,
                       auth)).code == 200
    anthropic_error(await post(http_client, base_url, "/v1/messages/count_tokens",
                               ask(model="claude-nope"), auth), 404, "not_found_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages/count_tokens",
                               {"model": "gpt-5"}, auth), 400, "invalid_request_error")
    anthropic_error(await post(http_client, base_url, "/v1/messages/count_tokens", ask()),
                    401, "authentication_error")
    assert fake_openai.requests == []                 # counted by the gateway itself


@pytest.mark.gen_test(timeout=20)
async def test_messages_stream_events_and_a_failure_mid_stream(app, http_client, base_url,
                                                               fake_openai):
    auth = {"x-api-key": MASTER}
    resp = await post(http_client, base_url, "/v1/messages", ask(stream=True), auth)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    got = events(resp)
    names = [name for name, _ in got]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert all(name == data["type"] for name, data in got)
    text = "".join(d["delta"].get("text", "") for n, d in got if n == "content_block_delta")
    assert text == f"echo: {HELLO}"

    fake_openai.stream_events = 10
    fake_openai.die_mid_stream_next(4)
    got = events(await post(http_client, base_url, "/v1/messages", ask(stream=True), auth))
    name, data = got[-1]
    assert name == "error" and data["type"] == "error", got[-3:]
    assert data["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_stop" not in [n for n, _ in got]


# ---------------------------------------------------------------------- Responses

def respond(**extra) -> dict:
    return {"model": "gpt-5", "input": HELLO, "store": False, **extra}


def output_text(response: dict) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


@pytest.mark.gen_test(timeout=20)
async def test_responses_answer(app, http_client, base_url, fake_openai):
    auth = {"Authorization": f"Bearer {MASTER}"}
    resp = await post(http_client, base_url, "/v1/responses", respond(), auth)
    assert resp.code == 200, resp.body
    answer = json.loads(resp.body)
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert answer["model"] == "gpt-5"
    assert output_text(answer) == f"echo: {HELLO}"
    assert fake_openai.last().json["messages"][-1]["content"] == HELLO


@pytest.mark.parametrize("field", ["previous_response_id", "conversation", "background"])
@pytest.mark.gen_test(timeout=20)
async def test_responses_stateful_fields_are_400_by_name(app, http_client, base_url,
                                                         fake_openai, field):
    auth = {"Authorization": f"Bearer {MASTER}"}
    resp = await post(http_client, base_url, "/v1/responses",
                      respond(**{field: "resp_123"}), auth)
    assert resp.code == 400
    err = json.loads(resp.body)["error"]
    assert err["param"] == field and err["code"] == "unsupported_parameter"
    assert fake_openai.requests == []


@pytest.mark.gen_test(timeout=20)
async def test_responses_stream_ends_with_response_completed(app, http_client, base_url):
    auth = {"Authorization": f"Bearer {await key_of(http_client, base_url)}"}
    resp = await post(http_client, base_url, "/v1/responses", respond(stream=True), auth)
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    got = events(resp)
    names = [name for name, _ in got]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.completed") == 1
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    text = "".join(d["delta"] for n, d in got if n == "response.output_text.delta")
    assert text == f"echo: {HELLO}" == output_text(got[-1][1]["response"])


@pytest.mark.gen_test(timeout=20)
async def test_responses_failures_before_and_during_the_stream(app, http_client, base_url,
                                                               fake_openai):
    auth = {"Authorization": f"Bearer {MASTER}"}
    fake_openai.fail_next(500, {"error": {"message": "boom", "type": "server_error",
                                          "param": None, "code": None}})
    before = await post(http_client, base_url, "/v1/responses", respond(stream=True), auth)
    assert before.code == 502                      # nothing sent yet: a plain HTTP error
    assert json.loads(before.body)["error"]["type"] == "server_error"

    fake_openai.stream_events = 10
    fake_openai.die_mid_stream_next(4)
    during = await post(http_client, base_url, "/v1/responses", respond(stream=True), auth)
    assert during.code == 200
    names = [n for n, _ in events(during)]
    assert names[-1] == "response.failed" and "response.completed" not in names
    failed = events(during)[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]


@pytest.mark.gen_test(timeout=20)
async def test_codex_compaction_is_answered_by_the_gateway(app, http_client, base_url,
                                                           fake_openai):
    auth = {"Authorization": f"Bearer {await key_of(http_client, base_url)}"}
    history = [{"role": "user", "content": HELLO},
               {"role": "assistant", "content": "echo: hello"}]
    trigger = respond(input=[*history, {"type": "compaction_trigger"}])
    whole = json.loads((await post(http_client, base_url, "/v1/responses", trigger,
                                   auth)).body)
    assert [item["type"] for item in whole["output"]] == ["compaction"]
    got = events(await post(http_client, base_url, "/v1/responses", {**trigger,
                                                                     "stream": True}, auth))
    assert got[-1][0] == "response.completed"
    assert [i["type"] for i in got[-1][1]["response"]["output"]] == ["compaction"]
    compact = await post(http_client, base_url, "/v1/responses/compact",
                         {"model": "gpt-5", "input": history}, auth)
    body = json.loads(compact.body)
    assert body["object"] == "response.compaction"
    assert [item["type"] for item in body["output"]] == ["compaction"]
    assert "x-ratelimit-remaining-requests" not in compact.headers
    assert fake_openai.requests == []              # no model was called
    # the compaction item, carried back, is expanded for the model
    follow = respond(input=[*body["output"], {"role": "user", "content": "and then?"}])
    resp = await post(http_client, base_url, "/v1/responses", follow, auth)
    assert resp.code == 200, resp.body
    sent = json.dumps(fake_openai.last().json["messages"])
    assert HELLO in sent and "and then?" in sent


def test_both_dialect_modules_export_their_routes():
    assert {p for p, _ in messages.routes} == {"/v1/messages", "/v1/messages/count_tokens"}
    assert {p for p, _ in responses.routes} == {"/v1/responses", "/v1/responses/compact"}
