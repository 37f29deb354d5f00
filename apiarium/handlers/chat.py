"""POST /v1/chat/completions and POST /v1/completions."""
from __future__ import annotations

from typing import AsyncIterator, Awaitable

import orjson

from .. import legacy, sse
from ..catalog import ModelSpec
from ..errors import InvalidRequest
from ..providers.shapes import wants_usage
from ..usage import Tally
from .base import ApiHandler
from .media import MediaMixin, chat_with_media


def _check_stream(body: dict) -> bool:
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


def _tally(usage: dict | None) -> Tally:
    usage = usage if isinstance(usage, dict) else {}
    return Tally(requests=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0))


class _ChatFlow(MediaMixin, ApiHandler):
    """Runs a chat request on a model (or its fallbacks), metering its usage."""
    limited = True

    async def run_chat(self, model: ModelSpec, body: dict, raw: bytes | None, stream: bool,
                       adapt_stream=None, adapt_answer=None) -> None:
        if stream:
            wanted = wants_usage(body)
            if not wanted:   # ask for usage anyway, to meter it; the client won't see it
                body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                                   "include_usage": True}}
                raw = None

            def open_stream(as_asked: ModelSpec) -> AsyncIterator[bytes]:
                events = self.svc.provider(as_asked).chat_stream(as_asked, body, raw)
                events = self.metered(as_asked, events, wanted)
                return adapt_stream(events) if adapt_stream else events
            with self.guarding() as guard:
                first, events, on_error = await self.open_with_fallbacks(model, open_stream)
            body = raw = None        # no fallback after the first frame: not held any longer
            if guard.done:
                await self.relay(events, first, on_error)
            return
        # the fallback loop and the disconnect guard inline: no await layers on this path
        with self.guarding() as guard:
            for attempt in self.attempts(model):
                with attempt:
                    m = attempt.as_asked
                    answer = await self.svc.provider(m).chat(m, body, raw)
                if attempt.ok:
                    break
        if guard.done:
            self.account(attempt.model, _tally(answer.get("usage")))
            self.write_json(adapt_answer(answer) if adapt_answer else answer)

    async def metered(self, model: ModelSpec, events: AsyncIterator[bytes],
                      client_wants_usage: bool) -> AsyncIterator[bytes]:
        """Pass frames through; read the usage frame (and drop it if nobody asked for it)."""
        tally = None
        async for frame in events:
            if b'"usage":{' in frame or b'"usage": {' in frame:
                chunk = orjson.loads(sse.parse(frame)[1] or b"{}")
                tally = _tally(chunk.get("usage"))
                if not client_wants_usage and not chunk.get("choices"):
                    continue
            yield frame
        self.account(model, tally or _tally(None))


class ChatHandler(_ChatFlow):
    endpoint = "chat"

    def post(self) -> Awaitable[None]:
        # not a coroutine: it checks the request and hands back the work's coroutine, so no
        # frame of its own holds the request body while an answer streams
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
            return chat_with_media(self, model, body, _check_stream(body))
        return self.run_chat(model, body, raw, _check_stream(body))


class CompletionsHandler(_ChatFlow):
    endpoint = "completions"

    async def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_typed(body.get("model"), ("chat",), "/v1/completions")
        await self.run_chat(model, legacy.to_chat(body), None, _check_stream(body),
                            adapt_stream=lambda events: legacy.stream_from_chat(events, body),
                            adapt_answer=lambda answer: legacy.from_chat(answer, body))
