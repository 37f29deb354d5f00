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

The master key bypasses all of these (its ``key_hash`` is None).
"""
from __future__ import annotations

from typing import Protocol

from ..catalog import ModelSpec
from ..embedding import DEFAULT_DIMENSIONS, EmbeddingRequest
from ..errors import InvalidRequest, QuotaExceeded
from ..passthrough import CACHE_TTL
from ..usage import Tally, UsageLedger, price
from ..usagejournal import Ahead

CHARS_PER_TOKEN = 4
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
DEFAULT_OUTPUT_TOKENS = 4096      # what a chat may cost when neither the client nor the
                                  # catalog bounds its answer


def _int_field(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{name}` must be a positive whole number.", param=name)
    return value


def chat_output_bound(body: dict, model: ModelSpec, max_choices: int) -> int:
    """Check a chat body's ``n`` and output-token fields against the caps; the most output
    tokens the answer may hold (for the credit reservation)."""
    n = _int_field(body, "n")
    if n is not None and n > max_choices:
        raise InvalidRequest(f"`n` is {n}; this gateway answers at most {max_choices} "
                             f"choice(s) per request.", param="n")
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
    return (asked or cap or DEFAULT_OUTPUT_TOKENS) * (n or 1)


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


def chat_estimate(model: ModelSpec, request_bytes: int, output_tokens: int) -> float:
    """The most a chat request may cost at the standard tier, without hosted tools: its whole
    body as prompt (at the dearest of the uncached and cache-writing prices, the 1-hour
    cache's where the model allows it), every output token."""
    prompt = request_bytes // CHARS_PER_TOKEN
    c = model.credits
    written = prompt if c.cache_write_rate > c.input_rate else 0
    hour = prompt if (CACHE_TTL in model.allow.fields and c.cache_write_1h_rate
                      > max(c.input_rate, c.cache_write_rate)) else 0
    return price(model, Tally(requests=1, prompt_tokens=prompt, completion_tokens=output_tokens,
                              cache_write_tokens=max(written, hour),
                              cache_write_1h_tokens=hour))


class Books(Protocol):
    """Where holds are kept: ``CreditBook`` (this process) or ``credits_redis.RedisCredits``
    (a Redis every gateway process shares)."""

    async def take(self, key_hash: str | None, amount: float, limit: float) -> Hold:
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
        if self.amount and self.key_hash is not None:
            self._book.release(self.key_hash, self.amount, self.ident)
        self.amount = 0.0


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

    def held(self, key_hash: str) -> float:
        return self._held.get(key_hash, 0.0)

    def reserve(self, key_hash: str | None, amount: float, limit: float) -> Hold:
        """Set ``amount`` aside for a request, or refuse it (429) if the key's daily
        ``limit`` (0: none) cannot cover it on top of what is spent and held."""
        if key_hash is None or limit <= 0:
            return Hold(self, None, 0.0)
        spent = self.usage.spent_today(key_hash).credits
        held = self.held(key_hash)
        if spent + held + amount > limit + 1e-9:
            raise refused(amount, limit - spent - held, limit)
        self._held[key_hash] = held + amount
        return Hold(self, key_hash, amount)

    async def take(self, key_hash: str | None, amount: float, limit: float) -> Hold:
        return self.reserve(key_hash, amount, limit)

    async def spent(self, key_hash: str) -> float:
        """The key's credits spent today (UTC)."""
        return self.usage.spent_today(key_hash).credits

    async def flush(self) -> None:
        """Nothing to hand on: the ledger is the book."""

    def release(self, key_hash: str, amount: float, ident: str = "") -> None:
        left = self._held.get(key_hash, 0.0) - amount
        if left > 1e-9:
            self._held[key_hash] = left
        else:
            self._held.pop(key_hash, None)
