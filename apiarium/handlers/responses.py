"""The OpenAI Responses dialect: POST /v1/responses and POST /v1/responses/compact, stateless.

On a model served (with each of its fallbacks) by an OpenAI provider the request is passed
through to the upstream's own ``/responses`` (``ChatService.responses*``; ``store`` false;
hosted tools and premium tiers as the model allows, ``passthrough``: an image_generation
tool also takes from the key's ``images`` bucket); on any other it is translated to the
internal chat request and run by the chat service.  The answer is a ``Response``, the
stream the Responses events with ``event:`` lines, always ending with
``response.completed``, ``.incomplete`` or ``.failed`` (also when the upstream fails
mid-stream or the gateway shuts down).  Errors before a stream starts are OpenAI's envelope
with their status, as the real API answers.  Codex's compaction (a ``compaction_trigger``
input, or ``/responses/compact``) is answered by the gateway itself: one compaction item
that later requests carry back, signed for the key that asked (``seal_for``) and
opened only for that key.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from .. import passthrough
from ..catalog import ModelSpec
from ..dialects import responses
from ..dialects.responses import ResponsesStream
from ..errors import ApiError, InvalidRequest
from .admission import CHAT_CALL, MAX_BODY, admits, lookup, request
from .base import ApiHandler


def seal_for(handler: ApiHandler) -> responses.CompactionSeal:
    """The compaction seal of the request's key: the key secret's compaction subkey, bound to
    the key's hash (the master key's requests to ``"master"``)."""
    return responses.CompactionSeal(handler.svc.keys.subkey(responses.SEAL_PURPOSE),
                                    handler.key_hash or "master")


def _stream_flag(body: dict) -> bool:
    stream = body.get("stream", False)
    if stream not in (True, False, None):
        raise InvalidRequest("`stream` must be true or false.", param="stream")
    return bool(stream)


async def translated(frames: AsyncIterator[bytes],
                     events: ResponsesStream) -> AsyncIterator[bytes]:
    """Chat frames → Responses events, the terminal event whatever happens upstream."""
    yield b"".join(events.start())
    try:
        async for frame in frames:
            out = events.feed(frame)
            if out:
                yield b"".join(out)
    except ApiError as err:
        yield b"".join(events.fail(err))
        return
    if not events.done:
        yield b"".join(events.finish())


@admits(POST=request(CHAT_CALL + "; compactions within their caps"))
class ResponsesHandler(ApiHandler):
    endpoint = "responses"
    dialect = "responses"
    _events: ResponsesStream | None = None
    _native: responses.NativeTail | None = None
    _request: dict | None = None

    def error_frame(self, err: ApiError) -> bytes:
        if self._events is not None:
            return b"".join(self._events.fail(err))
        if self._native is not None:
            return self._native.fail(err)
        return responses.failed_event(err, self._request)

    async def post(self) -> None:
        body, _ = self.json_body()
        self._request = body
        self.model_alias = str(body.get("model", ""))[:100]
        model = self.svc.catalog.resolve_for(body.get("model"), "/v1/responses")
        stream = _stream_flag(body)
        if responses.is_compaction_trigger(body):
            done = responses.compaction_response(body, seal_for(self))
            if stream:
                await self.send_events(responses.stream_response(done))
            else:
                self.write_json(done)
            return
        allow = self.svc.catalog.allowed(model)
        passthrough.check_tier(body, model, allow)
        if self.svc.chat.native(model, "responses"):
            s = self.svc.settings
            native = passthrough.native_responses(responses.native_body(body, seal_for(self)),
                                                  model, allow, s.max_tool_calls, s.max_images)
            if self.key_record is not None and passthrough.makes_images(native):
                taken = self.svc.limits.take(self.key_record, "images", s)
                if taken is not None:          # a shared limiter answers asynchronously
                    await taken
            await self.passthrough(model, native, stream)
            return
        responses.check_unowned(body)          # file ids name the same path on either way
        chat_body = responses.to_chat(body, seal=seal_for(self))
        events = ResponsesStream(body)
        if stream:
            self._events = events              # a shutdown mid-stream ends it in this dialect
        await self.translated_chat(
            model, chat_body, stream, lambda frames: translated(frames, events),
            lambda answer: responses.from_chat(answer, body))

    async def passthrough(self, model: ModelSpec, body: dict, stream: bool) -> None:
        """An OpenAI upstream gets the request on its own ``/responses`` (the gateway's rules
        still apply: key, limits, credits, usage, fallbacks, breakers)."""
        if stream:
            tail = self._native = responses.NativeTail(body)

            async def open_stream() -> AsyncIterator[bytes]:
                events = await self.svc.chat.responses_stream(model, body, self.key_hash)
                self.served_by(events.served)
                return events.through(tail.watch)
            await self.relay(open_stream)
            return
        answered = await self.guarded(self.svc.chat.responses(model, body, self.key_hash))
        if answered is not None:
            self.served_by(answered[1])
            self.write_json(answered[0])

    async def send_events(self, frames: list[bytes]) -> None:
        """A stream the gateway answers itself, all at once."""
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(b"".join(frames))
        self.finish()


@admits(POST=lookup("no model call: one compaction item of the given input, within the "
                    "compaction caps", body=MAX_BODY))
class CompactHandler(ApiHandler):
    """``POST /v1/responses/compact``: the conversation as one compaction item (no model
    is called, so no rate-limit token is taken)."""
    endpoint = "responses_compact"
    dialect = "responses"

    def post(self) -> None:
        body, _ = self.json_body()
        self.model_alias = str(body.get("model", ""))[:100]
        self.svc.catalog.resolve_for(body.get("model"), "/v1/responses")
        self.write_json(responses.compact(body, seal_for(self)))


routes = [
    (r"/v1/responses", ResponsesHandler),
    (r"/v1/responses/compact", CompactHandler),
]
