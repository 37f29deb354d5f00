"""Anthropic Messages as a client dialect, the stream: chat.completion.chunk frames →
Anthropic's named SSE events.

Stream (``MessagesStream``): message_start on the first chunk (input tokens: the chunk's
usage, else the count the caller passed, else ``count_tokens_estimate`` of the request), then
one block at a time, each started and stopped: thinking (thinking_delta, then a
signature_delta before its stop), text (text_delta), tool_use (input_json_delta; each call its
own block, in the order the calls start); at the end message_delta (stop_reason,
stop_sequence, and the real usage when the upstream sent it) and message_stop.  Argument
fragments for a call whose block is already closed (an upstream interleaving parallel calls)
end the stream with an error event: Claude Code then retries without streaming.
"""
from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from .. import sse
from ..errors import ApiError, UpstreamError
from .anthropic_answer import (
    CHARS_PER_TOKEN,
    anthropic_usage,
    call_id,
    count_tokens_estimate,
    error_body,
    error_from_envelope,
    new_id,
    reasoning_text,
    stop_reason,
    thinking_signature,
)
from .anthropic_messages import GATEWAY_SIGNATURE


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _event(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


_PING = _event("ping", {"type": "ping"})


class MessagesStream:
    """Translates one chat chunk stream into Anthropic's events.  ``feed`` each chat frame
    (raw SSE bytes, one event each, or a parsed chunk dict) and send what it returns; call
    ``finish`` when the chat stream ends (a ``[DONE]`` frame does it too), ``ping`` for a
    keep-alive, ``fail`` for an error that ends the stream.  After the end every call
    returns nothing.

    ``request``: the Anthropic request, for the input-token estimate in ``message_start``
    (``input_tokens`` instead, if the caller has counted); also used to word a context
    overflow."""

    def __init__(self, model: str, *, request: dict | None = None,
                 input_tokens: int | None = None, message_id: str | None = None) -> None:
        self.model = model
        self.id = message_id or new_id()
        self.request = request
        self.input_tokens = input_tokens
        self.started = self.done = False
        self._index = 0               # the open block's index, or the next block's
        self._open: str | None = None   # "thinking" | "text" | "tool_use" | None
        self._call: object = None     # key of the open tool call (see _key)
        self._ids: dict = {}          # key → id of every tool call started
        self._refused = False
        self._signature: str | None = None
        self._finish = self._matched = None
        self._usage: dict | None = None
        self._chars = 0               # characters sent, for an output estimate

    # -------------------------------------------------------------- public
    def feed(self, frame: bytes | dict) -> list[bytes]:
        """The Anthropic events for one chat frame."""
        if self.done:
            return []
        if isinstance(frame, dict):
            chunk = frame
        else:
            if bytes(frame[:1]) == b":":
                return [self.ping()]             # a comment: the upstream's keep-alive
            data = sse.parse(bytes(frame))[1]
            if data is None:
                return []
            if data.strip() == b"[DONE]":
                return self.finish()
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return [self.fail(UpstreamError("The upstream sent a stream frame that is not "
                                                "JSON."))]
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):
            return [self.fail(error_from_envelope(chunk))]
        out = [] if self.started else [self._start(chunk.get("usage"))]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        try:
            choices = chunk.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._on_choice(choice, out)
        except ApiError as err:
            out.append(self.fail(err))
        return out

    def finish(self) -> list[bytes]:
        """Close the open block; message_delta and message_stop."""
        if self.done:
            return []
        out = [] if self.started else [self._start(None)]
        self._close(out)
        reason, sequence = stop_reason("content_filter" if self._refused else self._finish,
                                       self._matched, bool(self._ids))
        if self._usage is not None:
            usage = anthropic_usage(self._usage)
        else:
            usage = {"output_tokens": math.ceil(self._chars / CHARS_PER_TOKEN)}
        out.append(_event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": reason, "stop_sequence": sequence}, "usage": usage}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        self.done = True
        return out

    def ping(self) -> bytes:
        """A keep-alive ``ping`` event."""
        return b"" if self.done else _PING

    def fail(self, err: ApiError) -> bytes:
        """The ``error`` event that ends the stream (Anthropic's envelope)."""
        if self.done:
            return b""
        self.done = True
        return _event("error", error_body(err, request=self.request)[1])

    # -------------------------------------------------------------- blocks
    def _start(self, usage: object) -> bytes:
        self.started = True
        if isinstance(usage, dict) and usage.get("prompt_tokens"):
            counted = anthropic_usage(usage)
        else:
            n = self.input_tokens
            if n is None and isinstance(self.request, dict) \
                    and isinstance(self.request.get("messages"), list):
                n = count_tokens_estimate(self.request)
            counted = {"input_tokens": n or 0, "output_tokens": 0,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        return _event("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": counted}})

    def _on_choice(self, choice: dict, out: list[bytes]) -> None:
        delta = _dict(choice.get("delta"))
        thought = reasoning_text(delta)
        if thought:
            self._delta("thinking", {"type": "thinking_delta", "thinking": thought}, out)
            self._chars += len(thought)
        self._signature = thinking_signature(delta) or self._signature
        for field in ("content", "refusal"):
            text = delta.get(field)
            if isinstance(text, str) and text:
                self._delta("text", {"type": "text_delta", "text": text}, out)
                self._chars += len(text)
                self._refused = self._refused or field == "refusal"
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                self._on_call(call, out)
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        if isinstance(choice.get("stop_reason"), str):
            self._matched = choice["stop_reason"]

    def _key(self, call: dict) -> object:
        """Which tool call a fragment belongs to: its ``index``, unless the upstream left the
        index out or reused it for a call with another id (then the id tells)."""
        k, cid = call.get("index"), call.get("id")
        cid = cid if isinstance(cid, str) else None
        if isinstance(k, int) and not (cid and self._ids.get(k, cid) != cid):
            return k
        if cid:
            return next((key for key, known in self._ids.items() if known == cid), ("id", cid))
        return self._call if self._call is not None else len(self._ids)

    def _on_call(self, call: dict, out: list[bytes]) -> None:
        k = self._key(call)
        fn = _dict(call.get("function"))
        args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        if k not in self._ids:
            self._close(out)
            self._ids[k] = call_id(call)
            self._call, self._open = k, "tool_use"
            out.append(_event("content_block_start", {
                "type": "content_block_start", "index": self._index, "content_block": {
                    "type": "tool_use", "id": self._ids[k],
                    "name": str(fn.get("name") or ""), "input": {}}}))
        elif k != self._call or self._open != "tool_use":
            if args:
                raise UpstreamError("The upstream interleaved the arguments of parallel tool "
                                    "calls, which this stream cannot relay; retry without "
                                    "streaming.")
            return
        if args:
            out.append(_event("content_block_delta", {
                "type": "content_block_delta", "index": self._index,
                "delta": {"type": "input_json_delta", "partial_json": args}}))
            self._chars += len(args)

    def _delta(self, kind: str, delta: dict, out: list[bytes]) -> None:
        if self._open != kind:
            self._close(out)
            self._open = kind
            block = {"type": "text", "text": ""} if kind == "text" else \
                {"type": "thinking", "thinking": "", "signature": ""}
            out.append(_event("content_block_start", {
                "type": "content_block_start", "index": self._index, "content_block": block}))
        out.append(_event("content_block_delta", {
            "type": "content_block_delta", "index": self._index, "delta": delta}))

    def _close(self, out: list[bytes]) -> None:
        if self._open is None:
            return
        if self._open == "thinking":
            out.append(_event("content_block_delta", {
                "type": "content_block_delta", "index": self._index, "delta": {
                    "type": "signature_delta",
                    "signature": self._signature or GATEWAY_SIGNATURE}}))
            self._signature = None
        out.append(_event("content_block_stop", {"type": "content_block_stop",
                                                 "index": self._index}))
        self._index += 1
        self._open = self._call = None


async def stream_from_chat(events: AsyncIterator[bytes], stream: MessagesStream,
                           on_error: Callable[[ApiError], None] | None = None
                           ) -> AsyncIterator[bytes]:
    """Chat SSE frames → Anthropic events, one write per chat frame.  An ApiError raised by
    ``events`` before anything was yielded propagates (the handler answers it with
    ``error_body``, or tries a fallback); after, it becomes the final error event
    (``on_error`` hears of it first).  A stream that just stops is finished as it stands.
    ``events`` is read to its end even after the last Anthropic event, so wrappers that meter
    usage after their last frame still do."""
    sent = False
    try:
        async for frame in events:
            out = stream.feed(frame)
            if out:
                sent = True
                yield b"".join(out)
    except ApiError as err:
        if not sent:
            raise
        if on_error is not None:
            on_error(err)
        yield stream.fail(err)
        return
    tail = stream.finish()
    if tail:
        yield b"".join(tail)
