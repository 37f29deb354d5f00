"""Exposure (issue 22, "bounds everywhere a user sends a size"), each tried against a real
gateway and the fakes on loopback:

- M7: a video (or image) prompt is at most ``media.max_prompt_bytes``; failed and expired video
  jobs are pruned ``media.ttl_hours`` later, so what a key lists stays bounded.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from apiarium import app as app_module
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
