"""FakeAnthropic: the Messages API (POST /v1/messages), stream and not.

Bodies are validated with the anthropic SDK's request types and Anthropic's own rules
(``anthropic_checks``): a bad one gets Anthropic's 400.  Cache breakpoints are honoured: the
prefix up to each is remembered, and usage splits the prompt into ``input_tokens``,
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` as Anthropic does.  With
``thinking`` enabled the answer starts with a thinking block (``thought_text``, signed with a
signature remembered in ``signatures``; a thinking block sent back must carry one of them).
``server_tools`` (``{"web_search": 2}``, by ``server_tool_use`` name) makes the answer start
with that many server tool calls, reported in ``usage.server_tool_use`` too (web search and
fetch); ``usage.service_tier`` is ``usage_tier``, ``usage.speed`` ``fast`` when asked; the part
of a cache write up to a 1-hour breakpoint is ``cache_creation.ephemeral_1h_input_tokens``.
Stream events are built as the SDK's ``Raw*Event`` models."""
from __future__ import annotations

import base64
import secrets

import orjson
from aiohttp import web
from anthropic import types as at

from . import anthropic_checks
from .base import JSON, FakeUpstream, split_pieces, sse_event, words

# the SDK's model of each stream event (ping has none)
EVENTS = {"message_start": at.RawMessageStartEvent,
          "content_block_start": at.RawContentBlockStartEvent,
          "content_block_delta": at.RawContentBlockDeltaEvent,
          "content_block_stop": at.RawContentBlockStopEvent,
          "message_delta": at.RawMessageDeltaEvent, "message_stop": at.RawMessageStopEvent}

TOOL_PREAMBLE = "Let me check."


def anthropic_error(type_: str, message: str) -> dict:
    """Anthropic's error body (wire-formats 4.5)."""
    return {"type": "error", "error": {"type": type_, "message": message},
            "request_id": "req_fake" + secrets.token_hex(8)}


def _block_text(content) -> str:
    """Text of a string or a list of blocks (text blocks and tool_result contents)."""
    if isinstance(content, str):
        return content
    out = []
    for b in content if isinstance(content, list) else []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            out.append(b.get("text") or "")
        elif b.get("type") == "tool_result":
            out.append(_block_text(b.get("content")))
    return " ".join(t for t in out if t)


def _user_text(content) -> str:
    """Text blocks of a user turn; its tool_result contents if it has no text block."""
    if isinstance(content, list):
        texts = [b.get("text") or "" for b in content
                 if isinstance(b, dict) and b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return _block_text(content)


class FakeAnthropic(FakeUpstream):
    default_api_key = "sk-ant-fake"

    def __init__(self, api_key: str | None = None):
        super().__init__(api_key)
        self.thought_text = "Considering the request carefully."
        self.signatures: set[str] = set()     # thinking signatures given out (kept by reset)
        self.cache: set[str] = set()          # prefixes cached (emptied by reset)
        self.server_tools: dict[str, int] = {}   # server tool calls per answer, by name
        self.usage_tier = "standard"          # the tier usage reports

    def reset(self) -> FakeAnthropic:
        super().reset()
        self.cache.clear()
        return self

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    # ---- scripting helpers -------------------------------------------------
    def overloaded_next(self, path_contains: str | None = None) -> None:
        self.fail_next(529, anthropic_error("overloaded_error", "Overloaded"),
                       path_contains=path_contains)

    def rate_limited_next(self, retry_after: int = 7, path_contains: str | None = None) -> None:
        self.fail_next(429, anthropic_error("rate_limit_error", "Number of request tokens has "
                                            "exceeded your per-minute rate limit"),
                       headers={"retry-after": str(retry_after)}, path_contains=path_contains)

    def error_mid_stream_next(self, after_events: int, path_contains: str | None = None) -> None:
        """Next stream: ``after_events`` frames, then an ``event: error`` frame, then a clean end.
        A non-streaming request that takes it gets a 529 overloaded_error."""
        frame = sse_event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                              "message": "Overloaded"}})
        self._push(path_contains, kind="error", after=after_events, frame=frame)

    def mid_stream_fallback(self, b: dict):
        return self._error(529, "overloaded_error", "Overloaded")

    # ---- handler -----------------------------------------------------------
    def _error(self, status: int, type_: str, message: str) -> web.Response:
        body = anthropic_error(type_, message)
        return self.json_response(body, status, headers={"request-id": body["request_id"]})

    def _validate(self, request: web.Request):
        if (request.headers.get("x-api-key") != self.api_key
                or not request.headers.get("anthropic-version")):
            return self._error(401, "authentication_error", "invalid x-api-key")
        body = request[JSON]
        if not isinstance(body, dict):
            return self._error(400, "invalid_request_error", "Request body is not valid JSON")
        for field in ("model", "max_tokens", "messages"):
            if body.get(field) in (None, ""):
                return self._error(400, "invalid_request_error", f"{field}: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            return self._error(400, "invalid_request_error",
                               "max_tokens: Input should be a valid integer >= 1")
        msgs = body["messages"]
        if not isinstance(msgs, list) or not msgs:
            return self._error(400, "invalid_request_error",
                               "messages: at least one message is required")
        problem = (anthropic_checks.type_problem(body)
                   or anthropic_checks.rule_problem(body, self.signatures))
        if problem:
            return self._error(400, "invalid_request_error", problem)
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("user", "assistant"):
                return self._error(400, "invalid_request_error",
                                   f"messages.{i}.role: Unexpected role {role!r}. The Messages "
                                   "API accepts a top-level `system` parameter, not \"system\" "
                                   "as an input message role.")
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                return self._error(400, "invalid_request_error",
                                   f"messages.{i}: roles must alternate between \"user\" and "
                                   "\"assistant\", starting with \"user\"")
        return None

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = request[JSON]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "invalid_request_error", "messages: Field required")
        if "max_tokens" in body or "stream" in body:
            return self._error(400, "invalid_request_error",
                               "count_tokens takes no max_tokens or stream")
        tokens = words(_block_text(body.get("system"))) + sum(
            words(_block_text(m.get("content"))) for m in body["messages"]
            if isinstance(m, dict))
        return self.json_response({"input_tokens": tokens})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        err = self._validate(request)
        if err:
            return err
        body = request[JSON]
        msgs = body["messages"]
        prompt = words(_block_text(body.get("system"))) + sum(
            words(_block_text(m.get("content"))) for m in msgs)
        last_user = next(_user_text(m.get("content")) for m in reversed(msgs)
                         if m["role"] == "user")
        tool = self.tool_for(request, body)
        text = TOOL_PREAMBLE if tool else self.answer_for(last_user)
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        thought = words(self.thought_text) if thinking else 0
        completion = words(text) + (words(tool["arguments"]) if tool else 0) + thought
        stop_reason = "tool_use" if tool else "end_turn"
        mid, model = "msg_fake" + secrets.token_hex(8), body["model"]
        headers = {"request-id": "req_fake" + secrets.token_hex(8)}
        uncached, read, written = anthropic_checks.cache_usage(body, prompt, self.cache)
        usage_in = {"input_tokens": uncached, "cache_creation_input_tokens": written,
                    "cache_read_input_tokens": read, "service_tier": self.usage_tier}
        if written:
            hour = min(written, max(0, anthropic_checks.hour_cached(body) - read))
            usage_in["cache_creation"] = {"ephemeral_5m_input_tokens": written - hour,
                                          "ephemeral_1h_input_tokens": hour}
        if body.get("speed") == "fast":
            usage_in["speed"] = "fast"
        usage_out: dict = {"output_tokens": completion}
        names = [name for name, count in self.server_tools.items() for _ in range(count)]
        calls = [{"type": "server_tool_use", "id": f"srvtoolu_fake{n:02d}", "name": name,
                  "input": {"query": "bees"}} for n, name in enumerate(names)]
        if calls:
            usage_out["server_tool_use"] = {
                f"{name}_requests": self.server_tools.get(name, 0)
                for name in ("web_search", "web_fetch")}
        if thinking:
            usage_out["output_tokens_details"] = {"thinking_tokens": thought}
            signature = base64.b64encode(secrets.token_bytes(24)).decode()
            self.signatures.add(signature)
        tool_id = "toolu_fake01"
        if not body.get("stream"):
            content = [*calls, {"type": "text", "text": text}]
            if thinking:
                content.insert(0, {"type": "thinking", "thinking": self.thought_text,
                                   "signature": signature})
            if tool:
                content.append({"type": "tool_use", "id": tool_id, "name": tool["name"],
                                "input": orjson.loads(tool["arguments"] or "{}")})
            message = at.Message.model_validate({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {**usage_in, **usage_out}})
            return self.json_response(message.model_dump(mode="json", exclude_unset=True),
                                      headers=headers)

        def ev(name, **data):
            obj = {"type": name, **data}
            if name in EVENTS:
                obj = EVENTS[name].model_validate(obj).model_dump(mode="json",
                                                                  exclude_unset=True)
            return sse_event(name, obj)

        first = (1 if thinking else 0) + len(calls)        # the text block's index
        pieces = [text] if tool else split_pieces(text, self.stream_events)
        deltas = [ev("content_block_delta", index=first, delta={"type": "text_delta", "text": p})
                  for p in pieces]
        deltas.insert(max(1, len(deltas) // 2), ev("ping"))
        frames = [ev("message_start", message={
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**usage_in, "output_tokens": 1}})]
        if thinking:
            frames += [
                ev("content_block_start", index=0,
                   content_block={"type": "thinking", "thinking": "", "signature": ""}),
                *(ev("content_block_delta", index=0,
                     delta={"type": "thinking_delta", "thinking": part})
                  for part in split_pieces(self.thought_text, 2)),
                ev("content_block_delta", index=0,
                   delta={"type": "signature_delta", "signature": signature}),
                ev("content_block_stop", index=0)]
        for n, call in enumerate(calls, 1 if thinking else 0):
            frames += [ev("content_block_start", index=n, content_block={**call, "input": {}}),
                       ev("content_block_delta", index=n, delta={
                           "type": "input_json_delta",
                           "partial_json": orjson.dumps(call["input"]).decode()}),
                       ev("content_block_stop", index=n)]
        frames += [ev("content_block_start", index=first,
                      content_block={"type": "text", "text": ""}),
                   *deltas, ev("content_block_stop", index=first)]
        if tool:
            frames.append(ev("content_block_start", index=first + 1, content_block={
                "type": "tool_use", "id": tool_id, "name": tool["name"], "input": {}}))
            frames += [ev("content_block_delta", index=first + 1,
                          delta={"type": "input_json_delta", "partial_json": part})
                       for part in split_pieces(tool["arguments"], 3)]
            frames.append(ev("content_block_stop", index=first + 1))
        frames.append(ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
                         usage=usage_out))
        frames.append(ev("message_stop"))
        return await self.stream(request, frames, headers=headers)
