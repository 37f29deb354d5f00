"""`kind: openai`: any OpenAI-compatible upstream.  Requests and streams pass through.

The client's body is forwarded byte for byte when the alias is the upstream id; otherwise
only ``model`` is rewritten.  Stream frames are relayed one by one as they arrive; ``model``
inside a frame is swapped back to the alias with a byte replace, not a JSON re-encode.
"""
from __future__ import annotations

from typing import AsyncIterator

import orjson

from ..catalog import ModelSpec
from ..errors import UpstreamError
from .. import sse
from .base import Provider


class OpenAIProvider(Provider):
    kind = "openai"

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.spec.api_key}",
                "Content-Type": "application/json", **self.spec.headers}

    def _payload(self, model: ModelSpec, body: dict, raw: bytes | None) -> bytes:
        if raw is not None and model.upstream == model.alias:
            return raw
        return orjson.dumps({**body, "model": model.upstream})

    def is_quota(self, status, data) -> bool:
        err = data.get("error") if isinstance(data, dict) else None
        return isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))

    async def chat(self, model: ModelSpec, body: dict, raw: bytes | None) -> dict:
        self.require_configured()
        async with self.request("POST", f"{self.spec.base_url}/chat/completions",
                                data=self._payload(model, body, raw),
                                headers=self._headers()) as resp:
            data = await self.read_json(resp)
        if not isinstance(data.get("choices"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"`choices`; it does not look like an OpenAI-compatible server.")
        data["model"] = model.alias
        return data

    async def chat_stream(self, model: ModelSpec, body: dict,
                          raw: bytes | None) -> AsyncIterator[bytes]:
        self.require_configured()
        rewrite = model.upstream != model.alias
        old = b'"model":"' + model.upstream.encode() + b'"'
        new = b'"model":"' + model.alias.encode() + b'"'
        async with self.request("POST", f"{self.spec.base_url}/chat/completions",
                                data=self._payload(model, body, raw),
                                headers=self._headers()) as resp:
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
