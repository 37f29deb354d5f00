"""ChatService: a chat request run on a model and its fallbacks, metered and booked.

The internal request is the OpenAI chat-completions body; every dialect translates into it
and every provider answers it (a ``chat.completion`` dict, or ``chat.completion.chunk`` SSE
frames ending with ``data: [DONE]``).  Usage is booked whatever happens: a finished answer
with the upstream's counts, a stream cut short (client gone, upstream failed, shutdown)
with what was relayed until then (the upstream's counts if they came, else an estimate).

A key's client that leaves before its answer (a whole answer, or a stream before its first
frame) does not cancel the upstream call: it runs on (``services.detached``), a stream is
read to its end, and the usage the upstream reports is booked, or the whole hold if it
reports none (``costs.Charge``).  The master key's call ends with its client, as before: its
bill is the operator's own and bound by nothing, and it spares every such request a task.
A free key's request without an output limit gets the one its credits were held for
(``hold``), so the hold bounds what the upstream can bill.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from .. import sse
from ..catalog import ModelSpec
from ..errors import ApiError, UpstreamError
from ..passthrough import count_anthropic, count_responses_item, hosted_estimate
from ..providers.base import EventStream as Frames  # SSE frames, closed however they end
from ..providers.shapes import wants_usage
from ..tokens import TokenUsage
from ..usage import Tally, UsageLedger, price
from .costs import (
    CHARS_PER_TOKEN,
    LEGACY_OUTPUT_TOKENS,
    Books,
    Charge,
    Hold,
    chat_worst,
    output_limit,
    upstream_limit,
)
from .detached import Detached
from .fallback import Breakers, first_success

if TYPE_CHECKING:
    from ..live import Live


# reads one request's usage from what carries it (an answer, or one stream event), on top of
# what earlier events of the same stream gave
UsageReader = Callable[[dict, "Tally | None"], "Tally"]


def tally_of(answer: dict, so_far: Tally | None = None) -> Tally:
    """One request's usage from an OpenAI chat answer or chunk: its ``usage`` (missing counts
    are 0; cached, cache-written and reasoning tokens from its details, see ``tokens``) and
    the ``service_tier`` that served it."""
    t = Tally.of(TokenUsage.from_openai(answer.get("usage")))
    tier = answer.get("service_tier")
    if type(tier) is str:
        t.tier = tier
    return t


class ChatService:
    def __init__(self, live: Callable[[], Live], breakers: Breakers, usage: UsageLedger,
                 book: Books, detached: Detached | None = None):
        self._live = live
        self.breakers = breakers
        self.usage = usage
        self.credits = book
        self.detached = detached or Detached()

    async def hold(self, model: ModelSpec, body: dict, size: int, key_hash: str | None,
                   field: str = "max_completion_tokens",
                   default: int | None = None) -> tuple[Charge, dict]:
        """Check the request's caps and set aside the most it can cost (``size``: its bytes;
        the master key, ``key_hash`` None, is bound by neither): its charge, and the body
        to send.  A body without an output limit gets, as ``field``, the one reserved (the
        model's ``max_output_tokens``, else ``default``, else 4,096 tokens), so that the
        upstream cannot answer past the hold; the master key's body is left as it is."""
        if key_hash is None:
            return Charge(self.usage, Hold(self.credits, None, 0.0), None, model, None), body
        s = self._live().config.settings
        limit, copies, asked = output_limit(body, model, s.max_chat_choices, default)
        if not asked:
            body = {**body, field: limit}
        worst = chat_worst(model, size, upstream_limit(model, body, limit) * copies)
        amount = price(model, worst)
        amount += hosted_estimate(model, body, amount, s.max_tool_calls)
        hold = self.usage.ahead(await self.credits.take(
            key_hash, amount, s.daily_credits, s.max_concurrent_requests), model)
        return Charge(self.usage, hold, key_hash, model, worst), body

    async def complete(self, model: ModelSpec, body: dict, raw: bytes | None,
                       key_hash: str | None) -> tuple[dict, ModelSpec]:
        """A whole answer: (the ``chat.completion``, the model that served it)."""
        live = self._live()
        charge, sent = await self.hold(model, body, _size(body, raw), key_hash)
        if sent is not body:
            raw = None
        return await self._whole(model, charge, tally_of,
                                 lambda m: live.providers[m.provider.name].chat(m, sent, raw))

    async def stream(self, model: ModelSpec, body: dict, raw: bytes | None,
                     key_hash: str | None) -> ChatStream:
        """An open stream whose first frame has arrived (fallbacks are tried until one
        sends a frame; after that the stream stays with its model)."""
        live = self._live()
        size = _size(body, raw)
        wanted = wants_usage(body)
        if not wanted:        # ask for usage anyway, to meter it; the client won't see it
            body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                               "include_usage": True}}
            raw = None
        charge, sent = await self.hold(model, body, size, key_hash)
        if sent is not body:
            raw = None
        return await self._stream(
            model, charge, size, wanted, tally_of,
            lambda m: live.providers[m.provider.name].chat_stream(m, sent, raw))

    # ------------------------------------------------------------------ native dialects
    def native(self, model: ModelSpec, dialect: str) -> bool:
        """Whether the model, and each of its fallbacks, is served by a provider that takes
        ``dialect`` (e.g. ``messages``) as it is: then the request is passed through."""
        live = self._live()
        return all(live.providers[c.provider.name].takes(dialect)
                   for c in live.config.catalog.chain(model))

    async def messages(self, model: ModelSpec, body: dict, key_hash: str | None,
                       beta: str | None) -> tuple[dict, ModelSpec]:
        """An Anthropic Messages request passed through (see ``native``): the ``Message``."""
        live = self._live()
        charge, sent = await self.hold(model, body, _size(body, None), key_hash, "max_tokens")
        return await self._whole(
            model, charge, anthropic_tally,
            lambda m: live.providers[m.provider.name].messages(m, sent, beta))  # type: ignore[attr-defined]

    async def messages_stream(self, model: ModelSpec, body: dict, key_hash: str | None,
                              beta: str | None) -> ChatStream:
        """A streamed Messages request passed through: Anthropic's own events."""
        live = self._live()
        size = _size(body, None)
        charge, sent = await self.hold(model, body, size, key_hash, "max_tokens")
        return await self._stream(
            model, charge, size, True, anthropic_tally,
            lambda m: live.providers[m.provider.name].messages_stream(m, sent, beta),  # type: ignore[attr-defined]
            SERVER_TOOL_CALL if model.credits.tools else None)

    async def responses(self, model: ModelSpec, body: dict,
                        key_hash: str | None) -> tuple[dict, ModelSpec]:
        """An OpenAI Responses request passed through (see ``native``): the ``Response``."""
        live = self._live()
        charge, sent = await self.hold(model, body, _size(body, None), key_hash,
                                       "max_output_tokens")
        return await self._whole(
            model, charge, responses_tally,
            lambda m: live.providers[m.provider.name].responses(m, sent))  # type: ignore[attr-defined]

    async def responses_stream(self, model: ModelSpec, body: dict,
                               key_hash: str | None) -> ChatStream:
        """A streamed Responses request passed through: the upstream's own events, metered
        from the terminal event's ``response.usage``."""
        live = self._live()
        size = _size(body, None)
        charge, sent = await self.hold(model, body, size, key_hash, "max_output_tokens")
        return await self._stream(
            model, charge, size, True, responses_tally,
            lambda m: live.providers[m.provider.name].responses_stream(m, sent))  # type: ignore[attr-defined]

    async def completions(self, model: ModelSpec, body: dict,
                          key_hash: str | None) -> tuple[dict, ModelSpec]:
        """A legacy completions request on the upstream's own ``/completions`` (a model with
        ``completions: native``; its fallbacks are too): the ``text_completion``.  Without
        ``max_tokens``, a free key's gets the legacy API's own default, 16."""
        live = self._live()
        charge, sent = await self.hold(model, body, _size(body, None), key_hash, "max_tokens",
                                       LEGACY_OUTPUT_TOKENS)
        return await self._whole(
            model, charge, tally_of,
            lambda m: live.providers[m.provider.name].completions(m, sent))  # type: ignore[attr-defined]

    async def completions_stream(self, model: ModelSpec, body: dict,
                                 key_hash: str | None) -> ChatStream:
        """The same, streamed: the upstream's ``text_completion`` frames, metered."""
        live = self._live()
        wanted = wants_usage(body)
        if not wanted:
            body = {**body, "stream_options": {**(body.get("stream_options") or {}),
                                               "include_usage": True}}
        size = _size(body, None)
        charge, sent = await self.hold(model, body, size, key_hash, "max_tokens",
                                       LEGACY_OUTPUT_TOKENS)
        return await self._stream(
            model, charge, size, wanted, tally_of,
            lambda m: live.providers[m.provider.name].completions_stream(m, sent))  # type: ignore[attr-defined]

    async def count_tokens(self, model: ModelSpec, body: dict, beta: str | None) -> int | None:
        """The upstream's own count of a Messages request's input tokens, where the model's
        provider has a counter (None: it has none, estimate instead)."""
        provider = self._live().providers[model.provider.name]
        if not provider.takes("messages"):
            return None
        return await provider.count_tokens(model, body, beta)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the two shapes of call
    async def _whole(self, model: ModelSpec, charge: Charge, read_usage: UsageReader,
                     call: Callable[[ModelSpec], Awaitable[dict]]) -> tuple[dict, ModelSpec]:
        catalog, key_hash = self._live().config.catalog, charge.key_hash

        async def answer() -> tuple[dict, ModelSpec]:
            try:
                answer, served = await first_success(catalog, self.breakers, model, call,
                                                     key_hash)
            except BaseException as exc:
                charge.failed(exc)
                raise
            charge.book(served, read_usage(answer, None))
            return answer, served
        if key_hash is None:
            return await answer()
        return await self.detached.run(answer(), charge.leave)

    async def _stream(self, model: ModelSpec, charge: Charge, size: int, wanted: bool,
                      read_usage: UsageReader,
                      open_events: Callable[[ModelSpec], Frames],
                      marker: bytes | None = None) -> ChatStream:
        catalog, key_hash = self._live().config.catalog, charge.key_hash

        async def start(m: ModelSpec) -> tuple[bytes, Frames]:
            events = open_events(m)
            try:
                first = await anext(events, None)
                if first is None:
                    raise UpstreamError(f"The upstream provider `{m.provider.name}` sent an "
                                        f"empty stream.")
            except BaseException:
                await events.aclose()
                raise
            return first, events

        async def opened() -> ChatStream:
            try:
                (first, events), served = await first_success(
                    catalog, self.breakers, model, start, key_hash, book_success=False)
            except BaseException as exc:
                charge.failed(exc)
                raise
            return ChatStream(self, served, first, events, wanted, key_hash,
                              size // CHARS_PER_TOKEN, charge, read_usage, marker)

        def left(task: asyncio.Task[ChatStream]) -> None:
            """The client left before the first frame: the stream is read to its end."""
            charge.leave()
            task.add_done_callback(self._drain)
        if key_hash is None:
            return await opened()
        return await self.detached.run(opened(), left)

    def _drain(self, task: asyncio.Task[ChatStream]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.detached.start(task.result().drain())


# in the Anthropic events that start a server (or MCP) tool call: read only when the model
# prices tool calls
SERVER_TOOL_CALL = b'_tool_use"'


def _size(body: dict, raw: bytes | None) -> int:
    return len(raw) if raw is not None else len(orjson.dumps(body))


def responses_tally(obj: dict, so_far: Tally | None) -> Tally:
    """Usage from a ``Response`` (a whole answer, or a stream's terminal event's
    ``response``): its ``usage``, the ``service_tier`` that served it and the hosted tool
    calls among its ``output``."""
    response = obj.get("response") if "response" in obj else obj
    if not isinstance(response, dict):
        return so_far or Tally(requests=1)
    t = Tally.of(TokenUsage.from_responses(response.get("usage")))
    hosted: dict[str, int] = {}
    for item in response.get("output") or ():
        count_responses_item(item, hosted)
    _calls(t, hosted)
    tier = response.get("service_tier")
    if type(tier) is str:
        t.tier = tier
    return t


def anthropic_tally(obj: dict, so_far: Tally | None) -> Tally:
    """Usage from an Anthropic ``Message``, or one stream event (``message_start`` brings the
    input, ``message_delta`` the output, both possibly again later: the latest of each counts):
    cached and cache-written input tokens count as input, and are told apart (``tokens``; the
    1-hour writes from ``cache_creation``); the tier (``service_tier``, ``speed``) and the
    server tool calls (``passthrough.count_anthropic``) as reported."""
    t = so_far or Tally(requests=1)
    u = obj.get("usage")
    if not isinstance(u, dict):
        message = obj.get("message")
        u = message.get("usage") if isinstance(message, dict) else None
    u = u if isinstance(u, dict) else {}
    used = TokenUsage.from_anthropic(u)
    if "input_tokens" in u:
        t.prompt_tokens, t.cached_tokens = used.prompt, used.cache_read
        t.cache_write_tokens = used.cache_write
        created = u.get("cache_creation")
        hour = created.get("ephemeral_1h_input_tokens") if isinstance(created, dict) else 0
        t.cache_write_1h_tokens = min(max(hour, 0), used.cache_write) \
            if type(hour) is int else 0
    if "output_tokens" in u:
        t.completion_tokens, t.reasoning_tokens = used.output, used.reasoning
    tier = "fast" if u.get("speed") == "fast" else u.get("service_tier")
    if type(tier) is str:
        t.tier = tier
    if "server_tool_use" in u or "content" in obj or "content_block" in obj:
        hosted = t.hosted or {}
        count_anthropic(obj, hosted)
        _calls(t, hosted)
    return t


def _calls(t: Tally, hosted: dict[str, int]) -> None:
    """``hosted`` as the tally's tool calls (per family, and in all)."""
    if hosted:
        t.hosted, t.tool_calls = hosted, sum(hosted.values())


class ChatStream:
    """The frames of one open chat stream, metered: the usage frame is read (and dropped
    if the client did not ask for it), an upstream failure is booked on the model's
    breaker, and ``aclose`` (always called, however the stream ends) books the usage."""
    __slots__ = (
        "_charge",
        "_events",
        "_first",
        "_key_hash",
        "_marker",
        "_prompt",
        "_read_usage",
        "_relayed",
        "_svc",
        "_tally",
        "_wanted",
        "served",
    )

    def __init__(self, svc: ChatService, served: ModelSpec, first: bytes,
                 events: Frames, wanted: bool, key_hash: str | None,
                 prompt_estimate: int, charge: Charge, read_usage: UsageReader = tally_of,
                 marker: bytes | None = None):
        self._svc, self.served = svc, served
        self._first: bytes | None = first
        self._events = events
        self._wanted, self._key_hash, self._prompt = wanted, key_hash, prompt_estimate
        self._relayed = 0                       # content frames handed on (~1 token each)
        self._tally: Tally | None = None        # the upstream's own counts, once they come
        self._charge = charge                   # settled once the usage is booked
        self._read_usage = read_usage
        self._marker = marker               # frames holding it are read too (tool calls)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._first is not None:
                frame, self._first = self._first, None
            else:
                try:
                    frame = await self._events.__anext__()
                except StopAsyncIteration:     # the whole answer came: the provider works
                    self._svc.breakers.book(self.served, None, self._key_hash)
                    raise
                except ApiError as err:
                    self._svc.breakers.book(self.served, err, self._key_hash)
                    raise
            if b'"usage":{' in frame or b'"usage": {' in frame or (
                    self._marker is not None and self._marker in frame):
                chunk = orjson.loads(sse.parse(frame)[1] or b"{}")
                self._tally = self._read_usage(chunk, self._tally)
                if not self._wanted and not chunk.get("choices"):
                    continue
            self._relayed += 1
            return frame

    async def aclose(self) -> None:
        """Book the usage (once) and close the upstream stream: the upstream's counts, else
        (a stream cut short) an estimate of what was relayed; the whole hold instead when
        the client left before the first frame (``drain``) and no counts came."""
        charge = self._charge
        if self._tally is not None:
            charge.book(self.served, self._tally)
        elif charge.left:
            charge.unpaid()
        else:
            charge.book(self.served, Tally(requests=1, prompt_tokens=self._prompt,
                                           completion_tokens=self._relayed))
        await self._events.aclose()

    async def drain(self) -> None:
        """Read the stream to its end for nobody (its client left before the first frame;
        the upstream bills the whole answer), then book it and close it."""
        try:
            async for _ in self:
                pass
        except ApiError:              # booked on the breaker; no counts: the whole hold
            pass
        finally:
            await self.aclose()

    async def through(self, translate: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
                      ) -> AsyncIterator[bytes]:
        """This stream's frames run through ``translate`` (another dialect's framing); closing
        the result closes (and books) this stream too."""
        try:
            async for frame in translate(self):
                yield frame
        finally:
            await self.aclose()
