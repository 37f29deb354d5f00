"""Images and Veo video through the gateway, against fake OpenAI-images, Gemini-image and Veo
servers: the OpenAI shapes, re-hosted media (bytes, types, Range, expiry), validation."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import openai
import pytest

from tests.fakes import make_png
from tests.support import MASTER_KEY, error_of, request, wait_for

try:                      # openai>=3 ships on httpx2, older releases on httpx
    import httpx2 as httpx
except ImportError:       # pragma: no cover
    import httpx

PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(make_png()).decode()


def media_models(oa, gm, poll=0.05) -> dict:
    google = {"kind": "gemini", "base_url": gm.base_url, "api_key": gm.api_key,
              "poll_interval_s": poll, "timeout_s": 20}
    return {
        "providers": {"oa": {"kind": "openai", "base_url": oa.base_url, "api_key": oa.api_key},
                      "google": google},
        "models": {
            "gpt-5": {"provider": "oa"},
            "gpt-image-1": {"provider": "oa", "type": "image"},
            "gpt-image-1-pro": {"provider": "oa", "upstream": "gpt-image-1", "type": "image"},
            "gemini-3-image": {"provider": "google", "upstream": "gemini-3-pro-image-preview",
                               "type": "image"},
            "gemini-3-image-pro": {"provider": "google", "type": "image",
                                   "upstream": "gemini-3-pro-image-preview"},
            "veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001", "type": "video"},
            "veo-3.1-fast": {"provider": "google", "upstream": "veo-3.1-fast-generate-preview",
                             "type": "video"},
        },
    }


@pytest.fixture
def gw(make_gateway, fake_openai, fake_gemini):
    return make_gateway(media_models(fake_openai, fake_gemini))


def download(url: str):
    status, headers, body = request(url)
    assert status == 200, (status, body[:200])
    return headers, body


def veo_starts(fake):
    return [r for r in fake.requests if r.path.endswith(":predictLongRunning")]


# ---------------------------------------------------------------------------- the examples

def test_readme_examples_chat_image_and_video(gw, fake_openai, fake_gemini):
    client = openai.OpenAI(base_url=gw.base_url_for(), api_key=MASTER_KEY, max_retries=0)
    chat = client.chat.completions.create(model="gpt-5",
                                          messages=[{"role": "user", "content": "Hello!"}])
    assert chat.choices[0].message.content == "echo: Hello!"

    img = client.images.generate(model="gemini-3-image", prompt="A watercolor fox", size="1:1")
    headers, body = download(img.data[0].url)
    assert body == fake_gemini.image_bytes and headers["content-type"] == "image/png"
    assert img.data[0].revised_prompt
    sent = fake_gemini.last().json
    assert sent["generationConfig"]["imageConfig"]["aspectRatio"] == "1:1"
    assert "IMAGE" in sent["generationConfig"]["responseModalities"]

    resp = httpx.post(f"{gw.base_url_for()}/videos/generations", timeout=600,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": "veo-3", "prompt": "A paper boat in the rain",
                            "duration_seconds": 8, "resolution": "720p", "size": "16:9"})
    assert resp.status_code == 200, resp.text
    video = resp.json()
    assert set(video) == {"created", "data"} and video["data"][0]["url"].endswith(".mp4")
    headers, body = download(video["data"][0]["url"])
    assert body == fake_gemini.video_bytes and headers["content-type"] == "video/mp4"
    assert int(headers["content-length"]) == len(fake_gemini.video_bytes)
    start = veo_starts(fake_gemini)[-1].json
    assert start["parameters"] == {"aspectRatio": "16:9", "resolution": "720p",
                                   "durationSeconds": 8, "sampleCount": 1}
    assert start["instances"] == [{"prompt": "A paper boat in the rain"}]
    assert sum(fake_gemini.veo_polls.values()) >= 3       # polled until done
    # neither the upstream URL nor its key reaches the client
    assert "googleapis" not in resp.text and fake_gemini.root not in resp.text
    assert fake_gemini.api_key not in resp.text


def test_gpt_image_urls_and_b64(gw, fake_openai):
    client = gw.sdk(MASTER_KEY)
    resp = client.images.generate(model="gpt-image-1", prompt="a cat", n=2, size="16:9")
    assert len(resp.data) == 2 and resp.data[0].url != resp.data[1].url
    for item in resp.data:
        assert download(item.url)[1] == fake_openai.image_bytes
        assert item.revised_prompt == "a cat"
    sent = fake_openai.last().json
    assert sent == {"model": "gpt-image-1", "prompt": "a cat", "n": 2, "size": "1536x1024"}
    resp = client.images.generate(model="gpt-image-1-pro", prompt="a dog",
                                  response_format="b64_json")
    assert base64.b64decode(resp.data[0].b64_json) == fake_openai.image_bytes
    assert resp.data[0].url is None
    assert fake_openai.last().json["quality"] == "high"


def test_gemini_n3_is_one_upstream_call_and_three_entries(gw, fake_gemini):
    client = gw.sdk(MASTER_KEY)
    resp = client.images.generate(model="gemini-3-image-pro", prompt="a fox", n=3,
                                  response_format="b64_json", size="1792x1024")
    assert len(resp.data) == 3
    assert all(base64.b64decode(d.b64_json) == fake_gemini.image_bytes for d in resp.data)
    assert len(fake_gemini.requests) == 1
    config = fake_gemini.last().json["generationConfig"]["imageConfig"]
    assert config == {"aspectRatio": "16:9", "imageSize": "2K"}
    urls = client.images.generate(model="gemini-3-image", prompt="a fox", n=3)
    assert len({d.url for d in urls.data}) == 1 and len(urls.data) == 3
    assert len(fake_gemini.requests) == 2


@pytest.mark.parametrize("field, value, param", [
    ("duration_seconds", "5", "duration_seconds"),
    ("duration_seconds", 7.5, "duration_seconds"),
    ("resolution", "4k", "resolution"),
    ("size", "1:1", "size"),
    ("aspect_ratio", "4:3", "aspect_ratio"),
    ("image_url", "ftp://example.com/cat.png", "image_url"),
    ("image_url", "data:image/png;base64,@@not-base64@@", "image_url"),
])
def test_invalid_video_fields_are_400_naming_the_field(gw, fake_gemini, field, value, param):
    body = {"model": "veo-3", "prompt": "a boat", field: value}
    status, _, raw = gw.post("/v1/videos/generations", body, key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["param"] == param and param in err["message"]
    assert veo_starts(fake_gemini) == []


def test_model_specific_video_rules(gw, fake_gemini):
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "resolution": "1080p", "size": "9:16"}, key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["param"] == "resolution" and "16:9" in err["message"]
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3.1-fast", "prompt": "x", "resolution": "1080p", "duration_seconds": 4},
        key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["param"] == "resolution" and "8" in err["message"]
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3.1-fast", "prompt": "x", "resolution": "1080p", "duration_seconds": "8"},
        key=MASTER_KEY)
    assert status == 200, raw
    assert veo_starts(fake_gemini)[-1].json["parameters"]["resolution"] == "1080p"


def test_wrong_type_models_on_media_endpoints(gw):
    status, _, raw = gw.post("/v1/images/generations", {"model": "veo-3", "prompt": "x"},
                             key=MASTER_KEY)
    assert status == 400 and error_of(raw)["code"] == "model_type_mismatch"
    status, _, raw = gw.post("/v1/videos/generations", {"model": "gpt-5", "prompt": "x"},
                             key=MASTER_KEY)
    assert status == 400 and "/v1/chat/completions" in error_of(raw)["message"]
    status, _, raw = gw.post("/v1/images/generations", {"model": "gpt-image-1", "prompt": "x",
                                                        "size": "999x3"}, key=MASTER_KEY)
    assert status == 400 and error_of(raw)["param"] == "size"
    status, _, raw = gw.post("/v1/chat/completions", {
        "model": "gpt-image-1", "messages": [{"role": "assistant", "content": "hi"}]},
        key=MASTER_KEY)
    assert status == 400 and error_of(raw)["param"] == "messages"


def test_image_to_video_sends_the_first_frame(gw, fake_gemini):
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "the fox runs", "image_url": PNG_DATA_URL,
        "duration_seconds": 4}, key=MASTER_KEY)
    assert status == 200, raw
    instance = veo_starts(fake_gemini)[-1].json["instances"][0]
    assert instance["image"] == {"bytesBase64Encoded": PNG_DATA_URL.split(",", 1)[1],
                                 "mimeType": "image/png"}
    assert "inlineData" not in json.dumps(instance)


def test_image_to_video_from_an_http_url(make_gateway, fake_gemini, fake_openai):
    # any http(s) image: here the fake OpenAI's image, re-hosted by the gateway first (on
    # loopback, which a gateway fetches from only when the operator allows it)
    gw = make_gateway(media_models(fake_openai, fake_gemini),
                      media={"fetch_allow_cidrs": ["127.0.0.1/32"]})
    img = gw.sdk(MASTER_KEY).images.generate(model="gpt-image-1", prompt="frame")
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "move", "image_url": img.data[0].url}, key=MASTER_KEY)
    assert status == 200, raw
    frame = veo_starts(fake_gemini)[-1].json["instances"][0]["image"]
    assert base64.b64decode(frame["bytesBase64Encoded"]) == fake_openai.image_bytes


def test_range_requests_and_expiry(make_gateway, fake_openai, fake_gemini):
    gw = make_gateway(media_models(fake_openai, fake_gemini), media={"ttl_hours": 0.001})
    status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "x"},
                             key=MASTER_KEY)
    url = json.loads(raw)["data"][0]["url"]
    data = fake_gemini.video_bytes
    status, headers, body = request(url, headers={"Range": "bytes=1000-2999"})
    assert status == 206 and body == data[1000:3000]
    assert headers["content-range"] == f"bytes 1000-2999/{len(data)}"
    assert headers["content-type"] == "video/mp4"
    status, headers, body = request(url, headers={"Range": "bytes=-100"})
    assert status == 206 and body == data[-100:]
    status, headers, raw = request(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert status == 416 and error_of(raw)["code"] == "range_not_satisfiable"
    assert headers["content-range"] == f"bytes */{len(data)}"
    status, _, body = request(url, headers={"Range": "bytes=29-0"})     # invalid: ignored
    assert status == 200 and body == data
    name = url.rsplit("/", 1)[1]
    path = gw.dir.parent / "data" / "media" / name
    assert path.exists()
    os.utime(path, (time.time() - 10, time.time() - 10))        # older than 3.6 s
    status, _, raw = request(url)
    assert status == 404 and error_of(raw)["code"] == "media_not_found"
    assert not path.exists()
    assert request(url.rsplit("/", 1)[0] + "/../../config/apiarium.yaml")[0] == 404
    assert request(url.rsplit("/", 1)[0] + "/nope.mp4")[0] == 404


def test_veo_on_chat_returns_the_url_streamed_or_not(gw, fake_gemini):
    client = gw.sdk(MASTER_KEY)
    resp = client.chat.completions.create(
        model="veo-3", messages=[{"role": "system", "content": "Cinematic."},
                                 {"role": "user", "content": "A paper boat"}],
        extra_body={"duration_seconds": 6, "aspect_ratio": "9:16"})
    url = resp.choices[0].message.content
    assert url.startswith(gw.url + "/media/") and url.endswith(".mp4")
    assert download(url)[1] == fake_gemini.video_bytes
    start = veo_starts(fake_gemini)[-1].json
    assert start["instances"][0]["prompt"] == "Cinematic.\n\nA paper boat"
    assert start["parameters"]["durationSeconds"] == 6
    assert start["parameters"]["aspectRatio"] == "9:16"
    chunks = list(client.chat.completions.create(
        model="veo-3", messages=[{"role": "user", "content": "A paper boat"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(gw.url + "/media/") and text.endswith(".mp4")
    assert chunks[-1].choices[0].finish_reason == "stop"
    img = client.chat.completions.create(model="gemini-3-image",
                                         messages=[{"role": "user", "content": "a fox"}])
    assert download(img.choices[0].message.content)[1] == fake_gemini.image_bytes


def test_safety_filtered_and_failed_videos_are_clear_errors(gw, fake_gemini):
    fake_gemini.veo_filtered_next()
    status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "x"},
                             key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["code"] == "content_policy_violation"
    assert "safety" in err["message"]
    fake_gemini.veo_error_next(13, "Internal error while rendering.")
    status, _, raw = gw.post("/v1/videos/generations", {"model": "veo-3", "prompt": "x"},
                             key=MASTER_KEY)
    err = error_of(raw)
    assert status == 502 and err["code"] == "upstream_error" and "rendering" in err["message"]


def test_a_client_that_leaves_does_not_abandon_its_video(make_gateway, fake_openai,
                                                        fake_gemini):
    """The provider bills a render once it started: a client that hangs up mid-video finds
    it finished, stored and charged (issue 13: usage booked whatever happens)."""
    fake_gemini.veo_polls_until_done = 30                   # ~3 s of rendering
    gw = make_gateway(media_models(fake_openai, fake_gemini, poll=0.1))
    key = gw.key_for("127.0.0.61")

    async def leave_early():
        client = gw.async_sdk(key, ip="127.0.0.61")
        post = asyncio.ensure_future(client.post(
            "/videos/generations", cast_to=object,
            body={"model": "veo-3", "prompt": "x", "duration_seconds": 6}))
        deadline = time.monotonic() + 10
        while not veo_starts(fake_gemini):                  # the render has begun upstream
            assert time.monotonic() < deadline and not post.done(), post
            await asyncio.sleep(0.02)
        post.cancel()                                       # and the client hangs up
        with pytest.raises(asyncio.CancelledError):
            await post
        await client.close()
    asyncio.run(leave_early())

    def usage() -> dict:
        return json.loads(gw.get("/v1/keys/me", ip="127.0.0.61")[2])["usage"]
    assert usage()["video_seconds"] == 0                     # still rendering
    # every 0.2 s: /v1/keys/me answers an address 60 times a minute
    assert wait_for(lambda: usage()["video_seconds"] == 6, timeout=10, interval=0.2), usage()
    assert usage()["requests"] == 1 and usage()["credits"] > 0
    assert sum(fake_gemini.veo_polls.values()) >= 30         # polled to the end
    media = gw.dir.parent / "data" / "media"
    assert [p.suffix for p in media.iterdir()] == [".mp4"]   # and stored


def test_rendering_stream_sends_keepalives_then_the_url():
    from apiarium.providers.shapes import usage
    from apiarium.services.media import MediaChat

    async def slow():
        await asyncio.sleep(0.35)
        return "http://gw/media/x.mp4"

    async def collect():
        return [f async for f in MediaChat("veo-3", slow, usage(1, 1), False).frames(
            keepalive_s=0.1)]
    frames = asyncio.run(collect())
    comments = [f for f in frames if f.startswith(b":")]
    assert len(comments) >= 2
    assert b'"role":"assistant"' in frames[0] and frames[-1] == b"data: [DONE]\n\n"
    assert b"http://gw/media/x.mp4" in frames[-3]
