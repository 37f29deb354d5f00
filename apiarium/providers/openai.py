"""`kind: openai`: any OpenAI-compatible upstream.  Requests and streams pass through.

The client's body is forwarded byte for byte when the alias is the upstream id; otherwise
only ``model`` is rewritten (chat, and embeddings at ``{base_url}/embeddings``, token arrays
included; embeddings are always asked for as base64, and decoded for a client that wants
floats).  Stream frames are relayed one by one as they arrive; ``model``
inside a frame is swapped back to the alias with a byte replace, not a JSON re-encode.

The Responses API (``/v1/responses``) is passed through to the upstream's own
``{base_url}/responses`` (``responses`` / ``responses_stream``) unless the provider says
``responses: false`` (an OpenAI-compatible server without that endpoint: the request is then
translated to chat like on any other kind).  ``store`` is forced false (the gateway keeps
no state); the events are relayed as they come, ``model`` swapped back to the alias; a stream
ends after its terminal event, and one that ends before it raises, so the handler can end it
with ``response.failed``.  An upstream ``response.failed`` or ``error`` event is raised too
(``responses_failure``: its code read as the status it stands for), so that what the client
sees is the gateway's words (OpenAI writes organisation ids into rate-limit messages), with
the code Codex acts on kept.

A model with ``completions: native`` takes legacy ``/v1/completions`` natively
(``completions`` / ``completions_stream``): the request, raw prompt and all, goes to the
upstream's own ``/completions``.  A model with ``thinking: none`` never sends
``reasoning_effort`` (for servers that refuse it).  The ``extra_content`` this gateway puts
on tool calls (a Gemini thought signature) is the gateway's: a client that sends it back to
an OpenAI-compatible model does not pass it on.
"""
from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import aiohttp
import orjson

from .. import embedding, sse
from ..catalog import ModelSpec
from ..embedding import EmbeddingRequest
from ..errors import ApiError, NoOutput, UpstreamError
from ..generation import ImageRequest, Media, nearest
from .base import Provider, UpstreamCall

# The events that end a Responses stream (``response.failed`` is raised instead).
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete"})
# Responses error codes that are not about the request (the others are 400s)
_SERVER_CODES = frozenset({"", "server_error", "vector_store_timeout"})
# Sizes the GPT image models accept, as width / height.
IMAGE_SIZES = {"1024x1024": 1.0, "1536x1024": 1.5, "1024x1536": 2 / 3}


class OpenAIProvider(Provider):
    """Bearer ``api_key`` (the base class's ``auth_headers``); passthrough of chat."""

    kind = "openai"
    owned_by = "openai"
    public_hosts = frozenset({"api.openai.com", "platform.openai.com", "help.openai.com"})

    def is_quota(self, status: int, data: Any) -> bool:
        err = data.get("error") if isinstance(data, dict) else None
        return isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))

    native_dialects: ClassVar[frozenset[str]] = frozenset({"completions", "responses"})

    def takes(self, dialect: str) -> bool:
        return super().takes(dialect) and (dialect != "responses" or self.spec.responses)

    def _payload(self, model: ModelSpec, body: dict[str, Any], raw: bytes | None) -> bytes:
        if model.thinking == "none" and "reasoning_effort" in body:
            body, raw = {k: v for k, v in body.items() if k != "reasoning_effort"}, None
        if (raw is None or b'"extra_content"' in raw) and _has_extra_content(body):
            body, raw = _without_extra_content(body), None
        if raw is not None and model.upstream == model.alias:
            return raw
        return orjson.dumps({**body, "model": model.upstream})

    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        self.require_configured()
        data = await self.call_json("POST", f"{self.spec.base_url}/chat/completions",
                                    data=self._payload(model, body, raw))
        if not isinstance(data.get("choices"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"`choices`; it does not look like an OpenAI-compatible server.")
        data["model"] = model.alias
        return data

    async def completions(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy completions request on the upstream's own ``/completions``."""
        self.require_configured()
        data = await self.call_json("POST", f"{self.spec.base_url}/completions",
                                    json={**body, "model": model.upstream})
        if not isinstance(data.get("choices"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered /completions "
                                f"without `choices`.")
        data["model"] = model.alias
        return data

    def completions_stream(self, model: ModelSpec, body: dict[str, Any]) -> Passthrough:
        """The same, streamed: the upstream's ``text_completion`` frames relayed."""
        return self.chat_stream(model, body, None, "completions")

    def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                    raw: bytes | None, path: str = "chat/completions") -> Passthrough:
        self.require_configured()
        call = self.request("POST", f"{self.spec.base_url}/{path}",
                            data=self._payload(model, body, raw))
        return Passthrough(self, call, model)

    # ------------------------------------------------------------------ native Responses
    def _responses_payload(self, model: ModelSpec, body: dict[str, Any], stream: bool) -> bytes:
        return orjson.dumps({**body, "model": model.upstream, "stream": stream, "store": False})

    async def responses(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        """A Responses request on the upstream's own ``/responses``: the ``Response``."""
        self.require_configured()
        data = await self.call_json("POST", f"{self.spec.base_url}/responses",
                                    data=self._responses_payload(model, body, False))
        if data.get("object") != "response" or not isinstance(data.get("output"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered /responses "
                                f"without a Response; if it has no Responses API, set "
                                f"`responses: false` on it in models.yaml.")
        if data.get("status") == "failed":
            raise self.responses_failure(data.get("error"))
        data["model"] = model.alias
        return data

    async def responses_stream(self, model: ModelSpec,
                               body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """The same, streamed: the upstream's events relayed up to its terminal one."""
        self.require_configured()
        upstream, new = model.upstream.encode(), b'"model":"' + model.alias.encode() + b'"'
        names = (b'"model":"' + upstream + b'"', b'"model": "' + upstream + b'"')
        payload: bytes | None = self._responses_payload(model, body, True)
        del body
        async with self.request("POST", f"{self.spec.base_url}/responses",
                                data=payload) as resp:
            payload = None
            async for event in self.sse_events(resp):
                name, data = sse.parse(event)
                if not name and data:                # no ``event:`` line: the JSON's type
                    obj = self.parse_json(data, "sent a stream event")
                    if "error" in obj and "type" not in obj:     # chat's in-band error frame
                        raise self.stream_error(event)
                    name = str(obj.get("type"))
                if name in ("error", "response.failed"):
                    obj = self.parse_json(data, "sent an error event")
                    failed = obj.get("response") if name != "error" else None
                    raise self.responses_failure(
                        failed.get("error") if isinstance(failed, dict) else obj)
                if model.upstream != model.alias and b'"model"' in event:
                    for old in names:                   # compact JSON, or spaced
                        event = event.replace(old, new)
                yield event + b"\n\n"
                if name in RESPONSES_TERMINAL:
                    return
        raise self.incomplete()

    def responses_failure(self, error: Any) -> ApiError:
        """The ApiError for a Responses ``error`` (of an ``error`` event or a failed
        response): 429 for rate limits and quota, 500 for server errors, else 400 (about the
        request: its message kept, scrubbed); ``context_length_exceeded`` keeps its code."""
        e = error if isinstance(error, dict) else {}
        code = str(e.get("code") or "")
        status = (429 if code in ("rate_limit_exceeded", "insufficient_quota")
                  else 500 if code in _SERVER_CODES else 400)
        err = self.map_error(status, {"error": e}, None)
        if code == "context_length_exceeded":
            err.code = code
        return err

    def stream_error(self, event: bytes) -> ApiError:
        """The error an in-band ``data: {"error": …}`` frame stands for (booked on the
        breaker like any failure; the client's stream ends with the gateway's error frame)."""
        obj = self.parse_json(sse.parse(event)[1], "sent an error event")
        err = obj.get("error")
        kind = f"{err.get('type')} {err.get('code')}" if isinstance(err, dict) else ""
        status = 429 if "rate_limit" in kind else 400 if "invalid_request" in kind else 500
        return self.map_error(status, obj, None)

    async def embed(self, model: ModelSpec, req: EmbeddingRequest) -> dict[str, Any]:
        """``embeddings``, passed through, always asking for base64 (float32: a third of the
        bytes of JSON floats, and relayed as it came to a client that asked for base64); the
        answer's ``model`` is the alias, its vectors in the encoding asked for (decoded to
        floats only for a client that wants floats; a server that ignores
        ``encoding_format`` is made to honour it) and its usage estimated if the server gave
        none."""
        self.require_configured()
        body, raw = req.body, req.raw
        if req.encoding_format != "base64":
            body, raw = {**body, "encoding_format": "base64"}, None
        data = await self.call_json("POST", f"{self.spec.base_url}/embeddings",
                                    data=self._payload(model, body, raw))
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(req.inputs) or not all(
                isinstance(i, dict) and isinstance(i.get("embedding"), (list, str))
                for i in items):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"one embedding per input; it does not look like an "
                                f"OpenAI-compatible embeddings server.")
        items.sort(key=lambda i: i.get("index") if isinstance(i.get("index"), int) else 0)
        try:
            for item in items:
                vector = item["embedding"]
                if req.encoding_format == "base64" and isinstance(vector, list):
                    item["embedding"] = embedding.encode(vector, "base64")
                elif req.encoding_format == "float" and isinstance(vector, str):
                    item["embedding"] = embedding.decode(vector)
        except (TypeError, ValueError):       # not numbers, not base64 of float32
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered with an "
                                f"embedding that is not a vector of numbers.") from None
        counted = data.get("usage")
        if not (isinstance(counted, dict) and isinstance(counted.get("prompt_tokens"), int)):
            data["usage"] = embedding.usage(req.estimate())
        data["model"] = model.alias
        return data

    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        """``images/generations``; GPT image models answer ``b64_json`` (a ``url`` answer,
        as dall-e gives, is downloaded), so the gateway can re-host or inline the bytes."""
        self.require_configured()
        size = req.size if req.size in IMAGE_SIZES else nearest(req.ratio, IMAGE_SIZES, "auto")
        body: dict[str, Any] = {"model": model.upstream, "prompt": req.prompt, "n": req.n,
                                "size": size}
        if req.high_quality:
            body["quality"] = "high"
        data = await self.call_json("POST", f"{self.spec.base_url}/images/generations",
                                    json=body)
        out = []
        for item in data.get("data") or []:
            revised = item.get("revised_prompt") or req.prompt
            mime = f"image/{data.get('output_format') or 'png'}".replace("jpg", "jpeg")
            if item.get("b64_json"):
                out.append(Media(base64.b64decode(item["b64_json"]), mime, revised))
            elif item.get("url"):
                # someone else's server (a CDN): none of the provider's headers go there
                async with self.request("GET", item["url"], auth=False) as img:
                    ctype = img.headers.get("Content-Type", mime).split(";")[0]
                    out.append(Media(await img.read(), ctype, revised))
        if not out:
            raise NoOutput(f"`{model.alias}` made no image for this prompt (the upstream "
                           f"answered without one). Rephrase the prompt, or try again.",
                           param="prompt")
        return out


def _has_extra_content(body: dict[str, Any]) -> bool:
    return any(isinstance(m, dict) and any(isinstance(tc, dict) and "extra_content" in tc
                                           for tc in m.get("tool_calls") or [])
               for m in body.get("messages") or [])


def _without_extra_content(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without ``extra_content`` on its assistant messages' tool calls."""
    def clean(m: Any) -> Any:
        if not (isinstance(m, dict) and isinstance(m.get("tool_calls"), list)):
            return m
        return {**m, "tool_calls": [{k: v for k, v in tc.items() if k != "extra_content"}
                                    if isinstance(tc, dict) else tc for tc in m["tool_calls"]]}
    return {**body, "messages": [clean(m) for m in body.get("messages") or []]}


def _rename(event: bytes, old: bytes, new: bytes, alias: str) -> bytes:
    """``event`` with its ``model`` set to ``alias`` (a byte replace when it can be)."""
    if old in event:
        return event.replace(old, new, 1)
    if b'"model"' not in event:
        return event
    # unusual spacing: fall back to a real parse of this one frame
    _, data = sse.parse(event)
    try:
        obj = orjson.loads(data or b"")
    except (orjson.JSONDecodeError, TypeError):
        return event
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = alias
    return sse.encode(obj)[:-2]


class Passthrough:
    """An OpenAI-compatible upstream's stream relayed frame by frame: ``data: [DONE]``
    must end it (else a 502), an in-band ``data: {"error": …}`` event is raised as the error
    it stands for, and ``model`` is set back to the alias.  One class-based iterator in
    place of two stacked async generators (the provider's and ``sse_events``): each of those
    held a frame, and a weakref in the loop's registry of generators, for the life of every
    stream.  ``aclose`` releases the upstream answer (also on a stream cut short)."""
    __slots__ = ("_alias", "_call", "_decoder", "_done", "_eof", "_events", "_new", "_old",
                 "_provider", "_resp")

    def __init__(self, provider: OpenAIProvider, call: UpstreamCall, model: ModelSpec):
        self._provider, self._alias = provider, model.alias
        self._call: UpstreamCall | None = call      # None once released
        self._old = self._new = b""
        if model.upstream != model.alias:
            self._old = b'"model":"' + model.upstream.encode() + b'"'
            self._new = b'"model":"' + model.alias.encode() + b'"'
        self._resp: aiohttp.ClientResponse | None = None
        self._decoder = sse.SSEDecoder()
        self._events: list[bytes] = []        # decoded and not yet relayed, last first
        self._done = self._eof = False

    def __aiter__(self) -> Passthrough:
        return self

    async def __anext__(self) -> bytes:
        if self._call is None:                      # ended, failed or closed
            raise StopAsyncIteration
        try:
            event = await self._next_event()
            if event is not None and event.startswith(b'data: {"error"'):
                raise self._provider.stream_error(event)    # the upstream failed mid-way
        except BaseException as exc:
            await self._release(exc)     # a transport failure is raised as the 502 / 504
            raise
        if event is None:
            await self._release(None)
            if not self._done:
                raise self._provider.incomplete()
            raise StopAsyncIteration
        if event.startswith(b"data: [DONE]"):
            self._done = True
        elif self._old:
            event = _rename(event, self._old, self._new, self._alias)
        return event + b"\n\n"

    async def _next_event(self) -> bytes | None:
        """The next raw event; None once the answer has ended."""
        if self._resp is None and self._call is not None:
            call, self._call = self._call, None      # a failed send releases itself
            self._resp = await call.__aenter__()
            self._call, call.data = call, None       # not held for the life of the stream
            self._provider.check_event_stream(self._resp)
        if self._resp is None:
            return None
        while not self._events:
            if self._eof:
                return None
            chunk = await self._resp.content.readany()
            if chunk:
                self._events = self._decoder.feed(chunk)
            else:
                self._events, self._eof = self._decoder.close(), True
            self._events.reverse()
        return self._events.pop()

    async def _release(self, exc: BaseException | None) -> None:
        call, self._call = self._call, None
        if call is not None:
            await call.__aexit__(type(exc) if exc else None, exc, None)

    async def aclose(self) -> None:
        """Release the upstream answer (a stream cut short takes its connection down)."""
        await self._release(None)
