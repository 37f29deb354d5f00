"""Running it: graceful SIGTERM under load, SIGHUP reloads, /metrics, usage and credits."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import openai_models
from tests.support import MASTER_KEY, request, wait_for

MSG = [{"role": "user", "content": "hi"}]
LONG = " ".join(f"word{i}" for i in range(100))


async def read_stream(url: str, key: str = MASTER_KEY, **body) -> list[bytes]:
    """One streamed chat: the list of `data:` payloads received, in order."""
    payload = {"model": "gpt-5", "messages": MSG, "stream": True, **body}
    async with aiohttp.ClientSession() as http, http.post(
            url + "/v1/chat/completions", json=payload,
            headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200, await resp.text()
        frames = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                frames.append(line[6:].strip())
        return frames


def usage_rows(gateway) -> dict:
    db = sqlite3.connect(gateway.dir.parent / "data" / "apiarium.sqlite3")
    db.row_factory = sqlite3.Row
    return {r["key_hash"]: dict(r) for r in db.execute("SELECT * FROM usage")}


@pytest.mark.subprocess_gateway("sends SIGTERM under load; checks the exit code")
def test_sigterm_lets_50_streams_finish_then_exits_0(gateway, fake_openai):
    fake_openai.stream_events, fake_openai.stream_delay = 20, 0.1      # 2 s per stream
    fake_openai.reply_text = LONG

    async def main():
        streams = [asyncio.ensure_future(read_stream(gateway.url)) for _ in range(50)]
        while len(fake_openai.requests) < 50:             # all 50 under way upstream
            await asyncio.sleep(0.02)
        gateway.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:                                       # soon no longer accepting
            try:
                socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            await asyncio.sleep(0.02)
        assert not all(s.done() for s in streams)         # refused while the streams go on
        return await asyncio.gather(*streams)

    results = asyncio.run(main())
    assert gateway.proc.wait(15) == 0
    for frames in results:
        assert frames[-1] == b"[DONE]"
        assert len(frames) == 20 + 3                          # role, 20 pieces, finish, DONE
    rows = usage_rows(gateway)
    assert rows["master"]["requests"] == 50
    assert rows["master"]["prompt_tokens"] == 50              # 1 word each, metered
    assert any("shutting down" in line for line in gateway.log)


@pytest.mark.subprocess_gateway("sends SIGTERM mid-stream; checks the exit code")
def test_streams_longer_than_the_grace_end_with_an_error_event(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"shutdown_grace_s": 1})
    fake_openai.stream_events, fake_openai.stream_delay = 50, 0.1      # 5 s: longer than 1 s
    fake_openai.reply_text = LONG

    async def main():
        task = asyncio.ensure_future(read_stream(gw.url))
        while not fake_openai.requests:
            await asyncio.sleep(0.02)
        gw.proc.send_signal(signal.SIGTERM)
        return await task
    frames = asyncio.run(main())
    assert gw.proc.wait(15) == 0
    last = json.loads(frames[-1])
    assert last["error"]["code"] == "server_shutting_down" and 3 < len(frames) < 50


@pytest.mark.subprocess_gateway("SIGHUP mid-stream, through the process's signal handler")
def test_sighup_adds_a_model_without_disturbing_a_stream(gateway, fake_openai):
    fake_openai.stream_events, fake_openai.stream_delay = 20, 0.1
    fake_openai.reply_text = LONG
    models = openai_models(fake_openai)

    async def main():
        task = asyncio.ensure_future(read_stream(gateway.url))
        while not fake_openai.requests:
            await asyncio.sleep(0.02)
        models["models"]["gpt-new"] = {"provider": "up", "upstream": "gpt-5"}
        gateway.write_models(models)
        gateway.proc.send_signal(signal.SIGHUP)
        started = time.monotonic()
        while True:
            status, _, body = request(gateway.url + "/v1/models/gpt-new",
                                      headers={"Authorization": f"Bearer {MASTER_KEY}"})
            if status == 200:
                break
            assert time.monotonic() - started < 1.0, body
            await asyncio.sleep(0.05)
        assert len(fake_openai.requests) == 1             # the stream is still going
        return await task
    frames = asyncio.run(main())
    assert frames[-1] == b"[DONE]" and len(frames) == 23
    assert gateway.sdk(MASTER_KEY).chat.completions.create(model="gpt-new", messages=MSG)

    # a broken edit: rejected, logged with its line, the old catalog stays
    gateway.models_path.write_text(gateway.models_path.read_text()
                                   + "  broken: {provider: nowhere}\n")
    gateway.proc.send_signal(signal.SIGHUP)
    line = wait_for(lambda: [ln for ln in gateway.log if "reload rejected" in ln], timeout=3)
    assert line and f"{gateway.models_path}:" in line[0] and "nowhere" in line[0]
    lineno = len(gateway.models_path.read_text().splitlines())
    assert f"models.yaml:{lineno}:" in line[0]
    assert gateway.sdk(MASTER_KEY).chat.completions.create(model="gpt-new", messages=MSG)
    assert gateway.get("/v1/models/broken", key=MASTER_KEY)[0] == 404


def metrics(gateway) -> dict:
    status, headers, body = request(gateway.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families, name, **labels) -> float:
    family = families[name]
    return sum(s.value for s in family.samples
               if s.name == name + "_total" or s.name == name
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_what_was_sent(gateway, fake_openai):
    key = gateway.key_for("127.0.0.20")
    client = gateway.sdk(key, ip="127.0.0.20")
    for _ in range(3):
        client.chat.completions.create(model="gpt-5", messages=MSG)
    list(client.chat.completions.create(model="gpt-5", messages=MSG, stream=True))
    for _ in range(2):                                     # 4 used: the 5th and 6th are 429
        gateway.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG}, key=key,
                     ip="127.0.0.20")
    gateway.post("/v1/chat/completions", {"model": "nope", "messages": MSG}, key=MASTER_KEY)
    fams = metrics(gateway)
    assert sample(fams, "apiarium_requests", endpoint="chat", model="gpt-5", status="200") == 4
    # refused before the body is read: the model is not known yet
    assert sample(fams, "apiarium_requests", endpoint="chat", model="-", status="429") == 2
    assert sample(fams, "apiarium_requests", endpoint="chat", status="404") == 1
    assert sample(fams, "apiarium_rate_limited", reason="rpm") == 2
    assert sample(fams, "apiarium_keys") == 1
    assert sample(fams, "apiarium_active_streams") == 0
    hist = [s for s in fams["apiarium_upstream_latency_seconds"].samples
            if s.name.endswith("_count") and s.labels["provider"] == "up"]
    assert hist and hist[0].value == 4                   # the four that reached the upstream
    ttfb = [s for s in fams["apiarium_upstream_ttfb_seconds"].samples
            if s.name.endswith("_count") and s.labels["provider"] == "up"]
    assert ttfb and ttfb[0].value == 4


def test_access_log_has_one_structured_line_per_request(gateway):
    gateway.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG}, key=MASTER_KEY)
    line = wait_for(lambda: [ln for ln in gateway.log
                             if "POST /v1/chat/completions 200" in ln], timeout=3)[0]
    for field in ("req_", "ip=127.0.0.1", "model=gpt-5", "bytes=", "upstream_ms="):
        assert field in line, line
    assert MASTER_KEY not in "\n".join(gateway.log)


def test_video_credits_follow_the_configured_prices(make_gateway, fake_openai, fake_gemini):
    gemini = fake_gemini
    gemini.veo_polls_until_done = 0
    catalog = openai_models(fake_openai, providers={
        "google": {"kind": "gemini", "base_url": gemini.base_url, "api_key": gemini.api_key,
                   "poll_interval_s": 0.05}}, models={
        "veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001", "type": "video",
                  "credits": {"video_second": 5, "resolution": {"720p": 1, "1080p": 3}}}})
    gw = make_gateway(catalog, rate_limit={"rpm": 100, "daily_credits": 100,
                                           "endpoints": {"videos": "off"}})
    key = gw.key_for("127.0.0.30")

    def spend(**fields):
        before = json.loads(gw.get("/v1/keys/me", ip="127.0.0.30")[2])["usage"]["credits"]
        status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "x",
                                                            **fields}, key=key,
                                 ip="127.0.0.30")
        assert status == 200, raw
        me = json.loads(gw.get("/v1/keys/me", ip="127.0.0.30")[2])
        return me["usage"]["credits"] - before, me

    short, _ = spend(duration_seconds=4, resolution="720p")
    assert short == 4 * 5 * 1                                     # 20 credits
    # 8 s at 1080p would cost 120 and 80 are left: refused before it reaches the upstream
    # (credits are reserved at the most a request can cost, so no key overshoots its day)
    polls = len(gemini.requests)
    status, headers, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "duration_seconds": 8, "resolution": "1080p"},
        key=key, ip="127.0.0.30")
    err = json.loads(raw)["error"]
    assert status == 429 and err["code"] == "insufficient_quota"
    assert headers["x-should-retry"] == "false" and "midnight UTC" in err["message"]
    assert len(gemini.requests) == polls
    long, me = spend(duration_seconds=8, resolution="720p")
    assert long == 8 * 5 * 1                                      # 40 credits
    assert me["usage"]["video_seconds"] == 12 and me["usage"]["requests"] == 2
    assert me["credits"] == {"daily_limit": 100, "remaining": 40}
    # usage reaches the database within a few seconds, and survives a restart
    assert wait_for(lambda: usage_rows(gw).get(me_hash(gw, key), {}).get("credits") == 60,
                    timeout=5)
    gw.restart()
    status, _, _ = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "duration_seconds": 8, "resolution": "1080p"},
        key=key, ip="127.0.0.30")
    assert status == 429                                           # 60 + 120 > 100
    status, _, _ = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "x",
                                                      "duration_seconds": 8}, key=key,
                           ip="127.0.0.30")
    assert status == 200                                           # 60 + 40: all 100 spent


def me_hash(gw, key: str) -> str:
    from apiarium.keysecret import hash_key, load_secret
    return hash_key(load_secret(gw.dir.parent / "data" / "apiarium.sqlite3.secret"), key)


def test_chat_tokens_are_metered_streamed_or_not(make_gateway, fake_openai):
    gateway = make_gateway(openai_models(fake_openai), rate_limit={"daily_credits": 0})
    key = gateway.key_for("127.0.0.31")
    client = gateway.sdk(key, ip="127.0.0.31")
    fake_openai.reply_text = "one two three"
    client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "a b"}])
    chunks = list(client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert all(c.usage is None for c in chunks)        # metered, but not shown unasked
    me = json.loads(gateway.get("/v1/keys/me", ip="127.0.0.31")[2])
    assert me["usage"]["requests"] == 2
    assert me["usage"]["prompt_tokens"] == 4 and me["usage"]["completion_tokens"] == 6
    assert me["usage"]["credits"] == pytest.approx(10 / 1000)     # 1 credit per 1k tokens
    assert me["credits"] == {"daily_limit": None, "remaining": None}


def test_a_reload_says_which_changes_wait_for_a_restart(make_gateway, fake_openai):
    """SIGHUP applies what it can; a setting the running gateway took at start (its port,
    its timeouts, its stores) is named in a warning and keeps its old value until a restart."""
    gw = make_gateway(openai_models(fake_openai))
    before = gw.app.services.settings
    settings = yaml.safe_load(gw.config.read_text())
    settings["server"].update(port=before.port + 1, body_timeout_s=7)
    settings["rate_limit"] = {**settings.get("rate_limit", {}), "rpm": 9,
                              "backend_timeout_ms": 900}
    gw.config.write_text(yaml.safe_dump(settings))
    assert gw.reload() is True
    warned = [line for line in gw.log if "it is read at start" in line]
    named = {name for name in ("server.port", "server.body_timeout_s",
                               "rate_limit.backend_timeout_ms", "rate_limit.rpm")
             if any(f"{name} changed" in line for line in warned)}
    assert named == {"server.port", "server.body_timeout_s", "rate_limit.backend_timeout_ms"}
    assert gw.app.services.settings.rpm == 9                    # applied by the reload
    assert gw.get("/health")[0] == 200                           # still on its old port


@pytest.mark.subprocess_gateway("sends SIGTERM to the process while it starts")
def test_a_sigterm_while_starting_is_held_then_drains(make_gateway, fake_openai):
    """A SIGTERM that comes while the gateway starts (a worker whose supervisor is killed
    just then gets one from PR_SET_PDEATHSIG) stops it once it serves, cleanly: it used
    to end the process on the spot, without its drain, its usage or its log line."""
    gw = make_gateway(openai_models(fake_openai), start=False)
    proc = subprocess.Popen([sys.executable, "-m", "apiarium", "serve", "--demo", "--config",
                             str(gw.config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=gw.env)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:      # the demo line is written by Gateway.start, before it serves
        seen.append(line)
        if "demo mode:" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "apiarium: stopped" in out
