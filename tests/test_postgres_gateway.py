"""Two real gateway processes on one PostgreSQL database and one shared secret file, driven
over HTTP from distinct client addresses: the same key from either, an operator's revoke
reaching both within 2 s (LISTEN/NOTIFY), and PostgreSQL stopping under them: a new visitor
gets 503 ``storage_unavailable``, a known key keeps working, ``/health`` says the database is
down, and issuance, and the listening, resume once the server is back.  Nothing they log
shows the database password."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import openai_models
from tests.support import error_of, request, wait_for

CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
USAGE_FAILED = "WARNING apiarium: writing usage: postgresql://apiarium@"


def keys_me(gw, ip: str):
    return request(gw.url + "/v1/keys/me", ip=ip)


def database_state(gw) -> str:
    return json.loads(gw.get("/health")[2])["backends"]["database"]["state"]


def revoke_reaches_all(gws: list, key: str, ip: str) -> None:
    """``apiarium keys revoke KEY`` (the CLI, on the first gateway's configuration and so on
    the shared database): every gateway refuses the key within 2 s (told at once by
    LISTEN/NOTIFY)."""
    out = subprocess.run([sys.executable, "-m", "apiarium", "keys", "revoke", key,
                          "--config", str(gws[0].config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    revoked = time.monotonic()
    for gw in gws:
        assert wait_for(lambda gw=gw: gw.get("/v1/models", key=key, ip=ip)[0] == 401,
                        timeout=5, interval=0.05)
    assert time.monotonic() - revoked < 2.0


@pytest.mark.subprocess_gateway("several gateway processes share one PostgreSQL database")
def test_two_gateways_share_postgresql_and_ride_out_its_outage(
        make_gateway, fake_openai, postgres_url, postgres_ctl, tmp_path):
    secret = tmp_path / "shared" / "apiarium.secret"
    gws = [make_gateway(openai_models(fake_openai), database=postgres_url,
                        secret_file=str(secret)) for _ in range(2)]
    one, two = gws
    key = one.key_for("127.0.0.2")
    assert two.key_for("127.0.0.2") == key                     # the same key from either
    other = two.key_for("127.0.0.4")
    status, _, _ = two.post("/v1/chat/completions", CHAT, key=key, ip="127.0.0.2")
    assert status == 200

    # an operator's revoke, made with the CLI on the shared database, reaches both
    revoke_reaches_all(gws, key, "127.0.0.2")

    postgres_ctl("stop")
    try:
        status, _, body = keys_me(one, "127.0.0.3")
        err = error_of(body)
        assert (status, err["code"], err["type"]) == (503, "storage_unavailable",
                                                      "server_error")
        assert "Keys already issued keep working" in err["message"]
        for gw in gws:                                        # a known key: from memory
            status, _, _ = gw.post("/v1/chat/completions", CHAT, key=other, ip="127.0.0.4")
            assert status == 200
            assert json.loads(keys_me(gw, "127.0.0.4")[2])["key"] == other
        for gw in gws:               # /health says so: a refresh failed, after the listening
            assert wait_for(lambda gw=gw: database_state(gw) == "down", timeout=3)
        # and the usage of those chats could not be written (a flush every 2 s)
        assert wait_for(lambda: [ln for ln in one.log if USAGE_FAILED in ln], timeout=10)
    finally:
        postgres_ctl("start")
    status, _, body = wait_for(lambda: (r := keys_me(one, "127.0.0.3"))[0] == 200 and r,
                               timeout=10)
    assert two.key_for("127.0.0.3") == json.loads(body)["key"]
    for gw in gws:
        assert wait_for(lambda gw=gw: database_state(gw) == "ok", timeout=3)
        assert wait_for(lambda gw=gw: [ln for ln in gw.log if "key changes: the database "
                                       "tells at once" in ln][1:], timeout=5)   # listening again
    # listening again: a revoke after the outage reaches both at once too
    revoke_reaches_all(gws, other, "127.0.0.4")

    password = urlsplit(postgres_url).password
    for gw in gws:
        gw.stop()
        log = "\n".join(gw.log)
        assert password not in log
    log = "\n".join(one.log)
    assert "storage_unavailable" in log and "Traceback" not in log
    assert USAGE_FAILED in log
