"""Usage and credits, per key and per UTC day.

Counted in memory on the request path; written to SQLite in batches by ``flush`` (called
every few seconds off the request path, and once more on shutdown), so nothing is lost on a
clean stop.  Today's rows are loaded at start, so a daily credit limit holds across restarts.

Prices come from the model's ``credits`` in models.yaml (``catalog.Credits``):
``request`` per request, ``per_1k_tokens`` for prompt + completion tokens, ``image`` per
image, ``video_second`` per second of video, times ``resolution[<res>]`` (default 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import aiosqlite

from .catalog import ModelSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    key_hash          TEXT NOT NULL,
    day               TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    images            INTEGER NOT NULL DEFAULT 0,
    video_seconds     INTEGER NOT NULL DEFAULT 0,
    credits           REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_hash, day)
);
"""
MASTER = "master"          # what the master key's usage is filed under


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass
class Tally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    video_seconds: int = 0
    credits: float = 0.0

    def add(self, other: Tally) -> None:          # spelled out: on every request's path
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.images += other.images
        self.video_seconds += other.video_seconds
        self.credits += other.credits

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["credits"] = round(d["credits"], 4)
        return d


def price(model: ModelSpec, tally: Tally, resolution: str | None = None) -> float:
    c = model.credits
    cost = c.request * tally.requests
    cost += c.per_1k_tokens * (tally.prompt_tokens + tally.completion_tokens) / 1000
    cost += c.image * tally.images
    cost += c.video_second * tally.video_seconds * c.resolution.get(resolution or "", 1.0)
    return cost


class UsageLedger:
    def __init__(self, db_path: Path):
        self.db_path = db_path
        self._db: aiosqlite.Connection | None = None
        self._today: dict[str, Tally] = {}                    # key_hash -> today's totals
        self._pending: dict[tuple[str, str], Tally] = {}      # not yet written
        self._day = ""
        self._day_number = -1                                  # the day ``_day`` names

    async def open(self) -> UsageLedger:
        self._db = await aiosqlite.connect(self.db_path, isolation_level=None)
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(SCHEMA)
        self._day = today()
        async with self._db.execute(
                "SELECT key_hash, requests, prompt_tokens, completion_tokens, images, "
                "video_seconds, credits FROM usage WHERE day = ?", (self._day,)) as cur:
            async for row in cur:
                self._today[row[0]] = Tally(*row[1:])
        return self

    def record(self, key_hash: str | None, model: ModelSpec, tally: Tally,
               resolution: str | None = None) -> float:
        """Count one request's usage; returns the credits it cost."""
        tally.credits = price(model, tally, resolution)
        day = self._roll()
        key = key_hash or MASTER
        self._today.setdefault(key, Tally()).add(tally)
        self._pending.setdefault((key, day), Tally()).add(tally)
        return tally.credits

    def _roll(self) -> str:
        """Today's date; at midnight UTC a new day starts at zero (checked cheaply)."""
        number = int(time.time() // 86400)
        if number != self._day_number:
            self._day_number = number
            day = today()
            if day != self._day:
                self._day, self._today = day, {}
        return self._day

    def spent_today(self, key_hash: str) -> Tally:
        self._roll()
        return self._today.get(key_hash) or Tally()

    async def flush(self) -> int:
        if not self._pending or self._db is None:
            return 0
        batch, self._pending = self._pending, {}
        rows = [(k, d, t.requests, t.prompt_tokens, t.completion_tokens, t.images,
                 t.video_seconds, t.credits) for (k, d), t in batch.items()]
        try:
            await self._db.execute("BEGIN")
            await self._db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key_hash, day) DO UPDATE SET "
                "requests = requests + excluded.requests, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "images = images + excluded.images, "
                "video_seconds = video_seconds + excluded.video_seconds, "
                "credits = credits + excluded.credits", rows)
            await self._db.execute("COMMIT")
        except Exception:
            await self._db.execute("ROLLBACK")
            for k, t in batch.items():            # keep them for the next try
                self._pending.setdefault(k, Tally()).add(t)
            raise
        return len(rows)

    async def close(self) -> None:
        if self._db is not None:
            await self.flush()
            await self._db.close()
            self._db = None
