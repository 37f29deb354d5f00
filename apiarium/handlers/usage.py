"""GET /v1/keys/me/usage: the caller's key's usage per UTC day, and the credits it has left.

``?days=N`` (1 to 90, default 7): the N days ending today (UTC), oldest first, every day
present (zeros for a day without usage).  Each day is the stored daily row plus what this
process counted and has not written yet (``UsageLedger.history``).  The master key gets its
own usage (filed under ``master``) and no credit limit (it has none).
"""
from __future__ import annotations

import datetime

from ..errors import InvalidRequest
from ..usage import Tally
from .admission import admits, lookup
from .base import ApiHandler

DEFAULT_DAYS = 7
MAX_DAYS = 90


def parse_days(raw: str) -> int:
    """``days`` as sent: a whole number from 1 to ``MAX_DAYS``, else the 400 naming it."""
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_DAYS:
        return int(raw)
    shown = raw if len(raw) <= 20 else raw[:20] + "…"
    raise InvalidRequest(f"`days` must be a whole number from 1 to {MAX_DAYS} (got "
                         f"`{shown}`); without it the last {DEFAULT_DAYS} days are shown.",
                         param="days")


def dates_until(last: str, n: int) -> list[str]:
    """The ``n`` UTC dates (``YYYY-MM-DD``) ending with ``last``, oldest first."""
    end = datetime.date.fromisoformat(last)
    return [(end - datetime.timedelta(days=back)).isoformat() for back in range(n - 1, -1, -1)]


def day_object(date: str, tally: Tally | None) -> dict[str, str | int | float]:
    t = tally or Tally()
    return {"date": date, "requests": t.requests, "prompt_tokens": t.prompt_tokens,
            "completion_tokens": t.completion_tokens, "images": t.images,
            "video_seconds": t.video_seconds, "credits": round(t.credits, 4)}


@admits(GET=lookup(f"one read of the key's usage rows (at most {MAX_DAYS} days) and of the "
                   f"credits it spent today"))
class KeyUsageHandler(ApiHandler):
    async def get(self) -> None:
        n = parse_days(self.get_query_argument("days", str(DEFAULT_DAYS)))
        ledger = self.svc.usage
        dates = dates_until(ledger.day(), n)
        found = await ledger.history(self.key_hash, dates[0], dates[-1])
        rec = self.key_record                     # None: the master key (no limit)
        limit = self.svc.settings.daily_credits if rec is not None else 0.0
        remaining = None
        if rec is not None and limit:
            spent = await self.svc.credits.spent(rec.key_hash)   # every process's, with Redis
            remaining = round(max(0.0, limit - spent), 4)
        self.set_header("Cache-Control", "no-store")
        self.write_json({"object": "list",
                         "data": [day_object(d, found.get(d)) for d in dates],
                         "credits": {"daily_limit": limit or None, "remaining": remaining}})
