"""The limits in Redis (``rate_limit.backend: redis://…``), exact across processes and boxes.

* ``RedisBackend``: the client (``resp``: one pipelined connection, short connect and read
  timeouts, no retries), the Lua scripts (run by EVALSHA; a server that does not know one
  gets it again) and a
  circuit: a failed call marks Redis down, and while it is down no request waits on it; one
  request a second tries it again, and the first that succeeds closes the circuit.
* ``RedisLimits``: the per-key bucket, the request's endpoint bucket and the daily-credit
  check in ONE script (one round trip per request), as GCRA on Redis's own clock
  (``TIME``): every process and box sees the same buckets and the same time, and the
  answer carries the exact wait.  A bucket is one key holding its "theoretical arrival
  time", with a TTL of the time it takes to refill: an idle key's buckets vanish.
* While Redis is down, ``rate_limit.on_backend_down`` decides: ``closed`` answers 503
  (``LimiterUnavailable``), ``local`` counts in this process at each limit divided by
  ``rate_limit.instances`` (rounded up); both are counted in
  ``apiarium_limiter_fallback_total{mode}``, each failed call in
  ``apiarium_limiter_backend_errors_total``.

Keys: ``apiarium:{<key hash>}:…`` (one hash tag per API key: a key's buckets sit in one
Redis Cluster slot, as one script needs).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import LimiterUnavailable
from ..metrics import Metrics
from ..netguard import network_of
from ..ratelimit import Decision
from ..resp import ReplyError, RespClient, Script, Unreachable
from ..storage import KeyRecord
from ..usage import UsageLedger
from .keys import IssuanceCaps, supernet
from .limits import (
    RequestLimits,
    credits_headers,
    credits_refused,
    endpoint_refused,
    hourly_cap,
    lookups_refused,
    network_cap,
    rpm_refused,
    visits_refused,
)

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("apiarium")

TIMEOUT_S = 0.25          # connect and read (rate_limit.backend_timeout_ms): a dead Redis
                          # must not hold requests up
RETRY_S = 1.0             # while it is down, how often one request tries it again
SPENT_TTL_S = 2 * 86400   # a day's spent-credits counter outlives its day, then vanishes

# KEYS: the key's bucket, its endpoint bucket, its credits spent today
# ARGV: requests a minute, the endpoint's limit (0: none) and period (ms), the daily
#       credits (0: none), this process's count of today's spending (what counts while the
#       shared counter does not exist yet: the credit scripts create it)
# -> {refused by (0: admitted, 1: the key's bucket, 2: the endpoint's, 3: the credits),
#     requests left in the key's bucket, wait until a request is allowed (ms), until the
#     refusing (or the key's) bucket is full again (ms)[, admitted: the credits spent today]}
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function gcra(key, limit, period)
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  local new_tat = tat + period / limit
  return new_tat, new_tat - period - now, tat - now
end
local function keep(key, tat)
  redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now))
end
local rpm = tonumber(ARGV[1])
local tat1, wait1, busy1 = gcra(KEYS[1], rpm, 60000)
if wait1 > 0 then return {1, 0, math.ceil(wait1), math.ceil(busy1)} end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local tat2, wait2, busy2 = gcra(KEYS[2], limit, tonumber(ARGV[3]))
  if wait2 > 0 then return {2, 0, math.ceil(wait2), math.ceil(busy2)} end
  keep(KEYS[2], tat2)
end
local daily = tonumber(ARGV[4])
local spent = '0'
if daily > 0 then
  spent = redis.call('GET', KEYS[3]) or ARGV[5]
  if tonumber(spent) >= daily then return {3, 0, 0, 0} end
end
keep(KEYS[1], tat1)
local full = tat1 - now
return {0, math.floor((60000 - full) * rpm / 60000 + 1e-6), 0, math.ceil(full), spent}
"""

# KEYS: buckets to give one request back to; ARGV: each one's limit and period (ms)
REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0)
  if limit > 0 and tat > now then
    local back = tat - tonumber(ARGV[2 * i]) / limit
    if back <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.3f', back), 'PX', math.ceil(back - now))
    end
  end
end
return 0
"""


# KEYS: one endpoint bucket; ARGV: its limit and period (ms)
# -> {0: taken, 1: refused; wait until a request is allowed (ms), until it is full (ms)}
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + period / limit
local wait = new_tat - period - now
if wait > 0 then return {1, math.ceil(wait), math.ceil(tat - now)} end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
return {0, 0, 0}
"""


class BackendDown(Exception):
    """Redis did not answer (or the circuit is open): decide without it."""


def where(url: str) -> str:
    """``host:port/db`` of a Redis URL, for the log (never its password)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname}:{u.port or 6379}{u.path or '/0'}"


class RedisBackend:
    """One Redis client and its circuit, shared by everything this process keeps there."""

    def __init__(self, url: str, metrics: Metrics, timeout_s: float = TIMEOUT_S,
                 retry_s: float = RETRY_S) -> None:
        self.url, self.metrics, self.retry_s = url, metrics, retry_s
        self.pipe = RespClient(url, timeout_s)          # the request path's (``resp``)
        self.client = Redis.from_url(url, socket_timeout=timeout_s,   # off that path
                                     socket_connect_timeout=timeout_s,
                                     retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.down = False
        self._retry_at = 0.0

    @property
    def state(self) -> str:
        return "down" if self.down else "ok"

    def script(self, text: str) -> Script:
        return Script(text)

    def retry_in(self) -> float:
        """Seconds until Redis is tried again (what a 503 tells the client to wait)."""
        return max(self._retry_at - time.monotonic(), 0.0) or self.retry_s

    async def run(self, script: Script, keys: Sequence[str],
                  args: Sequence[str | int | float]) -> Any:
        """The script's answer, in one round trip (two if Redis lost the script); raises
        BackendDown at once while the circuit is open, or when this call fails."""
        if self.down:
            now = time.monotonic()
            if now < self._retry_at:
                raise BackendDown
            self._retry_at = now + self.retry_s     # this request tries; others wait a second
        try:
            answer = await self.pipe.evalsha(script, keys, args)
        except (Unreachable, ReplyError, OSError) as exc:
            self.metrics.limiter_errors.labels().inc()
            if not self.down:
                log.warning("rate limiter: Redis at %s cannot be reached (%s: %s); deciding "
                            "without it until it answers", where(self.url),
                            type(exc).__name__, exc)
            self.down = True
            self._retry_at = time.monotonic() + self.retry_s
            raise BackendDown from exc
        if self.down:
            self.down = False
            log.info("rate limiter: Redis at %s answers again", where(self.url))
        return answer

    async def ping(self) -> None:
        """Check Redis answers (at start: a wrong URL is said at once, in the log)."""
        try:
            await self.pipe.call(b"PING")
        except (Unreachable, ReplyError, OSError) as exc:
            log.warning("rate limiter: Redis at %s does not answer yet (%s)", where(self.url),
                        exc)

    async def close(self) -> None:
        self.pipe.close()
        await self.client.aclose()


def bucket_key(key_hash: str, name: str) -> str:
    return f"apiarium:{{{key_hash}}}:{name}"


def spent_key(key_hash: str, day: str) -> str:
    """The key's spent-credits counter of ``day`` (``UsageLedger.day()``: today, UTC)."""
    return f"apiarium:{{{key_hash}}}:spent:{day}"


class RedisLimits:
    """``Limiter`` over a shared Redis: one script per request; the fallback while it is
    down (a 503, or ``RequestLimits`` at each limit / ``rate_limit.instances``)."""

    def __init__(self, backend: RedisBackend, usage: UsageLedger, metrics: Metrics) -> None:
        self.backend, self.usage, self.metrics = backend, usage, metrics
        self._script = backend.script(ADMIT)
        self._refund = backend.script(REFUND)
        self._refunds: set[asyncio.Task] = set()      # held until done (not collected)
        self._take = backend.script(TAKE)
        self.local = RequestLimits(usage, metrics)

    async def admit(self, rec: KeyRecord, endpoint: str, s: Settings) -> dict[str, str]:
        h = rec.key_hash
        rpm = rec.rpm or s.rpm
        count, period = s.endpoint_limits.get(endpoint, (0, 1.0))
        keys = (bucket_key(h, "rpm"), bucket_key(h, f"ep:{endpoint}"),
                spent_key(h, self.usage.day()))
        args = (rpm, count, int(period * 1000), s.daily_credits,
                repr(self.usage.spent_today(h).credits) if s.daily_credits else 0)
        try:
            answer = await self.backend.run(self._script, keys, args)
        except BackendDown:
            return self.fallback(rec, endpoint, s)
        refused, remaining, wait_ms, full_ms = answer[:4]
        if refused == 0:
            headers = Decision(True, rpm, remaining, 0.0, full_ms / 1000).headers()
            if s.daily_credits:
                credits_headers(headers, s.daily_credits, float(answer[4]))
            return headers
        if refused == 1:
            raise rpm_refused(self.metrics, Decision(False, rpm, 0, wait_ms / 1000,
                                                     full_ms / 1000))
        if refused == 2:
            raise endpoint_refused(self.metrics, endpoint, period,
                                   Decision(False, count, 0, wait_ms / 1000, full_ms / 1000))
        raise credits_refused(self.metrics, s.daily_credits)

    def refund(self, rec: KeyRecord, endpoint: str, s: Settings) -> None:
        """Give the request's tokens back, in the background (its answer does not wait)."""
        self.local.refund(rec, endpoint, s)         # counted here while Redis was down
        h = rec.key_hash
        count, period = s.endpoint_limits.get(endpoint, (0, 1.0))
        task = asyncio.ensure_future(self._give_back(
            (bucket_key(h, "rpm"), bucket_key(h, f"ep:{endpoint}")),
            (rec.rpm or s.rpm, 60000, count, int(period * 1000))))
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)

    async def _give_back(self, keys: tuple[str, str], args: tuple[int, ...]) -> None:
        with contextlib.suppress(BackendDown):    # down: the token comes back with time
            await self.backend.run(self._refund, keys, args)

    async def lookup(self, rec: KeyRecord, s: Settings) -> None:
        """The key's lookups bucket: the admit script, its first bucket alone."""
        per_minute = s.lookups_per_minute
        keys = tuple(bucket_key(rec.key_hash, name) for name in ("lookups", "-", "-"))
        try:
            refused, _, wait_ms, full_ms = (await self.backend.run(
                self._script, keys, (per_minute, 0, 1000, 0, 0)))[:4]
        except BackendDown:
            self._local(s).lookup(rec, s)
            return
        if refused:
            raise lookups_refused(self.metrics, Decision(False, per_minute, 0, wait_ms / 1000,
                                                         full_ms / 1000))

    async def take(self, rec: KeyRecord, endpoint: str, s: Settings) -> None:
        """One request from the key's ``endpoint`` bucket alone (the bucket ``admit`` takes
        from), or its 429."""
        limit = s.endpoint_limits.get(endpoint)
        if limit is None:
            return
        count, period = limit
        try:
            refused, wait_ms, full_ms = await self.backend.run(
                self._take, (bucket_key(rec.key_hash, f"ep:{endpoint}"),),
                (count, int(period * 1000)))
        except BackendDown:
            self._local(s).take(rec, endpoint, s)
            return
        if refused:
            raise endpoint_refused(self.metrics, endpoint, period,
                                   Decision(False, count, 0, wait_ms / 1000, full_ms / 1000))

    def fallback(self, rec: KeyRecord, endpoint: str, s: Settings) -> dict[str, str]:
        """Redis is down: 503 (``closed``), or this process's share of each limit."""
        return self._local(s).admit(rec, endpoint, s)

    def _local(self, s: Settings) -> RequestLimits:
        """The limits while Redis is down: a 503 (``closed``), or this process's share."""
        mode = s.limiter_on_down
        self.metrics.limiter_fallback.labels(mode).inc()
        if mode != "local":
            raise LimiterUnavailable(self.backend.retry_in())
        if self.local.share != s.limiter_instances:
            self.local = RequestLimits(self.usage, self.metrics, s.limiter_instances)
        return self.local

    def prune(self, rpm_of: Callable[[str], int], s: Settings) -> None:
        self.local.prune(rpm_of, s)


# KEYS: the issuances of the last hour (anywhere), then for an IPv6 identity those of the
# last day in its /64, /48 and /32 (sorted sets: issuance time -> id).  ARGV: the caps in
# that order (0: none), the new issuance's id.  -> {0, 0} counted, or {the cap (1-4) that
# is full, seconds until its oldest issuance leaves the window}
ISSUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local windows = {3600, 86400, 86400, 86400}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - windows[i])
  if limit > 0 and redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {i, math.ceil(tonumber(oldest[2]) + windows[i] - now)}
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[5])
  redis.call('EXPIRE', KEYS[i], windows[i])
end
return {0, 0}
"""


class SharedIssuance:
    """``KeyService.shared_caps``: the new-key caps checked and counted in one script, so
    processes issuing at once cannot pass a cap together (keys: one hash tag,
    ``{issuance}``).  While Redis is down: 503 (``closed``), or the process's own check
    alone (``local``; it reads the database's issuances at each refresh)."""

    def __init__(self, backend: RedisBackend, settings: Callable[[], Settings],
                 local_visit: Callable[[str, int], None]) -> None:
        self.backend, self._settings, self._local_visit = backend, settings, local_visit
        self._script, self._bucket = backend.script(ISSUE), backend.script(ADMIT)

    async def visit(self, ip: str, per_minute: int) -> None:
        """A visit that may issue a key, in the network's bucket of ``per_minute`` a minute
        (``security.key_requests_per_minute``), shared: the admit script, its bucket alone."""
        net = network_of(ip)
        keys = [f"apiarium:{{visits:{net}}}:{name}" for name in ("rpm", "-", "-")]
        try:
            refused, _, wait_ms, full_ms = (await self.backend.run(
                self._bucket, keys, (per_minute, 0, 1000, 0, 0)))[:4]
        except BackendDown:
            s = self._settings()
            if s.limiter_on_down != "local":
                raise LimiterUnavailable(self.backend.retry_in()) from None
            self._local_visit(ip, math.ceil(per_minute / s.limiter_instances))
            return
        if refused:
            raise visits_refused(ip, Decision(False, per_minute, 0, wait_ms / 1000,
                                              full_ms / 1000))

    async def __call__(self, ident: str, caps: IssuanceCaps) -> None:
        keys = ["apiarium:{issuance}:hour"]
        nets = [(supernet(ident, bits), bits) for bits in (64, 48, 32)] if ":" in ident else []
        keys += [f"apiarium:{{issuance}}:{net}" for net, _ in nets]
        args = (caps.per_hour, caps.per_64, caps.per_48, caps.per_32,
                f"{ident}@{time.time_ns()}")
        try:
            full, wait = await self.backend.run(self._script, keys, args)
        except BackendDown:
            if self._settings().limiter_on_down != "local":
                raise LimiterUnavailable(self.backend.retry_in()) from None
            return
        if full == 1:
            raise hourly_cap(caps.per_hour, wait)
        if full > 1:
            net, bits = nets[full - 2]
            raise network_cap(net, bits, (caps.per_64, caps.per_48, caps.per_32)[full - 2], wait)
