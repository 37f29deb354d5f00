"""POST /v1/chat/completions and POST /v1/completions."""
from __future__ import annotations

from .. import legacy
from ..errors import InvalidRequest
from .base import ApiHandler
from .media import MediaMixin, chat_with_media


def _check_stream(body: dict) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be true or false.", param="stream")
    return stream


class ChatHandler(MediaMixin, ApiHandler):
    limited = True

    async def post(self) -> None:
        body, raw = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` is required: a non-empty list of "
                                 "{\"role\": ..., \"content\": ...} objects.", param="messages",
                                 code="missing_messages" if messages is None else "invalid_messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(f"messages[{i}] must be an object with a `role`.",
                                     param=f"messages[{i}]", code="invalid_messages")
        if model.type != "chat":
            await chat_with_media(self, model, body, _check_stream(body))
            return
        provider = self.svc.provider(model)
        if _check_stream(body):
            await self.relay(provider.chat_stream(model, body, raw))
        else:
            answer = await self.guarded(provider.chat(model, body, raw))
            if answer is not None:
                self.write_json(answer)


class CompletionsHandler(ApiHandler):
    limited = True

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_typed(body.get("model"), ("chat",), "/v1/completions")
        chat = legacy.to_chat(body)
        provider = self.svc.provider(model)
        if _check_stream(body):
            await self.relay(legacy.stream_from_chat(provider.chat_stream(model, chat, None), body))
        else:
            answer = await self.guarded(provider.chat(model, chat, None))
            if answer is not None:
                self.write_json(legacy.from_chat(answer, body))
