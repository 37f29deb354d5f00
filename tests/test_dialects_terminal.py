"""Every Responses and Messages stream ends with its dialect's terminal event, translated or
passed through natively, when the upstream is cut mid-stream and when the gateway shuts down
mid-stream (``response.failed`` with an error code; Anthropic's ``event: error``); and the
gateway's own rules (rate limit, IP binding, credits) answer in each dialect's envelope."""
from __future__ import annotations

import json
import threading

import pytest

from tests.support import httpx
from tests.test_dialects_sdk import FAKE_OF, kinds_models

LONG = " ".join(f"word{i}" for i in range(200))
# (dialect, model): Responses translated (Gemini) and native (OpenAI), Messages translated
# (OpenAI) and native (Anthropic)
CASES = [("responses", "gem"), ("responses", "gpt"), ("messages", "gpt"),
         ("messages", "claude")]
PATHS = {"responses": "/v1/responses", "messages": "/v1/messages"}
NATIVE = {("responses", "gpt"), ("messages", "claude")}      # passed through as sent


def assert_route(dialect: str, model: str, fake) -> None:
    """A native case reached the upstream's own endpoint for the dialect; the others its
    chat (or Gemini) endpoint."""
    native = fake.last().path == PATHS[dialect]
    assert native == ((dialect, model) in NATIVE), fake.last().path


def body_for(dialect: str, model: str, **extra) -> dict:
    if dialect == "responses":
        return {"model": model, "input": "tell me a long story", "store": False, **extra}
    return {"model": model, "max_tokens": 1000,
            "messages": [{"role": "user", "content": "tell me a long story"}], **extra}


def headers_for(dialect: str, key: str) -> dict:
    if dialect == "responses":
        return {"Authorization": f"Bearer {key}"}
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def read_events(url: str, headers: dict, body: dict, first: threading.Event | None = None,
                ip: str = "127.0.0.1") -> tuple[int, list[tuple[str, dict]]]:
    """POST ``body`` and read the SSE answer to its end: (status, [(event, data)]); sets
    ``first`` once the first event is in."""
    out: list[tuple[str, dict]] = []
    name, data = "", []
    transport = httpx.HTTPTransport(local_address=ip)
    with httpx.Client(transport=transport, timeout=30) as client, \
            client.stream("POST", url, json=body, headers=headers) as resp:
        for line in resp.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                parsed = json.loads("\n".join(data))
                out.append((name or parsed.get("type", ""), parsed))
                name, data = "", []
                if first is not None:
                    first.set()
        return resp.status_code, out


def assert_terminal_failure(dialect: str, events: list[tuple[str, dict]], words: str) -> None:
    """The stream's last event is its dialect's failure, carrying an error that says
    ``words``; no success event came before it."""
    names = [n for n, _ in events]
    name, data = events[-1]
    if dialect == "responses":
        assert name == "response.failed", names[-4:]
        assert "response.completed" not in names and names.count("response.failed") == 1
        error = data["response"]["error"]
        assert error["code"] and words in error["message"], error
        assert data["sequence_number"] == len(events) - 1
    else:
        assert name == "error" and data["type"] == "error", names[-4:]
        assert "message_stop" not in names
        assert data["error"]["type"] and words in data["error"]["message"], data


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic, fake_gemini):
    return make_gateway(kinds_models(fake_openai, fake_anthropic, fake_gemini),
                        rate_limit={"rpm": 1000}, server={"shutdown_grace_s": 0.3})


@pytest.mark.parametrize("dialect, model", CASES)
def test_an_upstream_cut_mid_stream_ends_with_the_terminal_event(gw, request, dialect, model):
    fake = request.getfixturevalue(FAKE_OF[model])
    fake.reply_text, fake.stream_events = LONG, 20
    fake.die_mid_stream_next(6)
    status, events = read_events(gw.url + PATHS[dialect], headers_for(dialect, gw.key_for()),
                                 body_for(dialect, model, stream=True))
    assert status == 200 and len(events) > 2
    assert_terminal_failure(dialect, events, "upstream")
    assert_route(dialect, model, fake)


@pytest.mark.parametrize("dialect, model", CASES)
def test_a_shutdown_mid_stream_ends_with_the_terminal_event(gw, request, dialect, model):
    fake = request.getfixturevalue(FAKE_OF[model])
    fake.reply_text, fake.stream_events, fake.stream_delay = LONG, 100, 0.05   # ~5 s
    first, result = threading.Event(), []
    reader = threading.Thread(target=lambda: result.append(read_events(
        gw.url + PATHS[dialect], headers_for(dialect, gw.key_for()),
        body_for(dialect, model, stream=True), first)))
    reader.start()
    assert first.wait(10)
    gw.stop()                       # grace 0.3 s: far shorter than the stream
    reader.join(20)
    status, events = result[0]
    assert status == 200
    assert_terminal_failure(dialect, events, "shutting down")
    assert len(events) < 100
    assert_route(dialect, model, fake)


# ------------------------------------------------------------------- the gateway's own rules

def error_of(dialect: str, resp) -> dict:
    """The error inside the dialect's envelope (asserting the envelope's shape)."""
    body = resp.json()
    if dialect == "responses":
        assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "code"}
        return body["error"]
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]


def post(gw, dialect: str, key: str, ip: str = "127.0.0.1", model: str = "gem"):
    with httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30) as client:
        return client.post(gw.url + PATHS[dialect], json=body_for(dialect, model),
                           headers=headers_for(dialect, key))


@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_the_rate_limit_answers_429_with_retry_after_in_the_dialect(make_gateway, dialect,
                                                                     fake_openai, fake_anthropic,
                                                                     fake_gemini):
    gw = make_gateway(kinds_models(fake_openai, fake_anthropic, fake_gemini),
                      rate_limit={"rpm": 1})
    key = gw.key_for()
    assert post(gw, dialect, key).status_code == 200
    limited = post(gw, dialect, key)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    err = error_of(dialect, limited)
    if dialect == "responses":
        assert err["code"] == "rate_limit_exceeded"
    else:
        assert err["type"] == "rate_limit_error"
    assert f"Wait {limited.headers['retry-after']} s" in err["message"], err
    assert len(fake_gemini.requests) == 1


@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_a_key_used_from_another_ip_is_401_in_the_dialect(gw, dialect, fake_gemini):
    key = gw.key_for("127.0.0.1")
    refused = post(gw, dialect, key, ip="127.0.0.2")
    assert refused.status_code == 401
    err = error_of(dialect, refused)
    if dialect == "responses":
        assert err["code"] == "ip_mismatch"
    else:
        assert err["type"] == "authentication_error"
    assert "another IP address" in err["message"]
    assert fake_gemini.requests == []


@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_spent_credits_are_refused_in_the_dialect(make_gateway, dialect, fake_openai,
                                                 fake_anthropic, fake_gemini):
    models = kinds_models(fake_openai, fake_anthropic, fake_gemini)
    models["models"]["gem"]["credits"] = {"request": 1, "per_1k_tokens": 0}
    gw = make_gateway(models, rate_limit={"rpm": 1000, "daily_credits": 1.5})
    key = gw.key_for()
    assert post(gw, dialect, key).status_code == 200                # 1 of 1.5 spent
    refused = post(gw, dialect, key)
    assert refused.status_code == 429
    err = error_of(dialect, refused)
    if dialect == "responses":
        assert err["code"] == "insufficient_quota"
    else:
        assert err["type"] == "rate_limit_error"
        assert refused.headers.get("x-should-retry") == "false"
    assert "credits" in err["message"]
    assert len(fake_gemini.requests) == 1                 # refused before it was sent


def test_the_request_metrics_carry_the_dialect(gw, fake_gemini):
    key = gw.key_for()
    assert post(gw, "responses", key).status_code == 200
    assert post(gw, "messages", key).status_code == 200
    assert gw.post("/v1/chat/completions", {"model": "gem", "messages": [
        {"role": "user", "content": "hi"}]}, key=key)[0] == 200
    status, _, text = gw.get("/metrics")
    assert status == 200
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.decode().splitlines() if line and not line.startswith("#")}
    for endpoint, dialect in (("responses", "responses"), ("messages", "anthropic"),
                              ("chat", "openai")):
        labels = f'dialect="{dialect}",endpoint="{endpoint}"'     # sorted, as rendered
        assert lines[f'apiarium_requests_total{{{labels},model="gem",status="200"}}'] == 1
        assert lines[f"apiarium_request_duration_seconds_count{{{labels}}}"] == 1
