"""`kind: openai`: any OpenAI-compatible upstream.  Requests and streams pass through.

The client's body is forwarded byte for byte when the alias is the upstream id; otherwise
only ``model`` is rewritten.  Stream frames are relayed one by one as they arrive; ``model``
inside a frame is swapped back to the alias with a byte replace, not a JSON re-encode.
"""
from __future__ import annotations

from typing import AsyncIterator, Awaitable

import orjson

import base64

from ..catalog import ModelSpec
from ..errors import UpstreamError
from ..generation import ImageRequest, Media, nearest
from .. import sse
from .base import Provider

# Sizes the GPT image models accept, as width / height.
IMAGE_SIZES = {"1024x1024": 1.0, "1536x1024": 1.5, "1024x1536": 2 / 3}


class OpenAIProvider(Provider):
    kind = "openai"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._headers = {"Authorization": f"Bearer {self.spec.api_key}",
                         "Content-Type": "application/json", **self.spec.headers}
        self._chat_url = f"{self.spec.base_url}/chat/completions"

    def _payload(self, model: ModelSpec, body: dict, raw: bytes | None) -> bytes:
        if raw is not None and model.upstream == model.alias:
            return raw
        return orjson.dumps({**body, "model": model.upstream})

    def is_quota(self, status, data) -> bool:
        err = data.get("error") if isinstance(data, dict) else None
        return isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))

    def chat(self, model: ModelSpec, body: dict, raw: bytes | None) -> Awaitable[dict]:
        # not a coroutine itself: it hands back fetch_json's (one await layer fewer)
        self.require_configured()

        def answer(data: dict) -> dict:
            if not isinstance(data.get("choices"), list):
                raise UpstreamError(f"The upstream provider `{self.spec.name}` answered "
                                    f"without `choices`; it does not look like an "
                                    f"OpenAI-compatible server.")
            data["model"] = model.alias
            return data
        return self.fetch_json("POST", self._chat_url, data=self._payload(model, body, raw),
                               headers=self._headers, then=answer)

    async def chat_stream(self, model: ModelSpec, body: dict,
                          raw: bytes | None) -> AsyncIterator[bytes]:
        self.require_configured()
        rewrite = model.upstream != model.alias
        old = b'"model":"' + model.upstream.encode() + b'"'
        new = b'"model":"' + model.alias.encode() + b'"'
        payload = self._payload(model, body, raw)
        body = raw = None            # not held for the life of the stream
        async with self.request("POST", self._chat_url, data=payload,
                                headers=self._headers) as resp:
            payload = None
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                shown = ctype or "no content type"
                raise UpstreamError(f"The upstream provider `{self.spec.name}` did not answer "
                                    f"the stream request with an event stream ({shown}).")
            decoder = sse.SSEDecoder()
            done = False
            async for chunk in resp.content.iter_any():
                for event in decoder.feed(chunk):
                    if event.startswith(b"data: [DONE]") or event.startswith(b'data: {"error"'):
                        done = True  # an upstream error frame ends the stream as it stands
                    elif rewrite:
                        event = _rename(event, old, new, model.alias)
                    yield event + b"\n\n"
            for event in decoder.close():
                done = done or event.startswith(b"data: [DONE]")
                yield event + b"\n\n"
        if not done:
            raise UpstreamError(f"The upstream provider `{self.spec.name}` ended the stream "
                                f"before it was complete.")


    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        """``images/generations``; GPT image models answer ``b64_json`` (a ``url`` answer,
        as dall-e gives, is downloaded), so the gateway can re-host or inline the bytes."""
        self.require_configured()
        size = req.size if req.size in IMAGE_SIZES else nearest(req.ratio, IMAGE_SIZES, "auto")
        body = {"model": model.upstream, "prompt": req.prompt, "n": req.n, "size": size}
        if req.high_quality:
            body["quality"] = "high"
        async with self.request("POST", f"{self.spec.base_url}/images/generations",
                                data=orjson.dumps(body), headers=self._headers) as resp:
            data = await self.read_json(resp)
        out = []
        for item in data.get("data") or []:
            revised = item.get("revised_prompt") or req.prompt
            mime = f"image/{data.get('output_format') or 'png'}".replace("jpg", "jpeg")
            if item.get("b64_json"):
                out.append(Media(base64.b64decode(item["b64_json"]), mime, revised))
            elif item.get("url"):
                async with self.request("GET", item["url"]) as img:
                    ctype = img.headers.get("Content-Type", mime).split(";")[0]
                    out.append(Media(await img.read(), ctype, revised))
        if not out:
            raise UpstreamError(f"The upstream provider `{self.spec.name}` returned no image.")
        return out


def _rename(event: bytes, old: bytes, new: bytes, alias: str) -> bytes:
    if old in event:
        return event.replace(old, new, 1)
    if b'"model"' not in event:
        return event
    # unusual spacing: fall back to a real parse of this one frame
    name, data = sse.parse(event)
    try:
        obj = orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        return event
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = alias
    return sse.encode(obj)[:-2]
