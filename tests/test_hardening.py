"""Hardening, seen from outside: bodies over the limit (413 without buffering them), slow
clients cut off, the key store surviving ``kill -9`` mid-issuance, a damaged secret refused
with a clear message, and no key or upstream credential in any log line."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from apiarium.handlers import bodies
from apiarium.keysecret import KeyStoreError
from apiarium.services.keys import KeyService
from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of, request, wait_for

MB = 1024 * 1024
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
SERVER = {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    want = int(length.group(1)) if length else 0
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body[:want]


def push(sock: socket.socket, total: int, chunked: bool = False) -> int:
    """Send up to ``total`` body bytes (1 MB at a time) until the server hangs up."""
    block, sent = b"x" * MB, 0
    sock.settimeout(10)
    try:
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (MB, block) if chunked else block)
            sent += MB
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return sent


def post_head(port: int, extra: str, path: str = "/v1/chat/completions") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Authorization: Bearer {MASTER_KEY}\r\nContent-Type: application/json\r\n"
                  f"{extra}\r\n").encode())
    return sock


@pytest.fixture
def small_body_gateway(make_gateway, fake_openai):
    return make_gateway(openai_models(fake_openai), server={**SERVER, "max_body_mb": 25})


@pytest.mark.subprocess_gateway("measures the gateway process's RSS")
def test_30_mb_body_gets_413_without_being_buffered(small_body_gateway):
    gw = small_body_gateway
    for _ in range(3):                       # warm up: imports, caches, first requests
        assert gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY)[0] == 200
    before = rss_kb(gw.proc.pid)
    for _ in range(3):
        sock = post_head(gw.port, f"Content-Length: {30 * MB}\r\n")
        try:
            status, body = read_response(sock)        # answered on the headers alone
            pushed = push(sock, 30 * MB)              # then the client tries anyway
        finally:
            sock.close()
        err = error_of(body)
        assert status == 413 and err["code"] == "body_too_large"
        assert "30.0 MB" in err["message"] and "25 MB" in err["message"]
    after = rss_kb(gw.proc.pid)
    print(f"\n413 on 3 x 30 MB: RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB "
          f"(growth {(after - before) / 1024:.1f} MB; the client pushed {pushed / MB:.0f} MB "
          f"of the last body before the server hung up)")
    assert after - before < 8 * 1024
    assert gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY)[0] == 200     # still fine


def test_body_exactly_at_the_limit_passes_the_size_check(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "max_body_mb": 0.01})
    limit = int(0.01 * MB)
    padded = json.dumps({**CHAT, "user": ""})
    body = padded.replace('"user": ""', '"user": "' + "u" * (limit - len(padded)) + '"')
    assert len(body) == limit
    assert gw.post("/v1/chat/completions", body, key=MASTER_KEY)[0] == 200
    status, _, raw = gw.post("/v1/chat/completions", body + " ", key=MASTER_KEY)
    assert status == 413 and error_of(raw)["code"] == "body_too_large"


@pytest.mark.subprocess_gateway("measures the gateway process's RSS")
def test_chunked_body_over_the_limit_gets_413_without_being_buffered(make_gateway,
                                                                     fake_openai):
    # without a Content-Length the body is kept up to the limit, so the limit is small here:
    # what must not happen is memory growing with what the client sends beyond it
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "max_body_mb": 2})
    assert gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY)[0] == 200
    before = rss_kb(gw.proc.pid)
    sock = post_head(gw.port, "Transfer-Encoding: chunked\r\n")
    result: list = []
    reader = threading.Thread(target=lambda: result.append(read_response(sock, 60)))
    reader.start()
    try:
        push(sock, 30 * MB, chunked=True)
        reader.join(60)
    finally:
        sock.close()
    after = rss_kb(gw.proc.pid)
    print(f"\nchunked 30 MB: RSS growth {(after - before) / 1024:.1f} MB")
    assert after - before < 8 * 1024
    status, body = result[0]
    assert status == 413 and error_of(body)["code"] == "body_too_large"


def trickle(sock: socket.socket, data: bytes, between=None, pace: float = 1.0) -> float | None:
    """Send ``data`` one byte every ``pace`` seconds; the seconds until the server hung up
    (None: never).  ``between(i)`` runs after byte i."""
    started = time.monotonic()
    try:
        for i in range(len(data)):
            try:
                sock.sendall(data[i:i + 1])
                sock.settimeout(pace)
                if sock.recv(1024) == b"":                  # the server hung up
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - started
            if between:
                between(i)
    finally:
        sock.close()
    return None


def test_slow_headers_are_cut_off(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai),
                      server={**SERVER, "header_timeout_s": 1, "body_timeout_s": 1})
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris/1.0\r\n\r\n"

    def others_are_served(i: int) -> None:                 # meanwhile everyone else is served
        if i == 2:
            assert gw.get("/health")[0] == 200
    cut = trickle(socket.create_connection(("127.0.0.1", gw.port)), head, others_are_served,
                  pace=0.25)
    print(f"\nslowloris (4 bytes/s, header_timeout_s 1): cut off after {cut} s "
          f"(sending the whole head would take {len(head) / 4:g} s)")
    assert cut is not None and 0.9 < cut < 1 + 1.5, cut


@pytest.mark.parametrize(("path", "framing", "keeper"), [
    # an API body of known length: its deadline is kept by handlers/bodies.py's sweep
    ("/v1/chat/completions", "Content-Length: 100", "the sweep"),
    # no length (chunked), or a route that takes no body: Tornado's timer per request
    ("/v1/chat/completions", "Transfer-Encoding: chunked", "Tornado's timer"),
    ("/no/such/route", "Content-Length: 100", "Tornado's timer")])
def test_slow_body_is_cut_off(make_gateway, fake_openai, caplog, path, framing, keeper):
    gw = make_gateway(openai_models(fake_openai),
                      server={**SERVER, "header_timeout_s": 1, "body_timeout_s": 1})
    body = (b"64\r\n" if "chunked" in framing else b"") + b" " * 100
    with caplog.at_level(logging.INFO):
        cut = trickle(post_head(gw.port, framing + "\r\n", path), body, pace=0.25)
    print(f"\nslow body to {path} ({framing}; 4 bytes/s, body_timeout_s 1): cut off after "
          f"{cut} s by {keeper} (the whole body would take 25 s)")
    assert cut is not None and 0.9 < cut < 1 + 1.5, cut
    swept = [r for r in caplog.records if "the body did not arrive within" in r.getMessage()]
    assert len(swept) == (1 if keeper == "the sweep" else 0), swept
    assert gw.get("/health")[0] == 200                      # and the gateway serves on


def test_a_request_refused_on_its_head_does_not_wait_for_its_body(make_gateway, fake_openai):
    """A POST refused before its body is read (a wrong key) is answered at once and its
    connection closed: the unread body, whose deadline no timer and no sweep watches once
    the request is answered, holds nothing open."""
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "body_timeout_s": 60})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
                 f"Authorization: Bearer api-0000000000000000\r\n"
                 f"Content-Length: 100\r\n\r\n".encode())
    cut = trickle(sock, b" " * 100, pace=0.25)
    print(f"\nslow body after a 401: connection closed after {cut} s (body_timeout_s 60)")
    assert cut is not None and cut < 2, cut


def test_body_sweep_leaves_whole_and_unwatched_bodies_alone(make_gateway, fake_openai):
    """The sweep closes nothing but an overdue body: a finished request, a request still
    reading within its time, and an answer being streamed are left alone."""
    gw = make_gateway(openai_models(fake_openai),
                      server={**SERVER, "header_timeout_s": 5, "body_timeout_s": 3})
    sock = post_head(gw.port, "Content-Length: 100\r\n")
    sock.sendall(b" " * 10)                                  # 10 of 100 bytes, in time
    deadline = time.monotonic() + 5
    while len(gw.app.services.inflight) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    services = gw.app.services
    assert bodies.sweep(services, 3) == 0                    # within its 3 s: left alone
    assert gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY)[0] == 200
    sock.close()


# --------------------------------------------------------------------------- kill -9

async def _issue(port: int, ip: str) -> str | None:
    """GET /v1/keys/me from ``ip``; the key, or None if the server died first."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    except OSError:
        return None
    try:
        writer.write(f"GET /v1/keys/me HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    except (TimeoutError, OSError):
        return None
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    return json.loads(body)["key"]


@pytest.mark.subprocess_gateway("kill -9 mid-issuance")
def test_kill_9_during_500_concurrent_issuances_loses_no_returned_key(make_gateway,
                                                                       fake_openai):
    gw = make_gateway(openai_models(fake_openai))
    ips = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)]
    results: dict[str, str | None] = {}
    killed_after: list[int] = []

    async def one(ip: str) -> None:
        results[ip] = await _issue(gw.port, ip)
        answered = sum(1 for k in results.values() if k)
        if not killed_after and answered >= 120:
            gw.proc.send_signal(signal.SIGKILL)             # mid-storm
            killed_after.append(answered)

    async def storm() -> None:
        await asyncio.gather(*(one(ip) for ip in ips))
    asyncio.run(storm())
    gw.proc.wait(10)
    assert gw.proc.returncode == -signal.SIGKILL
    gw.proc = None
    got = {key: ip for ip, key in results.items() if key}
    assert len(got) == len(set(got.values()))             # one key per client
    print(f"\nkill -9 after {killed_after[0]} answers; {len(got)} of 500 clients got a key")
    assert len(got) < 500, "the kill came too late to test anything"

    gw.start()                                       # the same database
    db = gw.dir.parent / "data" / "apiarium.sqlite3"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT ip FROM keys WHERE status = 'active' GROUP BY ip "
                           "HAVING COUNT(*) > 1").fetchall() == []
        assert con.execute("SELECT key_hash FROM keys GROUP BY key_hash "
                           "HAVING COUNT(*) > 1").fetchall() == []
        rows = con.execute("SELECT COUNT(*) FROM keys").fetchone()[0]
    finally:
        con.close()
    assert rows >= len(got)

    async def check() -> list:
        sem = asyncio.Semaphore(50)

        async def one(key: str, ip: str):
            async with sem:
                return await asyncio.to_thread(
                    request, gw.url + "/v1/models", "GET", None,
                    {"Authorization": f"Bearer {key}"}, ip)
        return await asyncio.gather(*(one(k, ip) for k, ip in got.items()))
    statuses = [r[0] for r in asyncio.run(check())]
    print(f"after restart: {rows} keys in the database, {statuses.count(200)} of the "
          f"{len(got)} returned keys authenticate")
    assert statuses == [200] * len(got)
    for key, ip in list(got.items())[:25]:                # and the same key comes back
        assert gw.key_for(ip) == key


# --------------------------------------------------------------------------- secrets

def test_damaged_secret_is_refused_with_a_clear_message(tmp_path, make_gateway, fake_openai):
    db = tmp_path / "k.sqlite3"

    async def go():
        store = await KeyService(db).open()
        key, _ = await store.key_for_ip("192.0.2.1")
        await store.close()
        secret = (tmp_path / "k.sqlite3.secret")
        assert secret.stat().st_mode & 0o777 == 0o600
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left
        again = await KeyService(db).open()
        assert (await again.key_for_ip("192.0.2.1"))[0] == key
        await again.close()
        secret.write_text("")                          # as a crash mid-write used to leave it
        with pytest.raises(KeyStoreError) as exc:
            await KeyService(db).open()
        assert "damaged" in str(exc.value) and "secret" in str(exc.value)
    asyncio.run(go())

    gw = make_gateway(openai_models(fake_openai), start=False)
    gw.start()
    gw.stop()
    (gw.dir.parent / "data" / "apiarium.sqlite3.secret").write_text("zz\n")
    out = subprocess.run([sys.executable, "-m", "apiarium", "serve", "--config", str(gw.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "key secret is damaged" in out.stderr
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- logs

@pytest.mark.subprocess_gateway("all the process prints; exit code and 'stopped' after SIGTERM")
def test_no_key_or_credential_in_any_log_line(make_gateway, fake_openai):
    provider_key = "sk-provider-secret-0123456789abcdef"
    fake_openai.api_key = provider_key
    gw = make_gateway(openai_models(fake_openai))
    try:
        key = gw.key_for("127.0.0.21")
        other = gw.key_for("127.0.0.22")
        client = gw.sdk(key, ip="127.0.0.21")
        client.chat.completions.create(**CHAT)
        gw.post("/v1/chat/completions", CHAT, key=other, ip="127.0.0.21")      # ip_mismatch
        gw.post("/v1/chat/completions", CHAT, key=key[:-1] + "0", ip="127.0.0.21")
        gw.get("/v1/models?api_key=" + key, key=key, ip="127.0.0.21")
        # the upstream refuses the gateway's own key, quoting it, and fails with it in a 500
        fake_openai.fail_next(401, {"error": {"message": f"Incorrect API key provided: "
                                                        f"{provider_key}", "type": "x"}})
        gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY, ip="127.0.0.21")
        fake_openai.fail_next(500, f"internal error for key {provider_key}")
        gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY, ip="127.0.0.21")
        fake_openai.fail_next(400, {"error": {"message": "bad request", "type": "x"}})
        gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY, ip="127.0.0.21")
        gw.get("/v1/keys/me", ip="127.0.0.23", headers={"X-Forwarded-For": "1.2.3.4"})
        subprocess.run([sys.executable, "-m", "apiarium", "keys", "set-rpm", key, "9",
                        "--config", str(gw.config)], check=True, capture_output=True)
        wait_for(lambda: any("key store changed" in line for line in gw.log), timeout=5)
    finally:
        code = gw.stop()
    log = "\n".join(gw.log)
    assert code == 0 and "stopped" in log
    for secret in (key, other, key[:-1] + "0", MASTER_KEY, provider_key):
        assert secret not in log, secret
    assert key[4:] not in log and other[4:] not in log and provider_key[3:] not in log
    assert key[:6] in log                                 # a short prefix is fine
