"""Gemini's media output: images from ``generateContent`` and Veo video operations.

Video (reference §6): ``:predictLongRunning`` starts an operation; it is polled every
``poll_interval_s`` until ``done`` (or ``timeout_s`` has passed); the finished video is
downloaded with the provider key (following redirects) and handed back as bytes, so no
upstream URL or key ever reaches a client.  Cancelling the awaiting task stops the polling.
"""
from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..catalog import ModelSpec
from ..errors import InvalidRequest, NoOutput, UpstreamError, UpstreamTimeout
from ..generation import ImageRequest, Media, VideoRequest, nearest
from ..redact import scrub
from .base import Provider
from .shapes import parse_data_url

if TYPE_CHECKING:                       # gemini imports this module
    from .gemini import GeminiProvider

# Aspect ratios the Gemini image models accept, as width / height.
IMAGE_RATIOS = {"1:1": 1.0, "2:3": 2 / 3, "3:2": 1.5, "3:4": 0.75, "4:3": 4 / 3,
                "9:16": 9 / 16, "16:9": 16 / 9, "21:9": 21 / 9}
_OPERATION = re.compile(r"^/?models/[\w.-]+/operations/[\w.-]+$")   # Veo's, as stored
_POLICY = re.compile(r"safety|polic|guideline|blocked|filtered|prohibited|responsible ai",
                     re.I)


# ---------------------------------------------------------------------------- images

async def generate_image(provider: GeminiProvider, model: ModelSpec,
                         req: ImageRequest) -> list[Media]:
    """One upstream call; the contract repeats its image ``n`` times."""
    provider.require_configured()
    config = {"aspectRatio": nearest(req.ratio, IMAGE_RATIOS, "1:1")}
    if req.high_quality:
        config["imageSize"] = "2K"
    url = provider.url(f"models/{model.upstream}:generateContent")
    data = await provider.call_json("POST", url, json={
        "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": config}})
    block = (data.get("promptFeedback") or {}).get("blockReason")
    for cand in data.get("candidates") or []:
        for part in (cand.get("content") or {}).get("parts") or []:
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and inline.get("data"):
                raw = base64.b64decode(inline["data"])
                return [Media(raw, inline.get("mimeType") or "image/png", req.prompt)]
        block = block or cand.get("finishReason")
    if block and block not in ("STOP", "NO_IMAGE"):
        raise InvalidRequest(f"The image was refused by the provider's safety filter "
                             f"({block}). Rephrase the prompt.", code="content_policy_violation",
                             param="prompt")
    raise NoOutput(f"`{model.alias}` made no image for this prompt (the model answered "
                   f"in words only). Rephrase the prompt to ask for a picture, or try again.",
                   param="prompt")


# ---------------------------------------------------------------------------- video

async def _first_frame(provider: Provider, url: str) -> dict:
    """Veo's ``image`` from ``image_url``: a data: URL as sent (its size checked before it is
    decoded), an http(s) URL through the gateway's ``ImageFetcher`` (``outbound``), never
    through the provider's session."""
    fetcher = provider.fetcher
    if url.startswith("data:"):
        fetcher.check_data_url(url)
        mime, data = parse_data_url(url, "image_url")
        return {"bytesBase64Encoded": data, "mimeType": mime}
    image = await fetcher.fetch(url)
    return {"bytesBase64Encoded": base64.b64encode(image.data).decode(), "mimeType": image.mime}


async def generate_video(provider: GeminiProvider, model: ModelSpec, req: VideoRequest,
                         started: Callable[[str], Awaitable[None]] | None = None) -> Media:
    """Start a Veo operation, poll it until it is done, and fetch the video's bytes.
    ``started`` hears the operation's name as soon as Veo gives it (a job stores it)."""
    provider.require_configured()
    instance: dict[str, Any] = {"prompt": req.prompt}
    if req.image_url:
        instance["image"] = await _first_frame(provider, req.image_url)
    start = provider.url(f"models/{model.upstream}:predictLongRunning")
    op = await provider.call_json("POST", start, json={
        "instances": [instance],
        "parameters": {"aspectRatio": req.aspect_ratio, "resolution": req.resolution,
                       "durationSeconds": req.duration_seconds, "sampleCount": 1}})
    name = op.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamError(f"The upstream provider `{provider.spec.name}` did not start a "
                            f"video operation (no operation name in its answer).")
    if started is not None:
        await started(name)
    return await await_video(provider, name, req, op)


async def await_video(provider: GeminiProvider, name: str, req: VideoRequest,
                      op: dict[str, Any] | None = None) -> Media:
    """Poll the operation ``name`` until it is done (``op``: its last answer, if any), and
    fetch the video.  A restart resumes a job here, with the name it stored."""
    provider.require_configured()
    deadline = time.monotonic() + provider.spec.timeout_s
    if op is None:                        # resumed: the name comes from the database
        if not _OPERATION.match(name):
            raise UpstreamError(f"The stored video operation of provider "
                                f"`{provider.spec.name}` is not one this gateway polls.",
                                code="video_not_resumable")
        op = await provider.call_json("GET", provider.url(name.lstrip("/")))
    while not op.get("done"):
        if time.monotonic() >= deadline:
            raise UpstreamTimeout(f"The video was not ready within {provider.spec.timeout_s:g} s "
                                  f"(provider `{provider.spec.name}`). Try again later.")
        await asyncio.sleep(provider.spec.poll_interval_s)
        op = await provider.call_json("GET", provider.url(name.lstrip("/")))
    return await _finished(provider, op, req)


async def _finished(provider: GeminiProvider, op: dict[str, Any], req: VideoRequest) -> Media:
    name = provider.spec.name
    error = op.get("error")
    if isinstance(error, dict):
        message = scrub(str(error.get("message") or "no reason given")[:500],
                        provider.spec.api_key, public_hosts=provider.public_hosts)
        if _POLICY.search(message):
            raise InvalidRequest(f"The video was refused by the provider's safety filter: "
                                 f"{message}", code="content_policy_violation", param="prompt")
        raise UpstreamError(f"The video generation failed at the upstream provider `{name}`: "
                            f"{message}")
    result = (op.get("response") or {}).get("generateVideoResponse") or {}
    samples = result.get("generatedSamples") or []
    if result.get("raiMediaFilteredCount") or not samples:
        reasons = scrub("; ".join(map(str, result.get("raiMediaFilteredReasons") or []))[:500],
                        provider.spec.api_key, public_hosts=provider.public_hosts)
        if result.get("raiMediaFilteredCount"):
            raise InvalidRequest(f"The video was refused by the provider's safety filter"
                                 f"{': ' + reasons if reasons else ''}. Rephrase the prompt.",
                                 code="content_policy_violation", param="prompt")
        raise NoOutput("The video model finished without a video for this prompt. Rephrase "
                       "the prompt, or try again.", param="prompt")
    video = samples[0].get("video") or {}
    if video.get("encodedVideo"):
        return Media(base64.b64decode(video["encodedVideo"]), video.get("encoding") or
                     "video/mp4", req.prompt)
    uri = video.get("uri")
    if not uri:
        raise NoOutput("The video model finished without a video for this prompt. Rephrase "
                       "the prompt, or try again.", param="prompt")
    async with provider.request("GET", uri) as resp:    # with the key; redirects followed
        data = await resp.read()
        mime = resp.headers.get("Content-Type", "video/mp4").split(";")[0].strip()
    if not data:
        raise UpstreamError(f"The upstream provider `{name}` served an empty video file.")
    return Media(data, mime if mime.startswith("video/") else "video/mp4", req.prompt)
