"""`kind: anthropic`: the Messages API (``POST {base_url}/v1/messages``) behind OpenAI chat.

Request (OpenAI → Anthropic):

    system / developer turns        → top-level ``system`` (texts joined by a blank line)
    user / assistant turns          → ``messages``; consecutive same-role turns are merged
    text parts                      → ``text`` blocks (empty ones dropped)
    image_url data: / http(s)       → ``image`` block, ``base64`` / ``url`` source
    assistant ``tool_calls``        → ``tool_use`` blocks (``arguments`` parsed into ``input``)
    ``tool`` messages               → ``tool_result`` blocks in a user turn
    max_completion_tokens|max_tokens→ ``max_tokens`` (default 4096)
    stop                            → ``stop_sequences``
    temperature (clamped to 0..1), top_p, user → temperature, top_p, metadata.user_id
    tools                           → tools[{name, description, input_schema}]
    tool_choice none|auto|required|{function}  → none|auto|any|tool;
    parallel_tool_calls:false       → disable_parallel_tool_use
    n > 1                           → 400; other OpenAI-only fields are not sent

Response: text blocks → ``content``; ``tool_use`` blocks → ``tool_calls`` (id kept, input as
compact JSON); ``stop_reason`` → ``finish_reason`` per ``FINISH``; usage: prompt = input +
cache_creation + cache_read, cached = cache_read, completion = output.

Stream: one OpenAI frame per upstream event, sent as it arrives: message_start → role chunk,
text_delta → content, tool_use start / input_json_delta → tool_calls deltas (index counts tool
blocks), ping → SSE comment, message_delta → remembered, message_stop → finish chunk, usage
chunk (if asked) and [DONE].  An ``error`` event, a dropped connection or a stream that ends
without message_stop raise an ApiError (the handler sends it as the SSE error frame).

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
from ..errors import ApiError, InvalidRequest, UpstreamError
from . import shapes
from .base import Provider

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

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
    protocol_headers: ClassVar[Mapping[str, str]] = {"anthropic-version": VERSION}

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.spec.api_key}

    # ------------------------------------------------------------------ chat
    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        self.require_configured()
        data = await self.call_json("POST", f"{self.spec.base_url}/v1/messages",
                                    json=to_anthropic(model.upstream, body, stream=False))
        if not isinstance(data.get("content"), list):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without "
                                f"`content`; it does not look like the Anthropic Messages API.")
        text, calls = [], []
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(block.get("text") or "")
            elif block.get("type") == "tool_use":
                calls.append(shapes.tool_call(str(block.get("id")), str(block.get("name")),
                                              orjson.dumps(block.get("input") or {}).decode()))
        content = "".join(text)
        return shapes.completion(model.alias, content or (None if calls else ""),
                                 finish_reason(data.get("stop_reason")), calls,
                                 openai_usage(data.get("usage") or {}))

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncGenerator[bytes, None]:
        self.require_configured()
        state = _Stream(self, shapes.Chunks(model.alias, shapes.wants_usage(body)))
        async with self.request("POST", f"{self.spec.base_url}/v1/messages",
                                json=to_anthropic(model.upstream, body, stream=True)) as resp:
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
        err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        return self.map_error(ERROR_STATUS.get(err.get("type"), 500), obj, None)


class _Stream:
    """Translates the named events of one Messages stream into chat.completion.chunk frames."""

    def __init__(self, provider: AnthropicProvider, chunks: shapes.Chunks) -> None:
        self.provider, self.chunks = provider, chunks
        self.tools: dict[int, int] = {}       # Anthropic block index → OpenAI tool_calls index
        self.finish = "stop"
        self.usage: dict = {}
        self.done = False

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
                k = self.tools[obj.get("index")] = len(self.tools)
                return [chunks.tool_start(k, str(block.get("id")), str(block.get("name")))]
            if block.get("type") == "text" and block.get("text"):
                return [chunks.content(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [chunks.content(delta["text"])]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                k = self.tools.get(obj.get("index"))
                return [] if k is None else [chunks.tool_args(k, delta["partial_json"])]
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
def finish_reason(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop")


def openai_usage(u: dict) -> dict:
    def n(key: str) -> int:
        v = u.get(key)
        return v if isinstance(v, int) else 0
    cached = n("cache_read_input_tokens")
    return shapes.usage(n("input_tokens") + n("cache_creation_input_tokens") + cached,
                        n("output_tokens"), cached)


# ---------------------------------------------------------------------- the request
def to_anthropic(upstream: str, body: dict, stream: bool) -> dict:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("`n` must be 1 for this model: Anthropic models give one choice "
                             "per request; send several requests instead.", param="n")
    system, turns = [], []
    for i, m in enumerate(body.get("messages") or []):
        role = m.get("role")
        if role in ("system", "developer"):
            text = shapes.text_of(m.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(m, i)
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise InvalidRequest(f"messages[{i}].tool_call_id is required on a tool "
                                     f"message.", param=f"messages[{i}].tool_call_id")
            result = {"type": "tool_result", "tool_use_id": m["tool_call_id"]}
            text = shapes.text_of(m.get("content"))
            if text:
                result["content"] = text
            role, blocks = "user", [result]
        else:
            raise InvalidRequest(f"messages[{i}].role `{role}` is not supported; use system, "
                                 f"developer, user, assistant or tool.",
                                 param=f"messages[{i}].role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for t in turns:                         # a lone text block reads better as a string
        if len(t["content"]) == 1 and t["content"][0]["type"] == "text":
            t["content"] = t["content"][0]["text"]

    out: dict = {"model": upstream, "max_tokens": _max_tokens(body), "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("`stop` must be a string or a list of strings.", param="stop")
        out["stop_sequences"] = stop
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
            raise InvalidRequest("`temperature` must be a number.", param="temperature")
        out["temperature"] = min(1.0, max(0.0, float(temperature)))
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    _add_tools(out, body)
    if stream:
        out["stream"] = True
    return out


def _max_tokens(body: dict) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"`{field}` must be a positive integer.", param=field)
        return value
    return DEFAULT_MAX_TOKENS


def _user_blocks(content: Any, param: str) -> list[dict]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"`{param}` must be a string or a list of parts.", param=param)
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append({"type": "image", "source": _image_source(url, f"{param}[{j}]")})
        else:
            raise InvalidRequest(f"`{param}[{j}]`: content parts of type `{kind}` are not "
                                 f"supported for this model (use text or image_url).",
                                 param=f"{param}[{j}]")
    return blocks


def _image_source(url: Any, param: str) -> dict:
    if isinstance(url, str) and url.startswith("data:"):
        mime, data = shapes.parse_data_url(url, f"{param}.image_url.url")
        return {"type": "base64", "media_type": mime, "data": data}
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise InvalidRequest(f"`{param}.image_url.url` must be an http(s) URL or a data: URL.",
                         param=f"{param}.image_url.url")


def _assistant_blocks(m: dict, i: int) -> list[dict]:
    content = m.get("content")
    text = shapes.text_of(content) if not isinstance(content, list) else "".join(
        p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict))
    blocks = [{"type": "text", "text": text}] if text else []
    for j, (id_, name, args) in enumerate(shapes.assistant_tool_calls(m, f"messages[{i}]")):
        blocks.append({"type": "tool_use", "id": id_ or f"toolu_{i}_{j}", "name": name,
                       "input": args})
    return blocks


def _add_tools(out: dict, body: dict) -> None:
    tools = body.get("tools")
    if not tools:
        return
    converted = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function" \
                or not fn.get("name"):
            raise InvalidRequest(f"tools[{j}] must be {{\"type\": \"function\", \"function\": "
                                 f"{{\"name\": ...}}}}.", param=f"tools[{j}]")
        t = {"name": fn["name"], "input_schema": fn.get("parameters")
             or {"type": "object", "properties": {}}}
        if fn.get("description"):
            t["description"] = fn["description"]
        converted.append(t)
    out["tools"] = converted
    choice = body.get("tool_choice")
    mapped = _tool_choice("auto" if choice is None else choice)
    if body.get("parallel_tool_calls") is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in mapped:
        out["tool_choice"] = mapped


def _tool_choice(choice: Any) -> dict:
    if choice in ("auto", "none", "required"):
        return {"type": "any" if choice == "required" else choice}
    if isinstance(choice, dict):
        fn, allowed = choice.get("function"), choice.get("allowed_tools")
        if choice.get("type") == "function" and isinstance(fn, dict) and fn.get("name"):
            return {"type": "tool", "name": fn["name"]}
        if choice.get("type") == "allowed_tools" and isinstance(allowed, dict):
            return {"type": "any" if allowed.get("mode") == "required" else "auto"}
    raise InvalidRequest("`tool_choice` must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}.",
                         param="tool_choice")
