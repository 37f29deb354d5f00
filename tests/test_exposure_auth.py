"""Exposure (issue 13.6), the master key: one shorter than 32 characters is refused by
``check-config`` and at start-up (FILE:LINE), and guesses at it are throttled per network:
after ``security.master_key_guesses_per_minute`` failed non-key tokens, the address gets 429
whatever it sends, the right master key included."""
from __future__ import annotations

import subprocess
import sys

import pytest

from apiarium.errors import RateLimited
from apiarium.ratelimit import FailedGuesses
from tests.conftest import openai_models
from tests.support import error_of, request

MASTER = "exposure-master-key-0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apiarium", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_short_master_key_is_refused_by_check_config_and_serve(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), start=False, master_key="x" * 31)
    out = cli("check-config", "--config", str(gw.config))
    assert out.returncode == 1
    line = [ln for ln in out.stdout.splitlines() + out.stderr.splitlines()
            if "master_key" in ln]
    assert line and line[0].startswith(f"{gw.config}:")
    where = 1 + next(i for i, ln in enumerate(gw.config.read_text().splitlines())
                     if ln.startswith("master_key:"))
    assert line[0].startswith(f"{gw.config}:{where}: master_key:"), line[0]
    assert "31 characters" in line[0] and "at least 32" in line[0]
    assert "x" * 31 not in out.stdout + out.stderr                 # never printed
    serve = subprocess.run([sys.executable, "-m", "apiarium", "serve", "--config",
                            str(gw.config)], capture_output=True, text=True, timeout=60)
    assert serve.returncode != 0 and "at least 32" in serve.stdout + serve.stderr
    assert "apiarium listening" not in serve.stdout + serve.stderr
    # 32 characters, or none at all, are fine
    for master in ("y" * 32, ""):
        ok = make_gateway(openai_models(fake_openai), start=False, master_key=master)
        assert cli("check-config", "--config", str(ok.config)).returncode == 0


def test_guesses_at_the_master_key_are_throttled_per_address(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER)
    body = {"model": "gpt-5", "messages": MSG}
    mine = gw.key_for("127.0.0.61")
    assert gw.post("/v1/chat/completions", body, key=mine, ip="127.0.0.61")[0] == 200
    # key-shaped wrong keys are no guess at the master key (an issued key is unguessable)
    for i in range(15):
        status, _, _ = gw.post("/v1/chat/completions", body, key=f"api-{i:016d}",
                               ip="127.0.0.61")
        assert status == 401
    for i in range(10):                                         # the 10 a minute allowed
        status, _, raw = gw.post("/v1/chat/completions", body, key=f"{MASTER[:-2]}{i:02d}",
                                 ip="127.0.0.61")
        assert status == 401 and error_of(raw)["code"] == "invalid_api_key"
    for key in (f"{MASTER}x", MASTER, mine):                   # now: 429, whatever is sent
        status, headers, raw = gw.post("/v1/chat/completions", body, key=key,
                                       ip="127.0.0.61")
        assert status == 429, (key, raw)
        assert error_of(raw)["code"] == "too_many_failed_attempts"
        assert 1 <= int(headers["retry-after"]) <= 6
    status, _, _ = request(gw.url + "/v1/models", headers={"x-api-key": MASTER},
                           ip="127.0.0.61")
    assert status == 429                       # any request of that address, any header
    # other addresses are not affected
    assert gw.post("/v1/chat/completions", body, key=MASTER, ip="127.0.0.62")[0] == 200
    other = gw.key_for("127.0.0.63")
    assert gw.post("/v1/chat/completions", body, key=other, ip="127.0.0.63")[0] == 200
    status, _, raw = request(gw.url + "/metrics")
    assert b'apiarium_rate_limited_total{reason="failed_auth"} 4.0' in raw


def test_failed_guesses_refill_and_are_per_network():
    now = [0.0]
    guesses = FailedGuesses(clock=lambda: now[0])
    for _ in range(3):
        guesses.check("2001:db8::1", 3)
        guesses.fail("2001:db8::1", 3)
    with pytest.raises(RateLimited) as exc:
        guesses.check("2001:db8::ffff", 3)        # the same /64
    assert exc.value.status == 429 and exc.value.retry_after == pytest.approx(20.0)
    guesses.check("2001:db8:0:1::1", 3)           # another /64
    guesses.check("192.0.2.1", 3)
    now[0] += 20                                   # one guess back every 20 s at 3 a minute
    guesses.check("2001:db8::1", 3)
    guesses.fail("2001:db8::1", 3)
    guesses.check("2001:db8::1", 0)                # 0: no limit
    assert guesses.prune(3) == 0                   # not refilled yet: kept
    now[0] += 60
    assert guesses.prune(3) == 1 and len(guesses.buckets) == 0
