"""POST /v1/chat/completions and POST /v1/completions: parse, call the chat (or media)
service, write the answer or relay the stream."""
from __future__ import annotations

from collections.abc import AsyncIterator

from .. import legacy, passthrough
from ..catalog import ModelSpec
from ..errors import InvalidRequest
from .admission import CHAT_CALL, admits, request
from .base import ApiHandler


def check_stream(body: dict) -> bool:
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object, e.g. "
                             "{\"include_usage\": true}.", param="stream_options")
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be true or false.", param="stream")
    return stream


def check_messages(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` is required: a non-empty list of "
                             "{\"role\": ..., \"content\": ...} objects.", param="messages",
                             code="missing_messages" if messages is None else "invalid_messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a `role`.",
                                 param=f"messages[{i}]", code="invalid_messages")
    return messages


@admits(POST=request(CHAT_CALL))
class ChatHandler(ApiHandler):
    endpoint = "chat"

    async def post(self) -> None:
        body, raw = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/chat/completions")
        check_messages(body)
        stream = check_stream(body)
        if "service_tier" in body:
            passthrough.check_tier(body, model, self.svc.catalog.allowed(model))
        if model.type != "chat":
            await self.media_chat(model, body, stream)
        elif stream:
            # the stream holds neither the body nor its bytes once it is open (a long
            # chat history would otherwise stay in memory for the stream's whole life)
            opening = self.svc.chat.stream(model, body, raw, self.key_hash)
            del body, raw

            async def open_stream() -> AsyncIterator[bytes]:
                stream = await opening
                self.served_by(stream.served)
                return stream
            await self.relay(open_stream)
        else:
            answered = await self.guarded(self.svc.chat.complete(model, body, raw,
                                                                 self.key_hash))
            if answered is not None:
                answer, served = answered
                self.served_by(served)
                self.write_json(answer)

    async def media_chat(self, model: ModelSpec, body: dict, stream: bool) -> None:
        chat = self.svc.media.as_chat(model, body, self.key_hash, self.public_base())
        if stream:
            async def open_stream() -> AsyncIterator[bytes]:
                return chat.frames()
            await self.relay(open_stream)
            return
        answer = await self.guarded(chat.answer())
        if answer is not None:
            self.upstream_ms = self._observe_ttfb()
            self.write_json(answer)


@admits(POST=request(CHAT_CALL))
class CompletionsHandler(ApiHandler):
    endpoint = "completions"

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/completions")
        if model.completions == "native":
            await self.native(model, body)
            return
        await self.translated_chat(
            model, legacy.to_chat(body), check_stream(body),
            lambda frames: legacy.stream_from_chat(frames, body),
            lambda answer: legacy.from_chat(answer, body))

    async def native(self, model: ModelSpec, body: dict) -> None:
        """``completions: native``: the request, raw prompt and all, to the upstream's own
        ``/completions``, and its answer or frames back."""
        if check_stream(body):
            async def open_stream() -> AsyncIterator[bytes]:
                stream = await self.svc.chat.completions_stream(model, body, self.key_hash)
                self.served_by(stream.served)
                return stream
            await self.relay(open_stream)
            return
        answered = await self.guarded(self.svc.chat.completions(model, body, self.key_hash))
        if answered is not None:
            answer, served = answered
            self.served_by(served)
            self.write_json(answer)
