"""`kind: gemini`: Google's generativelanguage API (``v1beta``): chat here; images and Veo in
``gemini_media``, embeddings (``batchEmbedContents``) in ``gemini_embed``.

Calls ``POST {base_url}/v1beta/models/{upstream}:generateContent`` (or
``:streamGenerateContent?alt=sse``) with the ``x-goog-api-key`` header.

Request: see ``gemini_request`` (wire-formats 5.2).

Response (5.3-5.5): text parts joined; ``thought`` parts → ``reasoning_content`` when the
client asked for reasoning (``reasoning.wants_reasoning``), else skipped; functionCall parts →
tool_calls with ``call_…`` ids minted here, and a part's ``thoughtSignature`` kept for the id
(``Signatures``) and shown as ``extra_content.google.thought_signature``, as Google's own
OpenAI endpoint does; finishReason by ``_finish`` (STOP with a call → tool_calls); a blocked
prompt → content_filter, empty content.  Usage: ``tokens.TokenUsage.from_gemini`` (prompt =
prompt + toolUsePrompt tokens, cachedContentTokenCount among them; completion = candidates +
thoughts (= reasoning_tokens)).  Streams are translated event by event, never buffered;
Gemini sends no [DONE]: finish (last finishReason), usage and [DONE] follow the upstream's EOF.
Errors (5.8): ``{"error": {code, message, status, details}}``; RetryInfo.retryDelay →
Retry-After; per-day QuotaFailure = quota; API_KEY_INVALID = the gateway's own key: 502.
"""
from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from .. import sse
from ..catalog import ModelSpec
from ..embedding import EmbeddingRequest
from ..errors import ApiError, InvalidRequest, UpstreamError
from ..generation import ImageRequest, Media, VideoRequest
from ..tokens import TokenUsage
from . import gemini_embed, gemini_media
from .base import Provider
from .gemini_request import to_gemini
from .reasoning import wants_reasoning
from .shapes import Chunks, completion, google_extra, tool_call, wants_usage
from .signatures import Signatures
from .upstream_hints import parse_duration

_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
             "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
_STATUS_CODES = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
                 "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _call(part: dict, signatures: Signatures) -> tuple[str, str, str, dict | None]:
    """(minted id, name, JSON arguments, extra_content) of a functionCall part; its thought
    signature, if it has one, is kept for the id."""
    fc, id_ = part["functionCall"], _call_id()
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        signatures.put(id_, sig)
    else:
        sig = None
    return (id_, str(fc.get("name", "")), orjson.dumps(fc.get("args") or {}).decode(),
            google_extra(sig))


def _finish(reason: str | None, has_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _usage(meta: Any) -> dict:
    return TokenUsage.from_gemini(meta).chat()


def _details(data: Any, type_suffix: str) -> list[dict]:
    err = data.get("error") if isinstance(data, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return [d for d in details or [] if isinstance(d, dict)
            and str(d.get("@type", "")).endswith(type_suffix)]


# ---------------------------------------------------------------------- the provider
class GeminiProvider(Provider):
    """``x-goog-api-key``; generateContent ↔ OpenAI chat; images and Veo in gemini_media."""

    kind = "gemini"
    owned_by = "google"
    public_hosts = frozenset({"generativelanguage.googleapis.com", "ai.google.dev",
                              "cloud.google.com"})

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.spec.api_key}

    def url(self, path: str) -> str:
        """``{base_url}/v1beta/{path}``."""
        return f"{self.spec.base_url}/v1beta/{path}"

    # ------------------------------------------------------------------ media (gemini_media)
    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        return await gemini_media.generate_image(self, model, req)

    async def video(self, model: ModelSpec, req: VideoRequest) -> Media:
        return await gemini_media.generate_video(self, model, req)

    async def video_job(self, model: ModelSpec, req: VideoRequest,
                        started: Callable[[str], Awaitable[None]]) -> Media:
        return await gemini_media.generate_video(self, model, req, started)

    async def resume_video(self, operation: str, req: VideoRequest) -> Media:
        return await gemini_media.await_video(self, operation, req)

    # ------------------------------------------------------------------ embeddings (gemini_embed)
    async def embed(self, model: ModelSpec, req: EmbeddingRequest) -> dict[str, Any]:
        return await gemini_embed.embed(self, model, req)

    # ------------------------------------------------------------------ errors (5.8)
    def error_message(self, data: Any) -> str:
        msg = super().error_message(data).rstrip(". ")    # base.map_error adds its own "."
        key = self.spec.api_key
        return msg.replace(key, "***") if key and key in msg else msg

    def retry_hint(self, resp: aiohttp.ClientResponse, data: Any) -> float | None:
        for info in _details(data, "google.rpc.RetryInfo"):
            delay = parse_duration(info.get("retryDelay"))
            if delay is not None:
                return delay
        return super().retry_hint(resp, data)

    def is_quota(self, status: int, data: Any) -> bool:
        return any("PerDay" in str(v.get("quotaId", ""))
                   for f in _details(data, "google.rpc.QuotaFailure")
                   for v in f.get("violations") or [] if isinstance(v, dict))

    def map_error(self, status: int, data: Any, retry_after: float | None) -> ApiError:
        if status in (400, 401, 403) and any(
                d.get("reason") == "API_KEY_INVALID"
                for d in _details(data, "google.rpc.ErrorInfo")):
            return UpstreamError(f"The upstream provider `{self.spec.name}` rejected this "
                                 f"gateway's API key as invalid. The operator must check "
                                 f"{self.spec.setting('api_key')}.")
        return super().map_error(status, data, retry_after)

    # ------------------------------------------------------------------ chat
    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        self.require_configured()
        data = await self.call_json("POST", self.url(f"models/{model.upstream}:generateContent"),
                                    json=to_gemini(body, model, self.signatures))
        thoughts = wants_reasoning(body)
        cands = data.get("candidates")
        meta = _usage(data.get("usageMetadata"))
        if not isinstance(cands, list) or not cands:
            if (data.get("promptFeedback") or {}).get("blockReason"):
                return completion(model.alias, "", "content_filter", usage_=meta)
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"candidates.")
        out: dict[str, Any] | None = None
        for i, cand in enumerate(cands):
            parts = _parts(cand)
            text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
            calls = [tool_call(*_call(p, self.signatures)) for p in parts
                     if isinstance(p.get("functionCall"), dict)]
            thought = "".join(p["text"] for p in _thoughts(cand)) if thoughts else ""
            one = completion(model.alias, None if calls and not text else text,
                             _finish(cand.get("finishReason"), bool(calls)), calls, meta,
                             reasoning=thought or None)
            one["choices"][0]["logprobs"] = _logprobs(cand)
            if out is None:
                out = one
            else:                       # n > 1: candidateCount candidates, one choice each
                out["choices"].append({**one["choices"][0], "index": i})
        if out is None:                 # cands is a non-empty list: never
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"candidates.")
        return out

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncGenerator[bytes, None]:
        self.require_configured()
        payload = to_gemini(body, model, self.signatures)
        if (body.get("n") or 1) != 1:
            raise InvalidRequest("Gemini models on this gateway stream one choice only; send "
                                 "n=1 or stream=false.", param="n")
        state = _StreamState(Chunks(model.alias, wants_usage(body)), self.signatures,
                             wants_reasoning(body))
        url = self.url(f"models/{model.upstream}:streamGenerateContent?alt=sse")
        async with self.request("POST", url, json=payload) as resp:
            async for event in self.sse_events(resp):
                for frame in state.feed(self._event(resp, event)):
                    yield frame
        if state.finish is None:
            raise self.incomplete()
        for frame in state.end():
            yield frame

    def _event(self, resp: aiohttp.ClientResponse, event: bytes) -> dict[str, Any]:
        """One upstream SSE event as a response object; an error event raises."""
        obj = self.parse_json(sse.parse(event)[1], "sent a stream event")
        err = obj.get("error")
        if err is not None:     # {"error": {code, message, status}} mid-stream
            err = err if isinstance(err, dict) else {}
            code = err.get("code")
            if not (isinstance(code, int) and code >= 400):
                code = _STATUS_CODES.get(str(err.get("status")), 502)
            raise self.map_error(code, obj, self.retry_hint(resp, obj))
        return obj


def _token(c: Any) -> dict:
    c = c if isinstance(c, dict) else {}
    token = str(c.get("token", ""))
    logprob = c.get("logProbability")
    return {"token": token, "logprob": float(logprob) if isinstance(logprob, (int, float))
            else 0.0, "bytes": list(token.encode())}


def _logprobs(cand: Any) -> dict | None:
    """A candidate's ``logprobsResult`` (asked with ``responseLogprobs``) as OpenAI's
    ``choices[].logprobs``: each chosen token, with the top candidates at its step."""
    result = cand.get("logprobsResult") if isinstance(cand, dict) else None
    if not isinstance(result, dict):
        return None
    tops = [t.get("candidates") or [] if isinstance(t, dict) else []
            for t in result.get("topCandidates") or []]
    content = [{**_token(c), "top_logprobs": [_token(t) for t in (tops[i] if i < len(tops)
                                                                   else [])]}
               for i, c in enumerate(result.get("chosenCandidates") or [])]
    return {"content": content, "refusal": None}


def _all_parts(cand: Any) -> list[dict]:
    content = cand.get("content") if isinstance(cand, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts or [] if isinstance(p, dict)]


def _parts(cand: Any) -> list[dict]:
    """A candidate's parts, without thoughts."""
    return [p for p in _all_parts(cand) if not p.get("thought")]


def _thoughts(cand: Any) -> list[dict]:
    """A candidate's thought parts that have text (thought summaries)."""
    return [p for p in _all_parts(cand) if p.get("thought") and isinstance(p.get("text"), str)]


class _StreamState:
    """Turns each upstream stream event into OpenAI chunk frames, remembering what the
    end of the stream needs (the last finishReason, the last usageMetadata)."""

    def __init__(self, chunks: Chunks, signatures: Signatures, thoughts: bool = False) -> None:
        self.chunks, self.started, self.tools = chunks, False, 0
        self.finish: str | None = None
        self.meta: Any = None
        self.signatures, self.thoughts = signatures, thoughts

    def feed(self, obj: dict) -> list[bytes]:
        frames = []
        if not self.started:
            self.started = True
            frames.append(self.chunks.role())
        self.meta = obj.get("usageMetadata") or self.meta
        if (obj.get("promptFeedback") or {}).get("blockReason") and not obj.get("candidates"):
            self.finish = "content_filter"
        for cand in obj.get("candidates") or []:
            if not isinstance(cand, dict) or cand.get("index", 0) != 0:
                continue
            logprobs = _logprobs(cand)
            for p in _all_parts(cand):
                if p.get("thought"):
                    if self.thoughts and isinstance(p.get("text"), str) and p["text"]:
                        frames.append(self.chunks.reasoning(p["text"]))
                    continue
                if isinstance(p.get("text"), str) and p["text"]:
                    frames.append(self.chunks.content(p["text"], logprobs))
                    logprobs = None
                if isinstance(p.get("functionCall"), dict):
                    frames.append(self.chunks.tool_start(self.tools,
                                                         *_call(p, self.signatures)))
                    self.tools += 1
            if cand.get("finishReason"):
                self.finish = _finish(cand["finishReason"], self.tools > 0)
        return frames

    def end(self) -> list[bytes]:
        frames = [] if self.started else [self.chunks.role()]
        frames.append(self.chunks.finish(self.finish or "stop"))
        tail = self.chunks.usage(_usage(self.meta))
        if tail is not None:
            frames.append(tail)
        frames.append(sse.DONE)
        return frames
