"""Failover: fallbacks on refused / 5xx / 429 / timeout (never after the first byte), circuit
breakers with cooldown and half-open probes, and bounded memory behind a slow reader."""
from __future__ import annotations

import socket
import time

import openai
import pytest

from apiarium.resilience import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.fakes import FakeOpenAI, openai_error
from tests.support import MASTER_KEY, error_of

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def _backup_server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def backup(_backup_server):
    _backup_server.reset().reply_text = "from the backup"
    return _backup_server


def models(primary, backup, **primary_opts) -> dict:
    return {
        "providers": {
            "main": {"kind": "openai", "base_url": primary.base_url, "api_key": primary.api_key,
                     "timeout_s": 1, **primary_opts},
            "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "k"},
            "spare": {"kind": "openai", "base_url": backup.base_url, "api_key": backup.api_key},
        },
        "models": {
            "gpt-5": {"provider": "main", "fallbacks": ["gpt-spare"]},
            "gpt-doomed": {"provider": "dead", "fallbacks": ["gpt-spare"]},
            "gpt-spare": {"provider": "spare", "upstream": "spare-model"},
            "gpt-alone": {"provider": "main"},
        },
    }


@pytest.fixture
def gw(make_gateway, fake_openai, backup):
    return make_gateway(models(fake_openai, backup))


def test_breaker_opens_cools_down_and_probes():
    now = [0.0]
    b = Breaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    assert b.allow() and b.state == CLOSED
    b.failure()
    assert b.allow() and b.state == CLOSED          # one failure is not a streak yet
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 9.9
    assert not b.allow() and b.retry_in() == pytest.approx(0.1)
    now[0] = 10.0
    assert b.allow() and b.state == HALF_OPEN       # the probe
    assert not b.allow()                            # one probe at a time
    b.failure()
    assert b.state == OPEN and not b.allow()        # the probe failed: open again
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow() and b.allow()
    assert Breaker(failures=0).allow()


def test_one_key_alone_cannot_open_a_breaker():
    now = [0.0]
    b = Breaker(failures=3, cooldown_s=30, clock=lambda: now[0])
    for _ in range(50):                               # one attacker, failing over and over
        assert b.allow("attacker")
        b.failure("attacker")
    assert b.state == CLOSED and b.allow("someone-else")
    b.failure("victim")                               # a second key fails too: now it opens
    assert b.state == OPEN and not b.allow("someone-else")


def test_the_half_open_probe_is_never_a_key_that_just_failed():
    now = [0.0]
    b = Breaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    b.failure("k1")
    b.failure("k2")
    assert b.state == OPEN
    now[0] = 10.0
    assert not b.allow("k1") and not b.allow("k2")    # their own requests may be the fault
    assert b.state == HALF_OPEN
    assert b.allow("k3") and not b.allow("k4")        # one fresh key probes, one at a time
    b.success()
    assert b.state == CLOSED and b.allow("k1")


def test_refused_upstream_falls_back(gw, backup):
    started = time.monotonic()
    status, headers, raw = gw.post("/v1/chat/completions", {"model": "gpt-doomed",
                                                            "messages": MSG}, key=MASTER_KEY)
    assert status == 200 and time.monotonic() - started < 1.5
    assert headers["x-apiarium-model"] == "gpt-spare"
    import json
    body = json.loads(raw)
    assert body["model"] == "gpt-doomed"                      # the alias asked for
    assert body["choices"][0]["message"]["content"] == "from the backup"
    assert backup.last().json["model"] == "spare-model"


@pytest.mark.parametrize("script", ["5xx", "429", "timeout", "garbage"])
def test_provider_failures_before_the_first_byte_fall_back(gw, fake_openai, backup, script):
    for stream in (False, True):
        if script == "5xx":
            fake_openai.fail_next(500, openai_error("boom", "server_error", None, None))
        elif script == "429":
            fake_openai.fail_next(429, openai_error("slow down", "requests", None,
                                                    "rate_limit_exceeded"))
        elif script == "timeout":
            fake_openai.hang_next(3)
        else:
            fake_openai.garbage_next()
        client = gw.sdk(MASTER_KEY)
        if stream:
            raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=MSG,
                                                                   stream=True)
            chunks = list(raw.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert {c.model for c in chunks} == {"gpt-5"}
        else:
            raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=MSG)
            text = raw.parse().choices[0].message.content
            assert raw.parse().model == "gpt-5"
        assert text == "from the backup", (script, stream)
        assert raw.headers["x-apiarium-model"] == "gpt-spare"


def test_no_fallback_after_the_first_byte(gw, fake_openai, backup):
    fake_openai.stream_events = 10
    fake_openai.reply_text = "a b c d e f g h i j k l"
    fake_openai.die_mid_stream_next(after_events=3)
    got = []
    with pytest.raises(openai.APIError):
        for chunk in gw.sdk(MASTER_KEY).chat.completions.create(model="gpt-5", messages=MSG,
                                                                stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert len(got) == 2 and backup.requests == []


def test_request_errors_do_not_fall_back(gw, fake_openai, backup):
    fake_openai.fail_next(400, openai_error("bad temperature", "invalid_request_error",
                                            "temperature", None))
    status, _, raw = gw.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG},
                             key=MASTER_KEY)
    assert status == 400 and "bad temperature" in error_of(raw)["message"]
    assert backup.requests == []


def test_cooldown_then_half_open_recovery(make_gateway, fake_openai, backup):
    gw = make_gateway(models(fake_openai, backup, breaker_failures=2, breaker_cooldown_s=1.5))
    for _ in range(2):
        fake_openai.fail_next(503, openai_error("overloaded", "server_error", None, None))
        assert gw.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG},
                       key=MASTER_KEY)[1]["x-apiarium-model"] == "gpt-spare"
    assert len(fake_openai.requests) == 2
    # open: the primary is skipped altogether
    status, headers, _ = gw.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG},
                                 key=MASTER_KEY)
    assert status == 200 and headers["x-apiarium-model"] == "gpt-spare"
    assert len(fake_openai.requests) == 2
    # the same provider's other model has a breaker of its own: still served
    status, headers, raw = gw.post("/v1/chat/completions", {"model": "gpt-alone",
                                                            "messages": MSG}, key=MASTER_KEY)
    assert status == 200 and headers["x-apiarium-model"] == "gpt-alone", raw
    assert len(fake_openai.requests) == 3
    time.sleep(1.6)
    # half-open: one probe reaches the primary; it works, so the circuit closes
    status, headers, _ = gw.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG},
                                 key=MASTER_KEY)
    assert status == 200 and headers["x-apiarium-model"] == "gpt-5"
    assert len(fake_openai.requests) == 4


def test_fallbacks_are_validated(tmp_path, fake_openai, backup, make_gateway):
    bad = models(fake_openai, backup)
    bad["models"]["gpt-5"]["fallbacks"] = ["gpt-missing"]
    bad["models"]["pic"] = {"provider": "main", "type": "image", "fallbacks": ["gpt-spare"]}
    gw = make_gateway(bad, start=False)
    with pytest.raises(RuntimeError) as exc:
        gw.start(timeout=10)
    log = str(exc.value)
    assert "models.yaml:" in log
    assert "models.gpt-5.fallbacks: 'gpt-missing' is not another model" in log
    assert "models.pic.fallbacks: 'gpt-spare' is of type chat, not image" in log


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.subprocess_gateway("measures the gateway process's RSS")
def test_slow_reader_does_not_make_the_gateway_buffer(gw, fake_openai):
    fake_openai.stream_events = 3000
    fake_openai.reply_text = "x" * (30 * 1024 * 1024)          # 30 MB in 10 KB events
    import json
    body = json.dumps({"model": "gpt-alone", "stream": True, "messages": MSG}).encode()
    before = rss_kb(gw.proc.pid)
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + MASTER_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = 0
    peak = before
    for _ in range(3):          # ~1 KB/s for 3 s: a buffering gateway reads 30 MB in one
        received += len(sock.recv(1024))
        time.sleep(1)
        peak = max(peak, rss_kb(gw.proc.pid))
    sock.close()
    growth_mb = (peak - before) / 1024
    print(f"gateway RSS growth behind a 1 KB/s reader of a 30 MB stream: {growth_mb:.1f} MB")
    assert growth_mb < 10
    assert received < 10 * 1024
