"""What one free key can make the operator pay, bounded before anything is sent upstream.

* **Caps on a request's size**: ``n`` (images: ``limits.max_images``, chat:
  ``limits.max_chat_choices``), the output tokens asked for (``max_tokens`` /
  ``max_completion_tokens`` / ``max_output_tokens``, at most the model's
  ``max_output_tokens``), an embedding request's total input
  (``limits.max_embedding_input_mb``) and its answer's size, inputs x dimensions
  (``limits.max_embedding_floats``).  Over a cap: 400 naming the field.
* **The daily credit allowance** (``rate_limit.daily_credits``), reserved before the upstream
  call at the most the request can cost, and settled after (the ledger books the real cost,
  the reservation is released): requests in flight at once cannot overshoot it together.
  The most includes a premium tier's multiplier and ``limits.max_tool_calls`` calls of the
  hosted tools a request declares (``passthrough.hosted_estimate``).
  The reservation is a true bound: the output tokens it counts are sent upstream as the
  request's own limit when the client set none (``ChatService.hold``), and at most
  ``limits.max_concurrent_requests`` holds per key are in flight at once (429 beyond).
* **The settlement** (``Charge``): the usage the upstream reports is booked; a call whose
  client left and that then failed, or that shutdown cut short, books its whole hold (the
  upstream may have billed it, and nothing says how much).

The master key bypasses all of these (its ``key_hash`` is None).
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from ..catalog import ModelSpec
from ..embedding import DEFAULT_DIMENSIONS, EmbeddingRequest
from ..errors import InvalidRequest, QuotaExceeded, RateLimited
from ..passthrough import CACHE_TTL
from ..providers.reasoning import anthropic_thinking
from ..usage import Tally, UsageLedger, price
from ..usagejournal import Ahead

CHARS_PER_TOKEN = 4
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
DEFAULT_OUTPUT_TOKENS = 4096      # what a chat may cost when neither the client nor the
                                  # catalog bounds its answer
LEGACY_OUTPUT_TOKENS = 16         # legacy /completions' own default ``max_tokens``


def _int_field(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{name}` must be a positive whole number.", param=name)
    return value


def output_limit(body: dict, model: ModelSpec, max_choices: int,
                 default: int | None = None) -> tuple[int, int, bool]:
    """Check a request's ``n`` (legacy ``best_of`` too) and output-token fields against the
    caps: (the most output tokens one answer may hold, how many answers the upstream makes,
    whether the request set that limit itself).  Without a field: the model's
    ``max_output_tokens``, else ``default`` (else ``DEFAULT_OUTPUT_TOKENS``); a ``default``
    below the model's cap wins over it."""
    copies = 1
    for name in ("n", "best_of"):
        value = _int_field(body, name)
        if value is not None and value > max_choices:
            raise InvalidRequest(f"`{name}` is {value}; this gateway answers at most "
                                 f"{max_choices} choice(s) per request.", param=name)
        copies = max(copies, value or 1)
    cap = model.max_output_tokens
    asked = None
    for name in OUTPUT_FIELDS:
        value = _int_field(body, name)
        if value is None:
            continue
        if cap and value > cap:
            raise InvalidRequest(f"`{name}` is {value}; `{model.alias}` answers with at most "
                                 f"{cap} tokens on this gateway.", param=name)
        asked = value if asked is None else max(asked, value)
    if asked is None:
        limit = min(cap, default) if cap and default else cap or default or \
            DEFAULT_OUTPUT_TOKENS
        return limit, copies, False
    return asked, copies, True


def chat_output_bound(body: dict, model: ModelSpec, max_choices: int) -> int:
    """Check a chat body's ``n`` and output-token fields against the caps; the most output
    tokens the answer may hold (for the credit reservation)."""
    per_answer, copies, _ = output_limit(body, model, max_choices)
    return per_answer * copies


def upstream_limit(model: ModelSpec, body: dict, limit: int) -> int:
    """The output limit the upstream gets for one answer of a chat ``body`` whose limit is
    ``limit``: on Anthropic, raised above a thinking budget (``providers/reasoning.py``)."""
    if model.provider.kind == "anthropic":
        return anthropic_thinking(model, body, limit)[1]
    return limit


def check_images_n(n: int, max_images: int) -> None:
    if n > max_images:
        raise InvalidRequest(f"`n` is {n}; this gateway makes at most {max_images} "
                             f"images per request.", param="n")


def check_embedding_size(size: int, limit: int) -> None:
    """An embedding request's inputs (``size`` bytes of text) against the cap."""
    if size > limit:
        mb = round(limit / 1048576, 3)
        raise InvalidRequest(f"`input` holds {size:,} bytes of text; this gateway embeds at "
                             f"most {limit:,} bytes ({mb:g} MB) per request. Split it into "
                             f"several requests.", param="input")


def check_embedding_floats(req: EmbeddingRequest, limit: int) -> None:
    """An embedding request's answer (inputs x dimensions numbers) against the cap: its
    vectors are held in memory, and as JSON floats take ~20 bytes a number."""
    if req.floats <= limit:
        return
    dims = req.dimensions or DEFAULT_DIMENSIONS
    given = "`dimensions`" if req.dimensions else "counted so when `dimensions` is not given"
    fits = limit // dims
    advice = (f"send at most {fits:,} inputs of {dims:,} dimensions per request, or ask for "
              f"fewer `dimensions`" if fits else f"ask for at most {limit:,} `dimensions`")
    raise InvalidRequest(f"`input` holds {len(req.inputs):,} inputs of {dims:,} numbers each "
                         f"({given}), {req.floats:,} in all; this gateway answers at most "
                         f"{limit:,} numbers per request (limits.max_embedding_floats): "
                         f"{advice}.", param="input" if fits else "dimensions")


def chat_worst(model: ModelSpec, request_bytes: int, output_tokens: int) -> Tally:
    """The most a chat request may use at the standard tier, without hosted tools: its
    whole body as prompt (at the dearest of the uncached and cache-writing prices, the
    1-hour cache's where the model allows it), every output token."""
    prompt = request_bytes // CHARS_PER_TOKEN
    c = model.credits
    written = prompt if c.cache_write_rate > c.input_rate else 0
    hour = prompt if (CACHE_TTL in model.allow.fields and c.cache_write_1h_rate
                      > max(c.input_rate, c.cache_write_rate)) else 0
    return Tally(requests=1, prompt_tokens=prompt, completion_tokens=output_tokens,
                 cache_write_tokens=max(written, hour), cache_write_1h_tokens=hour)


def chat_estimate(model: ModelSpec, request_bytes: int, output_tokens: int) -> float:
    """The most a chat request may cost (``chat_worst``, priced)."""
    return price(model, chat_worst(model, request_bytes, output_tokens))


class Books(Protocol):
    """Where holds are kept: ``CreditBook`` (this process) or ``credits_redis.RedisCredits``
    (a Redis every gateway process shares)."""

    async def take(self, key_hash: str | None, amount: float, limit: float,
                   at_once: int = 0) -> Hold:
        """``reserve``, for a caller that may wait on a shared store."""

    def release(self, key_hash: str, amount: float, ident: str = "") -> None: ...

    async def spent(self, key_hash: str) -> float: ...

    async def flush(self) -> None:
        """Hand on what is pending (every 2 s and at shutdown); nothing for a local book."""


class Hold:
    """Credits set aside for one request in flight; ``release()`` once it is booked.
    ``ahead``: its record in the usage journal (``UsageLedger.ahead``)."""
    __slots__ = ("_book", "ahead", "amount", "ident", "key_hash")

    def __init__(self, book: Books, key_hash: str | None, amount: float, ident: str = ""):
        self._book, self.key_hash, self.amount, self.ident = book, key_hash, amount, ident
        self.ahead: Ahead | None = None

    def release(self) -> None:
        if self.ahead is not None:        # let go without usage, unless it was booked
            self.ahead.end()
            self.ahead = None
        if self.key_hash is not None:
            self._book.release(self.key_hash, self.amount, self.ident)
        self.key_hash, self.amount = None, 0.0


class Charge:
    """One request's hold, settled once: ``book`` the usage the upstream reported, or
    ``unpaid``: the call failed or was cancelled.  An unpaid call books the whole hold
    (``worst``) if its client had left (``left``: the call ran on, ``services.detached``)
    or shutdown cut it short, since the upstream may have billed it; otherwise (the client
    got the error) nothing.  The master key's (``worst`` None) books nothing then."""
    __slots__ = ("_usage", "hold", "key_hash", "left", "model", "worst")

    def __init__(self, usage: UsageLedger, hold: Hold, key_hash: str | None,
                 model: ModelSpec, worst: Tally | None):
        self._usage, self.key_hash, self.model, self.worst = usage, key_hash, model, worst
        self.hold: Hold | None = hold             # None once settled
        self.left = False

    def book(self, served: ModelSpec, tally: Tally) -> None:
        if self.hold is not None:
            self._usage.record(self.key_hash, served, tally, hold=self.hold)
            self.hold.release()
            self.hold = None

    def unpaid(self, cut: bool = False) -> None:
        if self.hold is None:
            return
        if (cut or self.left) and self.worst is not None:
            self.book(self.model, self.worst)
        else:
            self.hold.release()
            self.hold = None

    def leave(self, task: object = None) -> None:
        """The client left: from now on a failure books the whole hold."""
        self.left = True

    def failed(self, exc: BaseException) -> None:
        """The call raised ``exc``: ``unpaid``, cut short if it was cancelled."""
        self.unpaid(cut=isinstance(exc, asyncio.CancelledError))


def too_many(in_flight: int, at_once: int) -> RateLimited:
    return RateLimited(
        f"This key has {in_flight} requests in flight, the most it may have at once on this "
        f"gateway (limits.max_concurrent_requests: {at_once}; a request whose client hung "
        f"up counts until its upstream call ends). Wait for one of them to finish, then "
        f"retry.", code="too_many_concurrent_requests", retry_after=1)


def refused(amount: float, left: float, limit: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"This request may cost up to {amount:.4g} credits and this key has "
        f"{max(0.0, left):.4g} of its {limit:g} daily credits left (UTC day; requests in "
        f"flight hold theirs until they end). Ask for a shorter answer "
        f"(max_tokens) or fewer items, or wait for midnight UTC; GET /v1/keys/me "
        f"shows today's usage.")


class CreditBook:
    """Today's spending per key (the usage ledger) plus what requests in flight may still
    spend (held here, in memory)."""

    def __init__(self, usage: UsageLedger):
        self.usage = usage
        self._held: dict[str, float] = {}
        self._open: dict[str, int] = {}          # key -> its holds in flight

    def held(self, key_hash: str) -> float:
        return self._held.get(key_hash, 0.0)

    def in_flight(self, key_hash: str) -> int:
        return self._open.get(key_hash, 0)

    def reserve(self, key_hash: str | None, amount: float, limit: float,
                at_once: int = 0) -> Hold:
        """Set ``amount`` aside for a request, or refuse it (429) if the key's daily
        ``limit`` (0: none) cannot cover it on top of what is spent and held, or if it
        has ``at_once`` (0: no cap) holds in flight already."""
        if key_hash is None or (limit <= 0 and at_once <= 0):
            return Hold(self, None, 0.0)
        held = self.held(key_hash)
        if limit > 0:
            spent = self.usage.spent_today(key_hash).credits
            if spent + held + amount > limit + 1e-9:
                raise refused(amount, limit - spent - held, limit)
        count = self._open.get(key_hash, 0)
        if 0 < at_once <= count:
            raise too_many(count, at_once)
        self._held[key_hash] = held + amount
        self._open[key_hash] = count + 1
        return Hold(self, key_hash, amount)

    async def take(self, key_hash: str | None, amount: float, limit: float,
                   at_once: int = 0) -> Hold:
        return self.reserve(key_hash, amount, limit, at_once)

    async def spent(self, key_hash: str) -> float:
        """The key's credits spent today (UTC)."""
        return self.usage.spent_today(key_hash).credits

    async def flush(self) -> None:
        """Nothing to hand on: the ledger is the book."""

    def release(self, key_hash: str, amount: float, ident: str = "") -> None:
        count = self._open.get(key_hash, 0) - 1
        left = self._held.get(key_hash, 0.0) - amount
        if count > 0:
            self._open[key_hash] = count
            self._held[key_hash] = max(0.0, left)
        else:
            self._open.pop(key_hash, None)
            self._held.pop(key_hash, None)
