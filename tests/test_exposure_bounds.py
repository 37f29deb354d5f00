"""Exposure (issue 22, "bounds everywhere a user sends a size"), each tried against a real
gateway and the fakes on loopback:

- M7: a video (or image) prompt is at most ``media.max_prompt_bytes``; failed and expired video
  jobs are pruned ``media.ttl_hours`` later, so what a key lists stays bounded.
- M8: an embeddings request's answer is at most ``limits.max_embedding_floats`` numbers
  (inputs x dimensions); vectors are asked of an OpenAI-compatible upstream as base64 and
  decoded only for a client that wants floats.
- L1: a ``Range`` of thousands of digits on ``/media/{name}`` (no key) or a video's content is
  never a 500: an absurd last position is the rest of the file, an absurd first one a 416.
- L3: a value a client sent is quoted in an error or a log line cut to 200 characters
  (``errors.echo``): a 1 MB field makes a small 400 and a short log line.
- L4: a client that stops reading a stream is cut after ``server.write_timeout_s``, and the
  stream's upstream connection closed (its usage booked).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import uuid

import pytest

from apiarium import app as app_module
from tests.conftest import openai_models
from tests.fakes.base import embedding_vector
from tests.support import MASTER_KEY, error_of, request, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

FAST = 20                        # ms between the SDK's polls


def media_models(gm) -> dict:
    google = {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
              "poll_interval_s": 0.02, "timeout_s": 30}
    return {"providers": {"google": google},
            "models": {"veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001",
                                 "type": "video"},
                       "gem-image": {"provider": "google", "type": "image",
                                     "upstream": "gemini-3-pro-image-preview"}}}


def media_files(gw) -> list[str]:
    folder = gw.dir.parent / "data" / "media"
    return sorted(os.listdir(folder)) if folder.exists() else []


# ---------------------------------------------------------------------------- M7: prompts

def multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), \
        f"multipart/form-data; boundary={boundary}"


def test_a_prompt_over_the_cap_is_a_400_on_every_media_endpoint(make_gateway, fake_gemini):
    gw = make_gateway(media_models(fake_gemini), rate_limit={
        "rpm": 1000, "endpoints": {"videos": "1000/hour", "images": "1000/hour"}})
    ip = "127.0.6.1"
    key = gw.key_for(ip)
    huge = "a" * (4 * 1024 * 1024)                 # the 24 MB, scaled down
    euros = "€" * 2731                             # 2,731 characters, 8,193 bytes
    for prompt in (huge, "b" * 8193, euros):
        body = json.dumps({"model": "veo-3", "prompt": prompt}).encode()
        form, ctype = multipart({"model": "veo-3", "prompt": prompt})
        attempts = [("/v1/videos", body, "application/json"),
                    ("/v1/videos", form, ctype),
                    ("/v1/videos/generations", body, "application/json"),
                    ("/v1/images/generations",
                     json.dumps({"model": "gem-image", "prompt": prompt}).encode(),
                     "application/json")]
        for path, data, content_type in attempts:
            status, _, raw = gw.post(path, data, key=key, ip=ip,
                                     headers={"Content-Type": content_type})
            err = error_of(raw)
            assert (status, err["param"], err["code"]) == \
                (400, "prompt", "string_above_max_length"), (path, err)
            assert "8,192 bytes" in err["message"] and "media.max_prompt_bytes" in err["message"]
            assert len(raw) < 1000
        for model in ("veo-3", "gem-image"):          # chat with a media model: the messages
            status, _, raw = gw.post("/v1/chat/completions", {
                "model": model, "messages": [{"role": "user", "content": prompt}]},
                key=key, ip=ip)
            err = error_of(raw)
            assert (status, err["param"]) == (400, "messages"), err
    assert fake_gemini.requests == []
    assert json.loads(gw.get("/v1/videos", key=key, ip=ip)[2])["data"] == []
    # at the cap it is taken, and a full page of such jobs stays small
    status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "€" * 2730 + "ab"},
                             key=key, ip=ip)
    assert status == 200, raw
    status, _, raw = gw.get("/v1/videos?limit=100", key=key, ip=ip)
    assert status == 200 and len(json.loads(raw)["data"]) == 1 and len(raw) < 10_000
    status, _, raw = gw.get("/v1/videos?limit=101", key=key, ip=ip)
    assert status == 400 and error_of(raw)["param"] == "limit"


def test_max_prompt_bytes_is_a_setting(make_gateway, fake_gemini):
    gw = make_gateway(media_models(fake_gemini), media={"max_prompt_bytes": 16})
    status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "x" * 17},
                             key=MASTER_KEY)
    assert status == 400 and "at most 16 bytes" in error_of(raw)["message"]
    status, _, raw = gw.post("/v1/videos", {"model": "veo-3", "prompt": "x" * 16},
                             key=MASTER_KEY)
    assert status == 200, raw


# ---------------------------------------------------------------------------- M7: pruning

def test_failed_and_expired_jobs_are_pruned_a_ttl_later(make_gateway, fake_gemini,
                                                         monkeypatch):
    monkeypatch.setattr(app_module, "HOUSEKEEPING_S", 0.1)
    monkeypatch.setattr(app_module, "PRUNE_S", 0.0)         # every round, not every minute
    gw = make_gateway(media_models(fake_gemini), rate_limit={"rpm": 100})
    client = gw.sdk(MASTER_KEY)
    fake_gemini.veo_filtered_next()
    failed = client.videos.create_and_poll(model="veo-3", prompt="refused",
                                           poll_interval_ms=FAST)
    done = client.videos.create_and_poll(model="veo-3", prompt="kept", poll_interval_ms=FAST)
    assert (failed.status, done.status) == ("failed", "completed")
    assert len(media_files(gw)) == 1
    ttl = 24 * 3600
    jobs = gw.app.services.jobs
    start = time.time()

    def status_of(job_id: str) -> tuple[int, str | None]:
        status, _, raw = gw.get(f"/v1/videos/{job_id}", key=MASTER_KEY)
        return status, error_of(raw)["code"] if status != 200 else None

    # a ttl after: the failed job is gone; the completed one expired, and says so
    jobs.clock = lambda: time.time() - start + done.completed_at + ttl + 60
    assert wait_for(lambda: status_of(failed.id) == (404, "video_not_found"), timeout=10)
    assert status_of(done.id) == (200, None)
    status, _, raw = request(f"{gw.url}/v1/videos/{done.id}/content",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert status == 404 and error_of(raw)["code"] == "video_expired"
    # a job that fails now is kept its ttl
    fake_gemini.veo_filtered_next()
    fresh = client.videos.create_and_poll(model="veo-3", prompt="again", poll_interval_ms=FAST)
    assert fresh.status == "failed"
    # a ttl after it expired (and less than a ttl after the fresh one failed): the completed
    # job and its file are gone
    jobs.clock = lambda: time.time() - start + done.completed_at + 2 * ttl + 1
    assert wait_for(lambda: status_of(done.id) == (404, "video_not_found"), timeout=10)
    assert media_files(gw) == []
    assert [v.id for v in client.videos.list()] == [fresh.id]
    assert any("failed or expired jobs removed" in line for line in gw.log)


# ---------------------------------------------------------------------------- M8: embeddings

EMBED = "text-embedding-3-large"


def embedding_gateway(make_gateway, oa, gm, **settings):
    return make_gateway(openai_models(oa, providers={
        "google": {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key}},
        models={EMBED: {"provider": "up", "type": "embedding"},
                "gem-embed": {"provider": "google", "upstream": "gemini-embedding-001",
                              "type": "embedding"}}),
        rate_limit={"rpm": 1000}, **settings)


def float32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_inputs_times_dimensions_over_the_cap_is_a_400_before_anything_is_sent(
        make_gateway, fake_openai, fake_gemini):
    gw = embedding_gateway(make_gateway, fake_openai, fake_gemini)
    ip = "127.0.6.2"
    key = gw.key_for(ip)
    for model in (EMBED, "gem-embed"):
        # the 18 KB request that made a 138 MB answer
        status, _, raw = gw.post("/v1/embeddings", {"model": model, "input": ["a"] * 2048,
                                                    "dimensions": 3072}, key=key, ip=ip)
        err = error_of(raw)
        assert (status, err["param"]) == (400, "input"), err
        for number in ("2,048 inputs of 3,072 numbers each (`dimensions`)", "6,291,456 in all",
                       "at most 262,144 numbers", "limits.max_embedding_floats",
                       "at most 85 inputs"):
            assert number in err["message"], err["message"]
        # without `dimensions` a vector counts 3,072 numbers
        status, _, raw = gw.post("/v1/embeddings", {"model": model, "input": ["a"] * 86},
                                 key=key, ip=ip)
        assert status == 400 and "(counted so when `dimensions` is not given)" in \
            error_of(raw)["message"]
        status, _, raw = gw.post("/v1/embeddings", {"model": model, "input": "a",
                                                    "dimensions": 10 ** 9}, key=key, ip=ip)
        err = error_of(raw)
        assert (status, err["param"]) == (400, "dimensions") and "at most 262,144 `dimensions`" \
            in err["message"]
    assert fake_openai.requests == [] and fake_gemini.requests == []
    # at the cap: 2,048 vectors of 128 numbers, ~5.5 MB as floats, ~1.5 MB as base64
    for fmt, most in (("float", 7_000_000), ("base64", 2_000_000)):
        status, _, raw = gw.post("/v1/embeddings", {
            "model": EMBED, "input": ["a"] * 2048, "dimensions": 128, "encoding_format": fmt},
            key=key, ip=ip)
        assert status == 200 and len(raw) < most, (fmt, status, len(raw))
        assert len(json.loads(raw)["data"]) == 2048
    # the setting; the master key is not bound by it
    status, _, raw = gw.post("/v1/embeddings", {"model": EMBED, "input": ["a"] * 3,
                                                "dimensions": 200}, key=MASTER_KEY)
    assert status == 200, raw
    small = embedding_gateway(make_gateway, fake_openai, fake_gemini,
                              limits={"max_embedding_floats": 500})
    status, _, raw = small.post("/v1/embeddings", {"model": EMBED, "input": ["a"] * 3,
                                                   "dimensions": 200}, key=small.key_for(ip),
                                ip=ip)
    assert status == 400 and "at most 500 numbers per request" in error_of(raw)["message"]


def test_vectors_are_asked_as_base64_and_decoded_only_for_float_clients(
        make_gateway, fake_openai, fake_gemini):
    gw = embedding_gateway(make_gateway, fake_openai, fake_gemini)
    ip = "127.0.6.3"
    key = gw.key_for(ip)
    texts = ["the waggle dance", "a comb of wax", "pollen baskets"]
    want = {t: float32(embedding_vector(t, 256))
            for t in texts}
    # the openai SDK asks for base64 and decodes it: the float32 values the upstream sent
    client = gw.sdk(key, ip=ip)
    got = client.embeddings.create(model=EMBED, input=texts)
    assert [float32(d.embedding) for d in got.data] == [want[t] for t in texts]
    assert fake_openai.last().json["encoding_format"] == "base64"
    # base64 asked: the upstream's strings, relayed as they came
    status, _, raw = gw.post("/v1/embeddings", {"model": EMBED, "input": texts,
                                                "encoding_format": "base64"}, key=key, ip=ip)
    assert status == 200
    assert [d["embedding"] for d in json.loads(raw)["data"]] == \
        [base64.b64encode(want[t]).decode() for t in texts]
    # floats asked (or the default): asked as base64 upstream all the same, decoded here
    for extra in ({"encoding_format": "float"}, {}):
        status, _, raw = gw.post("/v1/embeddings", {"model": EMBED, "input": texts, **extra},
                                 key=key, ip=ip)
        assert status == 200 and fake_openai.last().json["encoding_format"] == "base64"
        vectors = [d["embedding"] for d in json.loads(raw)["data"]]
        assert all(isinstance(v, list) and len(v) == 256 for v in vectors)
        assert [float32(v) for v in vectors] == [want[t] for t in texts]
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [float32(d.embedding) for d in floats.data] == [want[t] for t in texts]


# ---------------------------------------------------------------------------- L1: Range

def test_a_range_of_5000_digits_is_never_a_500(make_gateway, fake_gemini):
    gw = make_gateway(media_models(fake_gemini), rate_limit={"rpm": 100})
    status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "a bee"},
                             key=MASTER_KEY)
    assert status == 200, raw
    name = json.loads(raw)["data"][0]["url"].rsplit("/", 1)[1]
    (job,) = json.loads(gw.get("/v1/videos", key=MASTER_KEY)[2])["data"]
    huge = "9" * 5000
    for path, headers in ((f"/media/{name}", {}),
                          (f"/v1/videos/{job['id']}/content",
                           {"Authorization": f"Bearer {MASTER_KEY}"})):
        status, _, whole = request(gw.url + path, headers=headers, ip="127.0.6.4")
        assert status == 200 and len(whole) > 1000
        for spec, want in ((f"bytes=0-{huge}", 200), (f"bytes=-{huge}", 200),
                           (f"bytes=1-{huge}", 206), (f"bytes={huge}-", 416),
                           (f"bytes={huge}-{huge}1", 416), (f"bytes={huge}-3", 200),
                           ("bytes=0-9", 206)):
            status, got, body = request(gw.url + path, headers={**headers, "Range": spec},
                                        ip="127.0.6.4")
            assert status == want, (path, spec[:20], status, body[:200])
            if status == 416:
                err = error_of(body)
                assert err["code"] == "range_not_satisfiable" and len(body) < 400
                assert got["content-range"] == f"bytes */{len(whole)}"
            elif spec == "bytes=0-9":
                assert body == whole[:10]
            elif status == 206:
                assert body == whole[1:] and got["content-range"] == \
                    f"bytes 1-{len(whole) - 1}/{len(whole)}"
            else:
                assert body == whole
    assert not any("Traceback" in line or "unexpected error" in line for line in gw.log)


# ---------------------------------------------------------------------------- L3: echoes

MB = 1024 * 1024


def test_a_1_mb_value_is_echoed_cut_in_the_error_and_the_log(make_gateway, fake_openai,
                                                             fake_gemini):
    gw = make_gateway(openai_models(fake_openai, providers={
        "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key}},
        models={EMBED: {"provider": "up", "type": "embedding"},
                "gem-chat": {"provider": "google", "upstream": "gemini-2.5-flash"},
                "gem-image": {"provider": "google", "type": "image",
                              "upstream": "gemini-3-pro-image-preview"}}),
        rate_limit={"rpm": 1000, "daily_credits": 0, "endpoints": {"images": "1000/hour"}})
    ip = "127.0.6.5"
    key = gw.key_for(ip)
    big = "Z" * MB
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    attempts = [
        ("/v1/embeddings", {"model": EMBED, "input": "a", "encoding_format": big},
         400, "encoding_format"),
        ("/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": [7] * (MB // 3)},
         400, "dimensions"),
        ("/v1/chat/completions", {"model": big, **chat}, 404, "model"),
        ("/v1/images/generations", {"model": "gem-image", "prompt": "x", "size": big},
         400, "size"),
        ("/v1/images/generations", {"model": "gem-image", "prompt": "x",
                                    "response_format": big}, 400, "response_format"),
        ("/v1/chat/completions", {"model": "gem-chat", **chat,
                                  "google": {"thinking_config": {big: 1}}}, 400,
         "google.thinking_config." + "Z" * 200 + f"… ({MB:,} characters)"),
        ("/v1/chat/completions", {"model": "gem-chat", "messages": [
            {"role": big, "content": "hi"}]}, 400, "messages[0].role"),
        ("/v1/responses", {"model": "gem-chat", "input": [{"type": big}]}, 400,
         "input[0].type"),
    ]
    for path, body, status, param in attempts:
        got, _, raw = gw.post(path, body, key=key, ip=ip)
        err = error_of(raw)
        assert (got, err["param"]) == (status, param), (path, err["message"][:300])
        assert len(raw) < 1200, (path, len(raw))
        assert "Z" * 190 in err["message"] or "[7, 7, 7" in err["message"], err["message"]
        assert "Z" * 201 not in err["message"]
    # a client's path, as long as a request head may be: cut in the 404 and in the log
    status, _, raw = gw.get("/" + "p" * 60_000, key=key, ip=ip)
    assert status == 404 and len(raw) < 1000 and "p" * 199 in error_of(raw)["message"]
    assert fake_openai.requests == [] and fake_gemini.requests == []
    # the gateway's lines: each refusal logged (its message), and each request's access line
    assert wait_for(lambda: sum(" -> 40" in line for line in gw.log) == len(attempts) + 1
                    and any(" GET /ppp" in line for line in gw.log))
    assert all(len(line) < 1500 for line in gw.log), max(map(len, gw.log))


# ---------------------------------------------------------------------------- L4: writes

def stream_request(gw, key: str, ip: str) -> socket.socket:
    """A chat stream asked on a socket whose receive buffer is small, from ``ip``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ip, 0))
    sock.connect(("127.0.0.1", gw.port))
    body = json.dumps({"model": "gpt-long", "stream": True,
                       "messages": [{"role": "user", "content": "talk"}]}).encode()
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_a_client_that_stops_reading_is_cut_and_the_upstream_closed(make_gateway,
                                                                    fake_openai):
    fake_openai.reply_text = "b" * 40_000_000             # 40 MB: more than every buffer
    fake_openai.stream_events = 4_000                      # of 10 KB frames
    gw = make_gateway(openai_models(fake_openai, providers={"patient": {
        "kind": "openai", "base_url": fake_openai.base_url, "api_key": fake_openai.api_key}},
        models={"gpt-long": {"provider": "patient", "upstream": "gpt-5"}}),
        server={"write_timeout_s": 1}, rate_limit={"rpm": 100, "daily_credits": 0})

    def cuts() -> list[str]:
        return [line for line in gw.log if "the client read nothing for 1 s" in line]

    # a slow but steady reader is never cut
    slow_ip = "127.0.6.7"
    sock = stream_request(gw, gw.key_for(slow_ip), slow_ip)
    sock.settimeout(20)
    got = len(sock.recv(2048))                            # the stream has begun
    until = time.monotonic() + 3                          # 3 write deadlines at ~20 KB/s
    while time.monotonic() < until:
        time.sleep(0.1)
        got += len(sock.recv(2048))
    sock.close()
    assert got > 20_000 and cuts() == []
    assert wait_for(lambda: len(fake_openai.disconnects) == 1, timeout=10)
    # a reader that reads nothing is cut after about write_timeout_s
    ip = "127.0.6.6"
    key = gw.key_for(ip)
    sock = stream_request(gw, key, ip)
    started = time.monotonic()
    try:
        assert wait_for(cuts, timeout=20), gw.log[-5:]
        took = time.monotonic() - started
        assert 1.0 <= took < 8, took
        assert "server.write_timeout_s" in cuts()[0]
        # the upstream stream is closed, mid-answer, and what was relayed is booked
        assert wait_for(lambda: len(fake_openai.disconnects) == 2, timeout=10)
        usage = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
        assert usage["requests"] == 1 and usage["completion_tokens"] > 0, usage
        assert wait_for(lambda: any(" POST /v1/chat/completions 499 " in line and
                                    f"ip={ip}" in line for line in gw.log))
    finally:
        sock.close()
    assert gw.get("/health")[0] == 200
