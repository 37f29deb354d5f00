"""IP-bound keys (issued, kept across restarts, refused from other IPs, never stored in
clear) and the per-key token bucket, seen from the outside."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import openai
import pytest

from tests.support import MASTER_KEY, error_of, wait_for

KEY = re.compile(r"^api-[a-z0-9]{16}$")
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}


def test_two_ips_get_two_keys_kept_across_restarts(gateway):
    status, headers, body = gateway.get("/v1/keys/me", ip="127.0.0.2")
    me2 = json.loads(body)
    assert status == 200 and KEY.match(me2["key"]) and me2["ip"] == "127.0.0.2"
    assert me2["object"] == "api_key" and me2["rate_limit"] == {"rpm": 4}
    assert headers["x-request-id"]
    key3 = gateway.key_for("127.0.0.3")
    assert KEY.match(key3) and key3 != me2["key"]
    assert gateway.key_for("127.0.0.2") == me2["key"]          # same IP, same key

    gateway.restart()
    assert gateway.key_for("127.0.0.2") == me2["key"]
    assert gateway.key_for("127.0.0.3") == key3
    status, _, body = gateway.get("/v1/keys/me", ip="127.0.0.2")
    assert json.loads(body)["created"] == me2["created"]


def test_key_works_only_from_its_own_ip(gateway):
    key2 = gateway.key_for("127.0.0.2")
    assert gateway.sdk(key2, ip="127.0.0.2").models.list().data
    with pytest.raises(openai.AuthenticationError) as exc:
        gateway.sdk(key2, ip="127.0.0.3").models.list()
    assert exc.value.status_code == 401 and exc.value.code == "ip_mismatch"
    assert "another IP" in exc.value.message and "127.0.0.3" in exc.value.message


def test_missing_and_unknown_keys(gateway):
    status, _, body = gateway.get("/v1/models")
    err = error_of(body)
    assert status == 401 and err["code"] == "missing_api_key" and err["type"] == \
        "authentication_error" and "/v1/keys/me" in err["message"]
    status, _, body = gateway.post("/v1/chat/completions", CHAT, key="api-0000000000000000")
    err = error_of(body)
    assert status == 401 and err["code"] == "invalid_api_key" and "/v1/keys/me" in err["message"]
    # the message shows a prefix at most, never a whole presented key
    assert "api-0000000000000000" not in err["message"]


def test_database_copy_reveals_no_usable_key(gateway):
    key = gateway.key_for("127.0.0.4")
    db = gateway.dir.parent / "data" / "apiarium.sqlite3"
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert key not in dump and key[4:] not in dump
    assert key[:6] in dump and key[:7] not in dump         # only a short prefix, for admins


def test_fifth_request_in_a_minute_is_rate_limited(gateway, fake_openai):
    key = gateway.key_for("127.0.0.5")
    for i in range(4):
        status, headers, _ = gateway.post("/v1/chat/completions", CHAT, key=key, ip="127.0.0.5")
        assert status == 200, i
        assert headers["x-ratelimit-limit-requests"] == "4"
        assert headers["x-ratelimit-remaining-requests"] == str(3 - i)
    status, headers, body = gateway.post("/v1/chat/completions", CHAT, key=key, ip="127.0.0.5")
    err = error_of(body)
    assert status == 429 and err["code"] == "rate_limit_exceeded"
    wait = int(headers["retry-after"])
    assert 1 <= wait <= 15
    assert f"Wait {wait} s" in err["message"] and "4 requests per minute" in err["message"]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.match(r"^\d+(ms|s)$|^\d+m\d+s$", headers["x-ratelimit-reset-requests"])
    assert len(fake_openai.requests) == 4                  # the fifth never went upstream
    # GETs are not counted
    assert gateway.get("/v1/models", key=key, ip="127.0.0.5")[0] == 200


def test_sdk_sees_rate_limit_error_with_retry_after(gateway):
    client = gateway.sdk(gateway.key_for("127.0.0.6"), ip="127.0.0.6")
    for _ in range(4):
        client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(**CHAT)
    assert 1 <= int(exc.value.response.headers["retry-after"]) <= 15


def test_master_key_bypasses_limits_and_ip_binding(gateway):
    client = gateway.sdk(MASTER_KEY, ip="127.0.0.7")
    for _ in range(20):
        assert client.chat.completions.create(**CHAT).choices[0].message.content


def test_revoked_key_stops_working_and_ip_gets_a_new_one(gateway):
    key = gateway.key_for("127.0.0.8")
    assert gateway.get("/v1/models", key=key, ip="127.0.0.8")[0] == 200
    out = subprocess.run([sys.executable, "-m", "apiarium", "keys", "revoke", key,
                          "--config", str(gateway.config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: gateway.get("/v1/models", key=key, ip="127.0.0.8")[0] == 401,
                    timeout=5)
    new = gateway.key_for("127.0.0.8")
    assert KEY.match(new) and new != key
    assert gateway.get("/v1/models", key=new, ip="127.0.0.8")[0] == 200


def test_per_key_rpm_from_the_admin_cli(gateway):
    key = gateway.key_for("127.0.0.9")
    out = subprocess.run([sys.executable, "-m", "apiarium", "--config", str(gateway.config),
                          "keys", "set-rpm", key, "2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: json.loads(gateway.get("/v1/keys/me", ip="127.0.0.9")[2])
                    ["rate_limit"]["rpm"] == 2, timeout=5)
    codes = [gateway.post("/v1/chat/completions", CHAT, key=key, ip="127.0.0.9")[0]
             for _ in range(3)]
    assert codes == [200, 200, 429]
    listing = subprocess.run([sys.executable, "-m", "apiarium", "keys", "list", "--json",
                              "--config", str(gateway.config)], capture_output=True, text=True)
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {"key_prefix": key[:6], "ip": "127.0.0.9", "rpm": 2} == \
        {k: v for r in rows if r["ip"] == "127.0.0.9" for k, v in r.items()
         if k in ("key_prefix", "ip", "rpm")}
