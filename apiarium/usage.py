"""Usage and credits, per key and per UTC day.

Counted in memory on the request path; written to the database (``storage.UsageRepository``)
in batches by ``flush`` (called every few seconds off the request path, and once more on
shutdown).  Meanwhile each hold (``ahead``, before the upstream call) and each booking
(``record``) is appended to this process's usage journal (``usagejournal``: one ``os.write``
to the page cache, no fsync), so a process killed at any moment loses none: the next ledger
to open books what a dead process's journal holds (a request it had in flight at its whole
hold), then reads today's rows, so a daily credit limit holds across restarts.

Prices come from the model's ``credits`` in models.yaml (``catalog.Credits``):
``request`` per request; per 1k tokens ``input`` (uncached prompt tokens), ``cached_input``
(read from the provider's cache), ``cache_write`` (written to it; ``cache_write_1h`` for
Anthropic's 1-hour TTL) and ``output`` (completion tokens, reasoning included), each
``per_1k_tokens`` when not given; the token price times the premium tier's multiplier
(``service_tier``, as the upstream reported it) and, past ``long_context.above_tokens`` of
prompt, the long-context multipliers; ``tools[<family>]`` per hosted tool call; ``image``
per image, ``video_second`` per second of video, times ``resolution[<res>]`` (default 1).

A Tally's ``prompt_tokens`` counts every input token (cached and cache-written ones too, as
OpenAI's ``prompt_tokens`` does) and ``completion_tokens`` every output token; the stored
usage rows keep those two.  ``cached_tokens``, ``cache_write_tokens`` (``cache_write_1h_tokens``
of them with the 1-hour TTL) and ``reasoning_tokens`` say how many of them were which, and
``tool_calls`` counts hosted tool calls; they are counted in memory (GET /v1/keys/me shows
them) and not stored, so after a restart they count from then on.  ``hosted`` (calls per
tool family) and ``tier`` (the service tier the upstream reported) describe one request, for
its price; they are not added up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, TypeVar

from .catalog import ModelSpec
from .storage import Storage, UsageRow, open_storage
from .tokens import TokenUsage
from .usagejournal import Ahead, Journal, journal_folder, recover

log = logging.getLogger("apiarium")
MASTER = "master"          # what the master key's usage is filed under


class Held(Protocol):
    """A credit hold (``services.costs.Hold``) as the ledger sees it."""
    key_hash: str | None
    amount: float
    ahead: Ahead | None        # its record in the journal, once written


H = TypeVar("H", bound=Held)


def today() -> str:
    """Today's UTC date, as usage rows name their day."""
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass
class Tally:
    """What requests used: counts, and the credits they cost."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    video_seconds: int = 0
    credits: float = 0.0
    cached_tokens: int = 0         # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0    # of prompt_tokens: written to it
    reasoning_tokens: int = 0      # of completion_tokens: thinking
    tool_calls: int = 0            # hosted tool calls (web searches, generated images, …)
    cache_write_1h_tokens: int = 0  # of cache_write_tokens: with the 1-hour TTL
    hosted: dict[str, int] | None = None    # one request's: tool family -> calls
    tier: str = ""                 # one request's: the service tier the upstream reported

    @classmethod
    def of(cls, used: TokenUsage, requests: int = 1) -> Tally:
        """A request's tally from its normalised token counts."""
        # positional (the fields' order): on every request's path, where keywords cost more
        return cls(requests, used.prompt, used.output, 0, 0, 0.0, used.cache_read,
                   used.cache_write, used.reasoning)

    def add(self, other: Tally) -> None:          # spelled out: on every request's path
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.images += other.images
        self.video_seconds += other.video_seconds
        self.credits += other.credits
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.tool_calls += other.tool_calls
        self.cache_write_1h_tokens += other.cache_write_1h_tokens

    def as_dict(self) -> dict[str, int | float]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ONE_REQUEST}
        d["credits"] = round(d["credits"], 4)
        return d


_ONE_REQUEST = frozenset({"hosted", "tier"})


def price(model: ModelSpec, tally: Tally, resolution: str | None = None) -> float:
    """What ``tally`` costs in credits on ``model`` (video at ``resolution``)."""
    c = model.credits
    cost = c.request * tally.requests
    prompt = tally.prompt_tokens
    cached = min(tally.cached_tokens, prompt)
    written = min(tally.cache_write_tokens, prompt - cached)
    hour = min(tally.cache_write_1h_tokens, written)
    reading = (c.input_rate * (prompt - cached - written) + c.cached_input_rate * cached
               + c.cache_write_rate * (written - hour) + c.cache_write_1h_rate * hour)
    writing = c.output_rate * tally.completion_tokens
    long = c.long_context
    if long and prompt > long.get("above_tokens", prompt):
        reading *= long.get("input", 1.0)
        writing *= long.get("output", 1.0)
    tokens = (reading + writing) / 1000
    cost += tokens * c.tier_factor(tally.tier) if tally.tier else tokens
    if tally.hosted:
        cost += sum(c.tool_rate(family) * calls for family, calls in tally.hosted.items())
    cost += c.image * tally.images
    cost += c.video_second * tally.video_seconds * c.resolution.get(resolution or "", 1.0)
    return cost


class UsageLedger:
    """Each key's usage today, in memory; written to the database in batches, journaled
    meanwhile (``journal_dir``: where; by default beside a SQLite database, none for a
    PostgreSQL one)."""

    def __init__(self, database: str | Path, journal_dir: Path | None = None) -> None:
        self.database = database
        self.journal_dir = journal_dir or journal_folder(database)
        self.journal: Journal | None = None      # this process's, once open
        self._storage: Storage | None = None
        self._today: dict[str, Tally] = {}                    # key_hash -> today's totals
        self._pending: dict[tuple[str, str], Tally] = {}      # not yet written
        self._day = ""
        self._day_number = -1                                  # the day ``_day`` names
        self._flushing = asyncio.Lock()        # one write at a time, and close() waits for it
        # told of each key's credits as they are booked (the shared counter in Redis)
        self.booked: Callable[[str, float], None] | None = None

    async def open(self) -> UsageLedger:
        """Open the database and a journal of this process's; book what dead processes'
        journals hold; read today's totals."""
        self._storage = storage = await open_storage(self.database)
        try:
            if self.journal_dir is not None:
                self.journal = Journal.create(self.journal_dir)
                found = await recover(storage.usage, self.journal_dir, self.journal.name)
                if found.journals:
                    log.info("%s", found)
            self._day = today()
            rows = await storage.usage.day(self._day)
        except BaseException:
            if self.journal is not None:
                self.journal.close(remove=True)
                self.journal = None
            self._storage = None
            await storage.close()
            raise
        for row in rows:
            self._today[row.key_hash] = Tally(row.requests, row.prompt_tokens,
                                              row.completion_tokens, row.images,
                                              row.video_seconds, row.credits)
        return self

    def ahead(self, hold: H, model: ModelSpec) -> H:
        """Journal a credit hold before its upstream call: if the process dies before the
        request is booked (``record`` with ``hold``) or let go (``hold.release()``), the
        next start books it whole."""
        if self.journal is not None and hold.key_hash is not None and hold.amount > 0:
            hold.ahead = Ahead(self.journal, self.journal.hold(hold.key_hash, self.day(),
                                                                hold.amount, model.alias))
        return hold

    def record(self, key_hash: str | None, model: ModelSpec, tally: Tally,
               resolution: str | None = None, hold: Held | None = None) -> float:
        """Count one request's usage (settling its ``hold`` in the journal, if it has one
        there); returns the credits it cost."""
        tally.credits = price(model, tally, resolution)
        day = self.day()
        key = key_hash or MASTER
        if self.journal is not None:
            ahead = hold.ahead if hold is not None else None
            self.journal.settle(ahead.ident if ahead is not None else 0, key, day, (
                tally.requests, tally.prompt_tokens, tally.completion_tokens, tally.images,
                tally.video_seconds, tally.credits))
        today = self._today.get(key)
        if today is None:
            today = self._today[key] = Tally()
        today.add(tally)
        pending = self._pending.get((key, day))
        if pending is None:
            pending = self._pending[key, day] = Tally()
        pending.add(tally)
        if self.booked is not None and key_hash is not None:
            self.booked(key_hash, tally.credits)
        return tally.credits

    def day(self) -> str:
        """Today's date (UTC), as usage rows and the shared spent counters name it; at
        midnight a new day starts at zero (checked cheaply: the date is made once a day)."""
        number = int(time.time() // 86400)
        if number != self._day_number:
            self._day_number = number
            day = today()
            if day != self._day:
                self._day, self._today = day, {}
        return self._day

    def spent_today(self, key_hash: str) -> Tally:
        self.day()
        return self._today.get(key_hash) or Tally()

    async def history(self, key_hash: str | None, first: str, last: str) -> dict[str, Tally]:
        """One key's usage (None: the master key's) on each UTC day from ``first`` to
        ``last`` (both included) that has any: the stored rows plus what this process
        counted and has not written yet, each request once.  Read while no flush of this
        process is under way, so a batch is either still pending here or committed, never
        both nor neither.  Other processes' counts not yet written (a few seconds' worth:
        they flush every 2 s) are not seen."""
        key = key_hash or MASTER
        async with self._flushing:
            storage = self._storage
            rows = [] if storage is None else await storage.usage.days(key, first, last)
            found = {r.day: Tally(r.requests, r.prompt_tokens, r.completion_tokens, r.images,
                                  r.video_seconds, r.credits) for r in rows}
            for (k, day), pending in self._pending.items():   # after the read: all of it
                if k == key and first <= day <= last:
                    found.setdefault(day, Tally()).add(pending)
        return found

    async def flush(self) -> int:
        """Write what was counted since the previous flush; the number of rows written.
        Callers that may be cancelled shield it: a write cut in half could be committed in
        the database's thread and counted again."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        if self._storage is None:
            return 0
        journal = self.journal
        # the batch's settles are in the journal's segments up to ``upto``; taken together,
        # with no await between (see usagejournal)
        upto = journal.rotate() if journal is not None else 0
        batch, self._pending = self._pending, {}
        rows = [UsageRow(k, d, t.requests, t.prompt_tokens, t.completion_tokens, t.images,
                         t.video_seconds, t.credits) for (k, d), t in batch.items()]
        if rows:
            try:
                await self._storage.usage.add(rows, journal.name if journal else "", upto)
            except Exception:
                for k, t in batch.items():            # keep them for the next try
                    self._pending.setdefault(k, Tally()).add(t)
                raise
        if journal is not None:
            journal.drop(upto)          # in the database now (or, with no rows, nothing)
        return len(rows)

    async def close(self) -> None:
        """Write what is pending; delete the journal once everything in it is written (a
        hold still open, or a record made meanwhile, leaves it for the next start)."""
        if self._storage is not None:
            journal, done = self.journal, False
            try:
                await self.flush()
                if journal is not None and not journal.holding and not journal.fresh:
                    await self._storage.usage.forget_journal(journal.name)
                    done = True
            finally:
                if journal is not None:
                    self.journal = None
                    journal.close(remove=done)
                    if journal.holding:
                        log.warning("usage journal: %d requests still held credits at "
                                    "shutdown; the next start books them whole",
                                    journal.holding)
                storage, self._storage = self._storage, None
                await storage.close()
