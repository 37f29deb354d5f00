"""services/media.py: an image or video model asked through chat (``MediaService.as_chat``):
the checks made before anything is sent, and the routing of image and video models to their
provider methods, hosting and booking.  The provider is a toy kind in this file (named in
models.yaml by its import path), so what each call received can be read back."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from apiarium import sse
from apiarium.catalog import ModelSpec
from apiarium.errors import InvalidRequest, ServiceUnavailable
from apiarium.generation import ImageRequest, Media, VideoRequest
from apiarium.live import Services
from apiarium.providers.base import Provider
from apiarium.providers.shapes import usage
from apiarium.services.media import MediaChat
from apiarium.usage import Tally, price
from tests.fakes import make_mp4, make_png
from tests.inprocess import InProcess, write_config

BASE = "https://gw.example"
PNG, MP4 = make_png(), make_mp4()
PROMPT = "a honeycomb at dusk"


class StudioProvider(Provider):
    """Makes images and videos without any network; records each request it gets."""

    kind = "studio"
    owned_by = "studio-lab"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, str, ImageRequest | VideoRequest]] = []

    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        self.require_configured()
        self.calls.append(("image", model.upstream, req))
        return [Media(PNG, "image/png", "a revised prompt")]

    async def video(self, model: ModelSpec, req: VideoRequest) -> Media:
        self.require_configured()
        self.calls.append(("video", model.upstream, req))
        return Media(MP4, "video/mp4")


STUDIO = f"{StudioProvider.__module__}:StudioProvider"


def models() -> dict:
    return {
        "providers": {
            "studio": {"kind": STUDIO, "base_url": "http://studio.invalid", "api_key": "k"},
            "bare": {"kind": STUDIO, "base_url": "http://studio.invalid", "api_key": ""},
        },
        "models": {
            "painter": {"provider": "studio", "type": "image", "upstream": "paint-2"},
            "filmer": {"provider": "studio", "type": "video", "upstream": "veo-3.1-generate",
                       "credits": {"video_second": 2.0,
                                   "resolution": {"720p": 1.0, "1080p": 3.0}}},
            "bare-painter": {"provider": "bare", "type": "image"},
            "bare-with-backup": {"provider": "bare", "type": "image", "fallbacks": ["painter"]},
        },
    }


def run(tmp_path: Path, scenario) -> None:
    async def main() -> None:
        async with InProcess(write_config(tmp_path, models())) as env:
            await scenario(env.services)
    asyncio.run(main())


def studio(svc: Services) -> StudioProvider:
    provider = svc.live.providers["studio"]
    assert isinstance(provider, StudioProvider)
    return provider


def ask(*turns: tuple[str, Any], **fields: Any) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **fields}


def hosted(svc: Services, url: str) -> bytes:
    assert url.startswith(f"{BASE}/media/"), url
    path = svc.live.media.path_of(url.rsplit("/", 1)[1])
    assert path is not None, url
    return path.read_bytes()


# ---------------------------------------------------------------------- refused up front

@pytest.mark.parametrize("body", [
    ask(("assistant", "I only speak when spoken to")),
    ask(("user", "   \n ")),
    ask(("user", [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}])),
    ask(("tool", "a tool result is no prompt")),
], ids=["only assistant", "blank", "only an image part", "only a tool turn"])
def test_a_chat_without_prompt_text_is_400_naming_messages(tmp_path, body):
    async def scenario(svc: Services) -> None:
        for alias in ("painter", "filmer"):
            with pytest.raises(InvalidRequest) as raised:
                svc.media.as_chat(svc.catalog.resolve(alias), body, "key-a", BASE)
            err = raised.value
            assert (err.status, err.param, err.code) == (400, "messages", "invalid_messages")
            assert f"`{alias}`" in err.message
        assert studio(svc).calls == []
    run(tmp_path, scenario)


@pytest.mark.parametrize(("fields", "param"), [
    ({"duration_seconds": 5}, "duration_seconds"),
    ({"resolution": "4k"}, "resolution"),
    ({"aspect_ratio": "1:1"}, "aspect_ratio"),
    ({"image_url": "ftp://x/y.png"}, "image_url"),
])
def test_bad_video_fields_given_on_the_chat_body_are_400_before_anything_is_sent(
        tmp_path, fields, param):
    async def scenario(svc: Services) -> None:
        with pytest.raises(InvalidRequest) as raised:
            svc.media.as_chat(svc.catalog.resolve("filmer"),
                              ask(("user", "a bee at dawn"), **fields), "key-a", BASE)
        assert raised.value.param == param
        assert studio(svc).calls == []
    run(tmp_path, scenario)


def test_a_bad_image_size_is_400_naming_size(tmp_path):
    async def scenario(svc: Services) -> None:
        with pytest.raises(InvalidRequest) as raised:
            svc.media.as_chat(svc.catalog.resolve("painter"),
                              ask(("user", "a hive"), size="7x3"), "key-a", BASE)
        assert raised.value.param == "size"
    run(tmp_path, scenario)


def test_an_unconfigured_provider_is_503_at_once_unless_a_fallback_may_serve(tmp_path):
    async def scenario(svc: Services) -> None:
        body = ask(("user", "a hive in the rain"))
        with pytest.raises(ServiceUnavailable) as raised:
            svc.media.as_chat(svc.catalog.resolve("bare-painter"), body, "key-a", BASE)
        assert raised.value.code == "provider_not_configured"
        chat = svc.media.as_chat(svc.catalog.resolve("bare-with-backup"), body, "key-a", BASE)
        answer = await chat.answer()
        assert answer["model"] == "bare-with-backup"
        assert hosted(svc, answer["choices"][0]["message"]["content"]) == PNG
        assert [c[1] for c in studio(svc).calls] == ["paint-2"]      # the fallback made it
    run(tmp_path, scenario)


# ---------------------------------------------------------------------- routing

def test_an_image_model_makes_one_image_from_the_user_and_system_text(tmp_path):
    async def scenario(svc: Services) -> None:
        painter = svc.catalog.resolve("painter")
        body = ask(("system", "Watercolour."), ("assistant", "ignored"),
                   ("user", [{"type": "text", "text": "A bee"}, {"type": "image_url",
                             "image_url": {"url": "https://x.example/a.png"}}]),
                   n=4, response_format="b64_json", size="16:9")
        chat = svc.media.as_chat(painter, body, "key-a", BASE)
        assert isinstance(chat, MediaChat) and chat.alias == "painter"
        assert studio(svc).calls == []                 # nothing is made before it is asked
        answer = await chat.answer()
        [(method, upstream, req)] = studio(svc).calls
        assert (method, upstream) == ("image", "paint-2")
        assert isinstance(req, ImageRequest)
        assert req.prompt == "Watercolour.\n\nA bee"
        assert (req.n, req.response_format, req.size) == (1, "url", "16:9")
        url = answer["choices"][0]["message"]["content"]
        assert hosted(svc, url) == PNG
        assert answer["usage"] == usage(len(req.prompt.split()), 1)
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.images) == (1, 1)
        assert spent.credits == pytest.approx(price(painter, Tally(requests=1, images=1)))
    run(tmp_path, scenario)


def test_a_video_model_takes_its_fields_from_the_chat_body(tmp_path):
    async def scenario(svc: Services) -> None:
        filmer = svc.catalog.resolve("filmer")
        body = ask(("user", "A bee lands on a flower"), duration_seconds="6",
                   resolution="720p", aspect_ratio="9:16")
        answer = await svc.media.as_chat(filmer, body, "key-a", BASE).answer()
        [(method, upstream, req)] = studio(svc).calls
        assert (method, upstream) == ("video", "veo-3.1-generate")
        assert req == VideoRequest("A bee lands on a flower", 6, "720p", "9:16", None)
        assert hosted(svc, answer["choices"][0]["message"]["content"]) == MP4
        spent = svc.usage.spent_today("key-a")
        assert (spent.requests, spent.video_seconds, spent.images) == (1, 6, 0)
        assert spent.credits == pytest.approx(
            price(filmer, Tally(requests=1, video_seconds=6), "720p"))
    run(tmp_path, scenario)


def test_a_video_at_1080p_is_booked_at_the_resolutions_price(tmp_path):
    async def scenario(svc: Services) -> None:
        filmer = svc.catalog.resolve("filmer")
        body = ask(("user", "A swarm at noon"), resolution="1080p")
        await svc.media.as_chat(filmer, body, "key-a", BASE).answer()
        req = studio(svc).calls[0][2]
        assert isinstance(req, VideoRequest) and req.resolution == "1080p"
        expected = (filmer.credits.video_second * req.duration_seconds
                    * filmer.credits.resolution["1080p"])
        assert svc.usage.spent_today("key-a").credits == pytest.approx(expected)
    run(tmp_path, scenario)


def test_streamed_the_url_comes_after_the_role_and_usage_only_if_asked(tmp_path):
    async def scenario(svc: Services) -> None:
        painter = svc.catalog.resolve("painter")
        for asked in (True, False):
            body = ask(("user", PROMPT), stream=True,
                       stream_options={"include_usage": asked})
            frames = [f async for f in svc.media.as_chat(painter, body, None, BASE).frames()]
            assert frames[-1] == sse.DONE
            chunks = [orjson.loads(sse.parse(f)[1]) for f in frames[:-1]]
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            url = chunks[1]["choices"][0]["delta"]["content"]
            assert hosted(svc, url) == PNG
            assert chunks[2]["choices"][0]["finish_reason"] == "stop"
            tails = [c for c in chunks if not c["choices"]]
            wanted = [usage(len(PROMPT.split()), 1)] if asked else []
            assert [t["usage"] for t in tails] == wanted
    run(tmp_path, scenario)


# ---------------------------------------------------------------------- MediaChat failures

def test_an_early_failure_is_raised_before_any_frame_and_a_late_one_after_the_role():
    async def fails_after(delay: float) -> str:
        await asyncio.sleep(delay)
        raise ServiceUnavailable("the studio is closed")

    async def main() -> None:
        early = MediaChat("painter", lambda: fails_after(0), usage(1, 1), False)
        frames = early.frames(keepalive_s=0.05)
        with pytest.raises(ServiceUnavailable):
            await anext(frames)                       # a plain HTTP error for the client
        late = MediaChat("painter", lambda: fails_after(0.12), usage(1, 1), False)
        frames = late.frames(keepalive_s=0.05)
        first = await anext(frames)
        assert b'"role":"assistant"' in first
        with pytest.raises(ServiceUnavailable):
            async for _ in frames:                    # keep-alives, then the failure
                pass
    asyncio.run(main())


def test_a_stream_closed_while_rendering_cancels_the_render():
    async def main() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def slow() -> str:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"
        frames = MediaChat("filmer", slow, usage(1, 1), False).frames(keepalive_s=0.02)
        await anext(frames)                           # the role chunk
        assert started.is_set()
        await frames.aclose()                         # the client left
        assert cancelled.is_set()
    asyncio.run(main())
