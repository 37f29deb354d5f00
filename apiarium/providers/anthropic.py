"""`kind: anthropic`: the Messages API (``POST {base_url}/v1/messages``) behind OpenAI chat.

Request (OpenAI → Anthropic): ``anthropic_request.to_anthropic``.

Response: text blocks → ``content``; ``thinking`` blocks → ``reasoning_content`` (thinking is
only on when the client asked for reasoning), and with a tool call they are kept for its id
(``Signatures``: Anthropic wants them back in front of the call); ``tool_use`` blocks →
``tool_calls`` (id kept, input as compact JSON); ``stop_reason`` → ``finish_reason`` per
``FINISH``; usage by ``tokens.TokenUsage.from_anthropic``: prompt = input + cache_creation +
cache_read, cached = cache_read, cache_write_tokens = cache_creation, completion = output.

Stream: one OpenAI frame per upstream event, sent as it arrives: message_start → role chunk,
text_delta → content, thinking_delta → reasoning_content, tool_use start / input_json_delta →
tool_calls deltas (index counts tool blocks), ping → SSE comment, message_delta → remembered,
message_stop → finish chunk, usage chunk (if asked) and [DONE].  An ``error`` event, a dropped
connection or a stream that ends without message_stop raise an ApiError (the handler sends it
as the SSE error frame).

Native Messages requests pass through as they are; a ``cache: auto`` model adds its cache
breakpoints to one that has none (``anthropic_request.add_cache_breakpoints``).

Errors: the shared mapping in base.py (401/403 → 502, 429 → 429 + Retry-After, 529 → 503,
413 → 413 request_too_large, other 4xx passed through with the upstream's message); 402 /
billing_error / "credit balance" count as quota: 429 upstream_rate_limited, x-should-retry false.
"""
from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

import orjson

from .. import sse
from ..catalog import ModelSpec
from ..errors import ApiError, UpstreamError
from ..tokens import TokenUsage
from . import shapes
from .anthropic_request import add_cache_breakpoints, to_anthropic
from .base import Provider
from .signatures import Signatures

VERSION = "2023-06-01"

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
          "max_tokens": "length", "model_context_window_exceeded": "length",
          "tool_use": "tool_calls", "refusal": "content_filter"}

# The HTTP status Anthropic uses for each error type (for ``error`` events inside a stream).
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                "overloaded_error": 529}


class AnthropicProvider(Provider):
    """``x-api-key`` + ``anthropic-version``; Messages API ↔ OpenAI chat."""

    kind = "anthropic"
    owned_by = "anthropic"
    public_hosts = frozenset({"api.anthropic.com", "docs.anthropic.com", "docs.claude.com",
                              "console.anthropic.com", "support.anthropic.com"})
    protocol_headers: ClassVar[Mapping[str, str]] = {"anthropic-version": VERSION}
    cache_write_factor: ClassVar[float] = 1.25     # a 5-minute cache write: 1.25x input

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.spec.api_key}

    # ------------------------------------------------------------------ chat
    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        self.require_configured()
        data = await self.call_json("POST", f"{self.spec.base_url}/v1/messages",
                                    json=to_anthropic(model, body, False, self.signatures))
        if not isinstance(data.get("content"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"`content`; it does not look like the Anthropic Messages API.")
        text: list[str] = []
        calls: list[dict] = []
        thinking: list[dict] = []
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(block.get("text") or "")
            elif block.get("type") in ("thinking", "redacted_thinking"):
                thinking.append(block)
            elif block.get("type") == "tool_use":
                if not calls:
                    keep_thinking(self.signatures, str(block.get("id")), thinking)
                calls.append(shapes.tool_call(str(block.get("id")), str(block.get("name")),
                                              orjson.dumps(block.get("input") or {}).decode()))
        content = "".join(text)
        thought = "".join(b.get("thinking") or "" for b in thinking)
        return shapes.completion(model.alias, content or (None if calls else ""),
                                 finish_reason(data.get("stop_reason")), calls,
                                 openai_usage(data.get("usage") or {}), reasoning=thought or None)

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncGenerator[bytes, None]:
        self.require_configured()
        state = _Stream(self, shapes.Chunks(model.alias, shapes.wants_usage(body)))
        async with self.request("POST", f"{self.spec.base_url}/v1/messages",
                                json=to_anthropic(model, body, True, self.signatures)) as resp:
            async for event in self.sse_events(resp):
                for frame in state.on(event):
                    yield frame
                if state.done:
                    return
        raise self.incomplete()

    # ------------------------------------------------------------------ native Messages
    # A client that speaks the Messages API itself (Claude Code, the anthropic SDK) reaches an
    # Anthropic upstream as it asked: its blocks, thinking signatures, cache_control and beta
    # flags intact; only ``model`` is the upstream id going out and the alias coming back.
    native_dialects: ClassVar[frozenset[str]] = frozenset({"messages"})

    def _beta(self, beta: str | None) -> dict[str, str] | None:
        return {"anthropic-beta": beta} if beta else None

    async def messages(self, model: ModelSpec, body: dict[str, Any],
                       beta: str | None = None) -> dict[str, Any]:
        """A Messages request passed through; the answer with the alias as its model."""
        self.require_configured()
        payload = {**body, "model": model.upstream, "stream": False}
        if model.cache == "auto":
            payload = add_cache_breakpoints(payload)
        async with self.request("POST", f"{self.spec.base_url}/v1/messages", json=payload,
                                extra_headers=self._beta(beta)) as resp:
            data = await self.read_json(resp)
        data["model"] = model.alias
        return data

    async def messages_stream(self, model: ModelSpec, body: dict[str, Any],
                              beta: str | None = None) -> AsyncGenerator[bytes, None]:
        """A streamed Messages request passed through, event by event; an ``error`` event is
        raised (the handler ends the stream in the client's dialect)."""
        self.require_configured()
        payload = {**body, "model": model.upstream, "stream": True}
        if model.cache == "auto":
            payload = add_cache_breakpoints(payload)
        old = b'"model":"' + model.upstream.encode() + b'"'
        new = b'"model":"' + model.alias.encode() + b'"'
        async with self.request("POST", f"{self.spec.base_url}/v1/messages", json=payload,
                                extra_headers=self._beta(beta)) as resp:
            async for event in self.sse_events(resp):
                name, data = sse.parse(event)
                if name == "error":
                    raise self.stream_error(self.parse_json(data, "sent an error event"))
                if name == "message_start" and old != new:
                    event = event.replace(old, new, 1)
                yield event + b"\n\n"
                if name == "message_stop":
                    return
        raise self.incomplete()

    async def count_tokens(self, model: ModelSpec, body: dict[str, Any],
                           beta: str | None = None) -> int:
        """The upstream's own count of a Messages request's input tokens."""
        self.require_configured()
        payload = {k: v for k, v in body.items()
                   if k in ("messages", "system", "tools", "tool_choice", "thinking")}
        async with self.request("POST", f"{self.spec.base_url}/v1/messages/count_tokens",
                                json={**payload, "model": model.upstream},
                                extra_headers=self._beta(beta)) as resp:
            data = await self.read_json(resp)
        tokens = data.get("input_tokens")
        if not isinstance(tokens, int):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered "
                                f"count_tokens without `input_tokens`.")
        return tokens

    # ------------------------------------------------------------------ errors
    def is_quota(self, status: int, data: Any) -> bool:
        err = data.get("error") if isinstance(data, dict) else None
        kind = err.get("type") if isinstance(err, dict) else None
        said = self.error_message(data).lower()
        return status == 402 or kind == "billing_error" or "credit balance" in said

    def stream_error(self, obj: dict[str, Any]) -> ApiError:
        """The ApiError for an ``error`` event that arrived inside a 200 stream."""
        err = obj.get("error")
        kind = err.get("type") if isinstance(err, dict) else None
        return self.map_error(ERROR_STATUS.get(str(kind), 500), obj, None)


class _Stream:
    """Translates the named events of one Messages stream into chat.completion.chunk frames."""

    def __init__(self, provider: AnthropicProvider, chunks: shapes.Chunks) -> None:
        self.provider, self.chunks = provider, chunks
        self.tools: dict[int, int] = {}       # Anthropic block index → OpenAI tool_calls index
        self.finish = "stop"
        self.usage: dict = {}
        self.done = False
        self.thinking: list[dict] = []        # this message's thinking blocks, as they come

    def on(self, event: bytes) -> list[bytes]:
        name, data = sse.parse(event)
        if data is None:
            return []
        obj = self.provider.parse_json(data, "sent a stream event")
        kind = obj.get("type") or name
        chunks = self.chunks
        if kind == "message_start":
            self.usage.update((obj.get("message") or {}).get("usage") or {})
            return [chunks.role()]
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                if not self.tools:
                    keep_thinking(self.provider.signatures, str(block.get("id")), self.thinking)
                k = self.tools[_index(obj)] = len(self.tools)
                return [chunks.tool_start(k, str(block.get("id")), str(block.get("name")))]
            if block.get("type") in ("thinking", "redacted_thinking"):
                self.thinking.append(dict(block))
                return [chunks.reasoning(block["thinking"])] if block.get("thinking") else []
            if block.get("type") == "text" and block.get("text"):
                return [chunks.content(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [chunks.content(delta["text"])]
            if delta.get("type") in ("thinking_delta", "signature_delta") and self.thinking:
                field = "thinking" if delta["type"] == "thinking_delta" else "signature"
                piece = delta.get(field)
                if isinstance(piece, str):
                    block = self.thinking[-1]
                    block[field] = (block.get(field) or "") + piece
                    if field == "thinking" and piece:
                        return [chunks.reasoning(piece)]
                return []
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                at = self.tools.get(_index(obj))
                return [] if at is None else [chunks.tool_args(at, delta["partial_json"])]
            return []
        if kind == "ping":
            return [sse.comment("ping")]
        if kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish = finish_reason(reason)
            self.usage.update(obj.get("usage") or {})     # cumulative counts: replace
            return []
        if kind == "message_stop":
            self.done = True
            frames = [chunks.finish(self.finish), chunks.usage(openai_usage(self.usage)), sse.DONE]
            return [f for f in frames if f is not None]
        if kind == "error":
            raise self.provider.stream_error(obj)
        return []                               # content_block_stop, thinking, unknown events


# ---------------------------------------------------------------------- response pieces
def _index(obj: dict) -> int:
    index = obj.get("index")
    return index if isinstance(index, int) else -1


def finish_reason(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop")


def openai_usage(u: dict) -> dict:
    return TokenUsage.from_anthropic(u).chat()


def keep_thinking(signatures: Signatures, call_id: str, blocks: list[dict]) -> None:
    """Keep the thinking blocks in front of a message's first tool call, for its id."""
    if blocks and call_id:
        signatures.put(call_id, orjson.dumps(blocks).decode())


