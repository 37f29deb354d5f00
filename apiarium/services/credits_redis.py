"""Credit reservations in Redis (``rate_limit.backend: redis://…``): the daily-credit check
and the holds of requests in flight, atomic across every gateway process.

Per key, two Redis keys (beside its buckets, ``limits_redis``):

* ``apiarium:{<key hash>}:spent:<UTC day>``: the credits the key spent that day, in every
  process.  Each process adds what its ledger books (``UsageLedger.booked``) and drops the
  holds of requests that ended in its next script for the key: the next reservation (no
  round trip of its own), the flush every 2 s, or at once when the key is near its limit.
  A counter that does not exist yet starts from this process's count (the database's rows
  of the day, read at start, plus what it booked).
* ``apiarium:{<key hash>}:held``: a hash of the holds in flight, ``id -> amount:expiry``.  A
  hold whose process died expires after ``HOLD_TTL_S``.

``RESERVE`` adds a hold only if spent + held + amount stays within the daily limit, and the
key has fewer than ``limits.max_concurrent_requests`` holds in flight (counted in the same
script): eight requests at once from one key with three credits left get exactly three
holds, whichever gateways they reach.  While Redis is down, ``rate_limit.on_backend_down``
decides as for the buckets: 503, or this process's own book at limit /
``rate_limit.instances``.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import LimiterUnavailable
from ..metrics import Metrics
from ..usage import UsageLedger
from .costs import CreditBook, Hold, refused, too_many
from .limits_redis import SPENT_TTL_S, BackendDown, RedisBackend, bucket_key, spent_key

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("apiarium")

HOLD_TTL_S = 3600         # a hold left by a process that died frees itself after this

# Both scripts first settle what this process has to tell about the key (KEYS: spent
# today, the holds): ARGV 1-3 the credits booked since it last told, its own count of the
# day (a counter that does not exist yet starts there: it includes them), the counter's TTL;
# the ARGV after the script's own are holds that ended (dropped).
SETTLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
elseif tonumber(ARGV[1]) ~= 0 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
end
for i = FIRST_DROP, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
"""
SETTLE = SETTLED.replace("FIRST_DROP", "4") + "return 1"

# ARGV 4-8: the amount, the daily limit (0: none), the new hold's id, its TTL (s), the most
# holds the key may have at once (0: no cap).
# -> {1 held | 0 refused (credits) | 2 refused (holds in flight), spent, held, holds in
# flight (with this one when held)}
RESERVE = SETTLED.replace("FIRST_DROP", "9") + """
local now = tonumber(redis.call('TIME')[1])
local amount, limit, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8])
local spent = tonumber(redis.call('GET', KEYS[1]))
local held, count = 0, 0
local holds = redis.call('HGETALL', KEYS[2])
for i = 1, #holds, 2 do
  local v = holds[i + 1]
  local sep = string.find(v, ':', 1, true)
  if tonumber(string.sub(v, sep + 1)) <= now then
    redis.call('HDEL', KEYS[2], holds[i])
  else
    held = held + tonumber(string.sub(v, 1, sep - 1))
    count = count + 1
  end
end
if limit > 0 and spent + held + amount > limit + 1e-9 then
  return {0, tostring(spent), tostring(held), count}
end
if cap > 0 and count >= cap then
  return {2, tostring(spent), tostring(held), count}
end
redis.call('HSET', KEYS[2], ARGV[6], ARGV[4] .. ':' .. (now + tonumber(ARGV[7])))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
return {1, tostring(spent), tostring(held + amount), count + 1}
"""


class RedisCredits:
    """``Books`` over a shared Redis (see the module's docstring)."""

    def __init__(self, backend: RedisBackend, usage: UsageLedger, metrics: Metrics,
                 settings: Callable[[], Settings]) -> None:
        self.backend, self.usage, self.metrics, self._settings = backend, usage, metrics, settings
        self._reserve, self._settle = backend.script(RESERVE), backend.script(SETTLE)
        self._get = backend.script("return redis.call('GET', KEYS[1])")
        self._ids = (f"{secrets.token_hex(6)}-{n}" for n in itertools.count(1))
        self._unsettled: dict[str, float] = {}      # key -> booked here, not yet told
        self._ended: dict[str, list[str]] = {}      # key -> its holds that ended, not yet
        self._near: set[str] = set()                # dropped; keys near their limit
        self._tasks: set[asyncio.Task] = set()
        self.local = CreditBook(usage)              # while Redis is down, in "local" mode
        usage.booked = self.booked

    def booked(self, key_hash: str, amount: float) -> None:
        self._unsettled[key_hash] = self._unsettled.get(key_hash, 0.0) + amount

    def _pending(self, key_hash: str) -> tuple[float, list[str]]:
        return self._unsettled.pop(key_hash, 0.0), self._ended.pop(key_hash, [])

    def _keep(self, key_hash: str, delta: float, ended: list[str]) -> None:
        """Put back what a call that failed was to tell (the next one tells it)."""
        if delta:
            self._unsettled[key_hash] = self._unsettled.get(key_hash, 0.0) + delta
        if ended:
            self._ended.setdefault(key_hash, []).extend(ended)

    async def take(self, key_hash: str | None, amount: float, limit: float,
                   at_once: int = 0) -> Hold:
        if key_hash is None or (limit <= 0 and at_once <= 0):
            return Hold(self, None, 0.0)
        ident = next(self._ids)
        keys = (spent_key(key_hash, self.usage.day()), bucket_key(key_hash, "held"))
        delta, ended = self._pending(key_hash)
        seed = repr(self.usage.spent_today(key_hash).credits)
        try:
            ok, spent, held, count = await self.backend.run(self._reserve, keys, (
                repr(delta), seed, SPENT_TTL_S, repr(amount), repr(max(limit, 0.0)), ident,
                HOLD_TTL_S, max(at_once, 0), *ended))
        except BackendDown:
            self._keep(key_hash, delta, ended)
            return self._fallback(key_hash, amount, limit, at_once)
        left = limit - float(spent) - float(held)
        if ok == 0:
            raise refused(amount, left, limit)
        if ok == 2:
            self._near.add(key_hash)
            raise too_many(int(count), at_once)
        # near a limit: each hold is dropped as it ends (no stale hold refuses a request)
        if (limit > 0 and left < limit / 4) or (at_once > 0 and int(count) + 1 >= at_once):
            self._near.add(key_hash)
        else:
            self._near.discard(key_hash)
        return Hold(self, key_hash, amount, ident)

    async def spent(self, key_hash: str) -> float:
        """The key's credits spent today in every process (this process's count while Redis
        is down, or before the key's counter exists)."""
        local = self.usage.spent_today(key_hash).credits
        try:
            shared = await self.backend.run(self._get, (spent_key(key_hash, self.usage.day()),), ())
        except BackendDown:
            return local
        return max(local, float(shared)) if shared is not None else local

    def _fallback(self, key_hash: str, amount: float, limit: float, at_once: int) -> Hold:
        s = self._settings()        # counted in the metrics once, by the request's admit
        if s.limiter_on_down != "local":
            raise LimiterUnavailable(self.backend.retry_in())
        local = self.local.reserve(key_hash, amount, limit / s.limiter_instances,
                                   math.ceil(at_once / s.limiter_instances))
        return Hold(self, key_hash, local.amount, f"local:{id(local)}") \
            if local.key_hash is not None else local

    def release(self, key_hash: str, amount: float, ident: str = "") -> None:
        """The request ended (its usage is booked).  Its hold is dropped, and what was
        booked added to the shared counter, by this process's next script for the key (its
        next reservation, or the flush every 2 s), or at once, off the request's path, when
        the key is near its limit (where a hold left a moment too long could refuse a
        request that fits)."""
        if ident.startswith("local:"):
            self.local.release(key_hash, amount)
        elif ident:
            self._ended.setdefault(key_hash, []).append(ident)
        if key_hash in self._near:
            task = asyncio.ensure_future(self._send(key_hash))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, key_hash: str) -> None:
        delta, ended = self._pending(key_hash)
        if not delta and not ended:
            return
        keys = (spent_key(key_hash, self.usage.day()), bucket_key(key_hash, "held"))
        try:
            await self.backend.run(self._settle, keys, (
                repr(delta), repr(self.usage.spent_today(key_hash).credits), SPENT_TTL_S,
                *ended))
        except BackendDown:                    # the next flush tries again
            self._keep(key_hash, delta, ended)

    async def flush(self) -> None:
        """Tell Redis what is pending: bookings (also of keys without a daily limit, which
        hold nothing) and ended holds; called every 2 s and at shutdown."""
        for key_hash in set(self._unsettled) | set(self._ended):
            await self._send(key_hash)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
