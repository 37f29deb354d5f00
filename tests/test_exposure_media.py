"""Exposure (issue 13.6), hosted media: only PNG, JPEG, WebP, GIF, MP4 and WebM are kept (an
upstream answering an SVG or an HTML page as an "image" is refused, so no script is ever
served from the gateway's origin); files are served with a sandboxing CSP and nosniff; the
folder is capped at ``media.max_gb``, the oldest files going first."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest

from apiarium.errors import UpstreamError
from apiarium.generation import Media
from apiarium.media import MediaStore, extension_for
from tests.support import error_of, request

MASTER = "exposure-master-key-0123456789abcdefghij"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'/v1/keys/me\')">'
       b'<script>alert(document.domain)</script></svg>')
HTML = b"<!doctype html><script>alert(document.cookie)</script>"


def catalog(oa, gm) -> dict:
    return {
        "providers": {"oa": {"kind": "openai", "base_url": oa.base_url, "api_key": oa.api_key,
                             "breaker_failures": 0},
                      "google": {"kind": "gemini", "base_url": gm.base_url,
                                 "api_key": gm.api_key, "breaker_failures": 0}},
        "models": {"gpt-image-1": {"provider": "oa", "type": "image"},
                   "gem-image": {"provider": "google", "type": "image"}}}


@pytest.fixture
def gw(make_gateway, fake_openai, fake_gemini):
    return make_gateway(catalog(fake_openai, fake_gemini), master_key=MASTER,
                        rate_limit={"rpm": 100})


def media_files(gw) -> list[str]:
    folder = gw.dir.parent / "data" / "media"
    return sorted(os.listdir(folder)) if folder.exists() else []


def gemini_image(mime: str, data: bytes) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}]},
        "finishReason": "STOP"}]}


def test_an_svg_or_html_image_is_refused(gw, fake_openai, fake_gemini):
    attacks = [
        (fake_gemini, "gem-image", gemini_image("image/svg+xml", SVG)),
        (fake_gemini, "gem-image", gemini_image("text/html", HTML)),
        (fake_gemini, "gem-image", gemini_image("image/png; x=1", HTML)),   # kept: a PNG
        (fake_openai, "gpt-image-1", {"created": 1, "output_format": "svg+xml",
                                      "data": [{"b64_json": base64.b64encode(SVG).decode()}]}),
    ]
    key = gw.key_for("127.0.0.51")
    for fake, model, answer in attacks[:2] + attacks[3:]:
        for fmt in ("url", "b64_json"):
            fake.fail_next(200, answer)
            status, _, raw = gw.post("/v1/images/generations", {
                "model": model, "prompt": "x", "response_format": fmt}, key=key,
                ip="127.0.0.51")
            assert status == 502, raw
            err = error_of(raw)
            assert err["code"] == "upstream_bad_media" and "PNG" in err["message"]
            assert b"<svg" not in raw and b"PHN2Zy" not in raw and b"script" not in raw
    assert media_files(gw) == []
    # refused before it was booked: a key is not charged for what it never got
    _, _, me = request(gw.url + "/v1/keys/me", ip="127.0.0.51")
    assert json.loads(me)["usage"]["images"] == 0
    # a declared PNG is kept as .png, whatever its bytes: served as image/png, never sniffed
    fake_gemini.fail_next(200, attacks[2][2])
    status, _, raw = gw.post("/v1/images/generations", {"model": "gem-image", "prompt": "x"},
                             key=MASTER)
    assert status == 200, raw
    url = json.loads(raw)["data"][0]["url"]
    assert url.endswith(".png")
    status, headers, body = request(url)
    assert status == 200 and body == HTML and headers["content-type"] == "image/png"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"


def test_served_media_carry_the_sandbox_headers(gw, fake_openai):
    status, _, raw = gw.post("/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"},
                             key=MASTER)
    assert status == 200, raw
    url = json.loads(raw)["data"][0]["url"]
    for headers in ({}, {"Range": "bytes=0-9"}):
        status, got, _ = request(url, headers=headers)
        assert status in (200, 206)
        assert got["content-security-policy"] == "default-src 'none'; sandbox"
        assert got["x-content-type-options"] == "nosniff"
        assert got["content-type"] == "image/png"
    # a file of another type dropped in the folder (an older version, an operator) is not
    # served, even under a well-formed name
    folder = gw.dir.parent / "data" / "media"
    stray = "A" * 32 + ".svg"
    (folder / stray).write_bytes(SVG)
    status, _, raw = request(url.rsplit("/", 1)[0] + "/" + stray)
    assert status == 404 and error_of(raw)["code"] == "media_not_found"


def test_only_served_types_are_media():
    for mime, ext in [("image/png", ".png"), ("image/jpeg", ".jpg"), ("IMAGE/WEBP", ".webp"),
                      ("image/gif", ".gif"), ("video/mp4", ".mp4"),
                      ("video/webm; codecs=vp9", ".webm")]:
        assert extension_for(mime) == ext
    for mime in ("image/svg+xml", "text/html", "application/xhtml+xml", "text/xml",
                 "application/octet-stream", "video/quicktime", "", "image/png+svg"):
        with pytest.raises(UpstreamError):
            extension_for(mime)
        with pytest.raises(UpstreamError):
            Media(b"x", mime)


def test_the_folder_cap_evicts_the_oldest_first(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    now = time.time()
    # three files from an earlier run: the scan at start orders them by age
    old = {}
    for i, age in enumerate((300, 100, 200)):
        name = f"{chr(65 + i) * 32}.png"
        (folder / name).write_bytes(b"o" * 300)
        os.utime(folder / name, (now - age, now - age))
        old[age] = name

    async def run() -> list[str]:
        store = MediaStore(folder, ttl_hours=1, max_bytes=1000)
        await store.sweep()
        assert store.total_bytes == 900
        first = await store.save(b"a" * 200, "image/png")         # 1100 > 1000: the oldest goes
        assert not (folder / old[300]).exists() and (folder / old[200]).exists()
        assert store.total_bytes == 800
        second = await store.save(b"b" * 400, "video/mp4")        # then the next oldest
        assert not (folder / old[200]).exists() and (folder / old[100]).exists()
        assert (folder / first).exists() and store.total_bytes == 900
        third = await store.save(b"c" * 500, "image/webp")        # the last old one, and
        assert not (folder / old[100]).exists()                   # the first of this run
        assert not (folder / first).exists() and (folder / second).exists()
        assert store.total_bytes == 900
        with pytest.raises(Exception, match="larger than this gateway keeps"):
            await store.save(b"d" * 1001, "image/png")
        with pytest.raises(UpstreamError):
            await store.save(SVG, "image/svg+xml")
        assert store.path_of(third) is not None and store.path_of(second) is not None
        # a restart counts the folder afresh
        again = MediaStore(folder, ttl_hours=1, max_bytes=1000)
        await again.save(b"e" * 200, "image/gif")
        assert not (folder / second).exists() and (folder / third).exists()
        return sorted(os.listdir(folder))

    left = asyncio.run(run())
    assert len(left) == 2 and not [n for n in left if n.startswith(".")]


def test_max_gb_is_checked_at_load(tmp_path):
    from apiarium.config import ConfigError, load_config
    from tests.inprocess import write_config

    s = load_config(write_config(tmp_path / "a", {"providers": {}, "models": {}})).settings
    assert s.media_max_bytes == 5 * 1024 ** 3
    s = load_config(write_config(tmp_path / "b", {"providers": {}, "models": {}},
                                 media={"dir": "media", "max_gb": 0.5})).settings
    assert s.media_max_bytes == 512 * 1024 ** 2
    path = write_config(tmp_path / "c", {"providers": {}, "models": {}},
                        media={"dir": "media", "max_gb": -1})
    with pytest.raises(ConfigError, match=r"apiarium\.yaml:\d+: media\.max_gb: -1"):
        load_config(path)
