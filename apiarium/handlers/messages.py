"""The Anthropic Messages dialect: POST /v1/messages and POST /v1/messages/count_tokens.

Same gateway rules as every endpoint (the key from ``x-api-key`` or ``Authorization:
Bearer``, IP binding, VPN 403, the token bucket, credits, usage, fallbacks, a disconnect
books what the upstream did), with every error in Anthropic's envelope.  The request is translated
to the internal chat request and run by the chat service on whatever provider serves the
model; the answer (or stream) is translated back.  The query string (``?beta=true``) and the
``anthropic-version`` / ``anthropic-beta`` headers are accepted, checked first against what
the model allows (``passthrough``: fields, flags, server tools, file ids, cache TTLs); on an
Anthropic upstream the request then passes as sent.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .. import passthrough
from ..catalog import ModelSpec
from ..dialects.anthropic_answer import count_tokens_estimate, error_body, error_headers, from_chat
from ..dialects.anthropic_messages import to_chat
from ..dialects.anthropic_stream import MessagesStream, stream_from_chat
from ..errors import ApiError, InvalidRequest
from .admission import CHAT_CALL, COUNT_TOKENS_BODY, admits, lookup, request
from .base import ApiHandler, as_api_error


class MessagesBase(ApiHandler):
    """What both Messages endpoints share: the key header, and Anthropic's error shapes."""
    dialect = "anthropic"
    _events: MessagesStream | None = None
    _request: dict | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = as_api_error(exc, status_code, self.request)
        status, body = error_body(err, request=self._request, request_id=self.request_id)
        self.set_status(status)
        for name, value in {**self._limit_headers, **error_headers(err)}.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def error_frame(self, err: ApiError) -> bytes:
        if self._events is not None:
            return self._events.fail(err)
        _, body = error_body(err, request=self._request, request_id=self.request_id)
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"

    def messages_body(self) -> dict:
        body, _ = self.json_body()
        self._request = body
        self.model_alias = str(body.get("model", ""))[:100]
        return body


@admits(POST=request(CHAT_CALL))
class MessagesHandler(MessagesBase):
    endpoint = "messages"

    async def post(self) -> None:
        body = self.messages_body()
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/messages")
        stream = body.get("stream", False)
        if stream not in (True, False, None):
            raise InvalidRequest("`stream` must be true or false.", param="stream")
        passthrough.check_messages(body, self.request.headers.get("anthropic-beta"), model,
                                   self.svc.catalog.allowed(model))
        if self.svc.chat.native(model, "messages"):
            body = passthrough.bound_messages(body, self.svc.settings.max_tool_calls)
            await self.passthrough(model, body, bool(stream))
            return
        chat_body = to_chat(body)
        events = MessagesStream(model.alias, request=body)
        if stream:
            self._events = events              # a shutdown mid-stream ends it in this dialect
        await self.translated_chat(
            model, chat_body, bool(stream), lambda frames: stream_from_chat(frames, events),
            lambda answer: from_chat(answer, model.alias))


    async def passthrough(self, model: ModelSpec, body: dict, stream: bool) -> None:
        """An Anthropic upstream gets the request as the client sent it, beta flags and all,
        once ``passthrough.check_messages`` found nothing the model does not allow (the
        gateway's rules still apply: key, limits, credits, usage, fallbacks)."""
        beta = self.request.headers.get("anthropic-beta")
        if stream:
            async def open_stream() -> AsyncIterator[bytes]:
                events = await self.svc.chat.messages_stream(model, body, self.key_hash, beta)
                self.served_by(events.served)
                return events
            await self.relay(open_stream)
            return
        answered = await self.guarded(self.svc.chat.messages(model, body, self.key_hash, beta))
        if answered is not None:
            answer, served = answered
            self.served_by(served)
            self.write_json(answer)


@admits(POST=lookup("one upstream count (free at the vendor), or a local estimate",
                    body=COUNT_TOKENS_BODY))
class CountTokensHandler(MessagesBase):
    endpoint = "count_tokens"

    async def post(self) -> None:
        body = self.messages_body()
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/messages")
        beta = self.request.headers.get("anthropic-beta")
        passthrough.check_messages(body, beta, model, self.svc.catalog.allowed(model))
        if not self.svc.chat.native(model, "messages"):        # the same checks as a request
            to_chat({**body, "max_tokens": body.get("max_tokens") or 1})
            self.write_json({"input_tokens": count_tokens_estimate(body)})
            return
        counted = await self.guarded(self.svc.chat.count_tokens(model, body, beta))
        if counted is not None:
            self.write_json({"input_tokens": counted})


routes = [
    (r"/v1/messages", MessagesHandler),
    (r"/v1/messages/count_tokens", CountTokensHandler),
]
