"""EmbeddingService: an embeddings request run on a model and its fallbacks, capped,
paid for and booked.

The request is checked first (``embedding.embedding_request``: 400 naming the field; at most
2,048 inputs), then a free key's caps (the inputs' total size, ``limits.max_embedding_input_mb``,
and the answer's, inputs x dimensions, ``limits.max_embedding_floats``) and its daily
credits: the estimated prompt tokens are held before anything is sent
(``costs.CreditBook``) and the real count (the upstream's, or the estimate where it gives
none) is booked when the answer is there.  A key's client that leaves first does not cancel
the upstream calls: they run on and are booked the same (``services.detached``; the whole
hold if they then fail).  The master key (``key_hash`` None) is bound by neither the size cap
nor the credits, and its calls end with its client.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..catalog import ModelSpec
from ..embedding import EmbeddingRequest, embedding_request
from ..usage import Tally, UsageLedger, price
from .costs import Books, Charge, check_embedding_floats, check_embedding_size
from .detached import Detached
from .fallback import Breakers, first_success

if TYPE_CHECKING:
    from ..live import Live


def prompt_tokens(answer: dict[str, Any], req: EmbeddingRequest) -> int:
    """The prompt tokens an answer says it used (the estimate if it says nothing)."""
    counted = answer.get("usage")
    tokens = counted.get("prompt_tokens") if isinstance(counted, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return tokens
    return req.estimate()


class EmbeddingService:
    def __init__(self, live: Callable[[], Live], breakers: Breakers, usage: UsageLedger,
                 book: Books, detached: Detached | None = None):
        self._live = live
        self.breakers = breakers
        self.usage = usage
        self.credits = book
        self.detached = detached or Detached()

    def request(self, body: dict[str, Any], raw: bytes | None,
                key_hash: str | None) -> EmbeddingRequest:
        """The request in ``body``, checked against the API's rules and a free key's cap."""
        req = embedding_request(body, raw)
        if key_hash is not None:
            settings = self._live().config.settings
            check_embedding_size(req.size, settings.max_embedding_input_bytes)
            check_embedding_floats(req, settings.max_embedding_floats)
        return req

    async def create(self, model: ModelSpec, body: dict[str, Any], raw: bytes | None,
                     key_hash: str | None) -> tuple[dict[str, Any], ModelSpec]:
        """(the OpenAI ``list`` answer, the model that served it)."""
        live = self._live()
        s = live.config.settings
        req = self.request(body, raw, key_hash)
        worst = Tally(requests=1, prompt_tokens=req.estimate())
        hold = self.usage.ahead(await self.credits.take(
            key_hash, price(model, worst), s.daily_credits, s.max_concurrent_requests), model)
        charge = Charge(self.usage, hold, key_hash, model, worst if key_hash else None)

        async def embedded() -> tuple[dict[str, Any], ModelSpec]:
            try:
                answer, served = await first_success(
                    live.config.catalog, self.breakers, model,
                    lambda m: live.providers[m.provider.name].embed(m, req), key_hash)
            except BaseException as exc:
                charge.failed(exc)
                raise
            charge.book(served, Tally(requests=1, prompt_tokens=prompt_tokens(answer, req)))
            return answer, served
        if key_hash is None:
            return await embedded()
        return await self.detached.run(embedded(), charge.leave)
