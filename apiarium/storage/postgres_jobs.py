"""``VideoJobRepository`` on PostgreSQL's ``video_jobs`` table (schema versions 2 and 3,
``postgres_schema._V2`` and ``_V3``).  Every method is one statement; ``claim`` leases a job
to one process at a time (row-locked: of several claiming at once one wins), and ``finish``
moves a job out of queued/in_progress only once, so one process books it."""
from __future__ import annotations

from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from . import VideoJob
from .sqlite_jobs import COLUMNS, DEAD, SELECT, UNFINISHED

FREE = "(lease_until IS NULL OR lease_until < $1 OR lease_owner = $2)"    # now, owner

if TYPE_CHECKING:                       # postgres imports this module
    from .postgres import PostgresStorage


def job_of(row: Any) -> VideoJob:
    return VideoJob(*row.values())


class PostgresVideoJobs:
    def __init__(self, storage: PostgresStorage) -> None:
        self._s = storage

    async def create(self, job: VideoJob, lease_owner: str | None = None,
                     lease_until: float | None = None) -> None:
        values = (*astuple(job), lease_owner, lease_until)    # the fields in COLUMNS' order
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await self._s.write(f"INSERT INTO video_jobs ({COLUMNS}, lease_owner, lease_until) "  # noqa: S608
                            f"VALUES ({marks})", *values, counted=False)

    async def claimable(self, owner: str, now: float) -> list[VideoJob]:
        return [job_of(r) for r in await self._s.fetch(
            f"{SELECT} WHERE {UNFINISHED} AND {FREE} ORDER BY seq", now, owner)]

    async def claim(self, job_id: str, owner: str, now: float, until: float) -> bool:
        return await self._s.write(
            "UPDATE video_jobs SET lease_owner = $1, lease_until = $2 "  # noqa: S608
            f"WHERE id = $3 AND {UNFINISHED} AND (lease_until IS NULL OR lease_until < $4 "
            "OR lease_owner = $1)",
            owner, until, job_id, now, counted=False) > 0

    async def renew(self, job_id: str, owner: str, until: float) -> bool:
        return await self._s.write(
            "UPDATE video_jobs SET lease_until = $1 "  # noqa: S608
            f"WHERE id = $2 AND lease_owner = $3 AND {UNFINISHED}",
            until, job_id, owner, counted=False) > 0

    async def release(self, job_id: str, owner: str) -> bool:
        return await self._s.write(
            "UPDATE video_jobs SET lease_owner = NULL, lease_until = NULL "
            "WHERE id = $1 AND lease_owner = $2", job_id, owner, counted=False) > 0

    async def get(self, job_id: str, owner: str | None = None) -> VideoJob | None:
        if owner is None:
            rows = await self._s.fetch(SELECT + " WHERE id = $1", job_id)
        else:
            rows = await self._s.fetch(SELECT + " WHERE id = $1 AND owner = $2", job_id, owner)
        return job_of(rows[0]) if rows else None

    async def page(self, owner: str, after: str | None, limit: int,
                   newest_first: bool = True) -> list[VideoJob]:
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is None:
            rows = await self._s.fetch(f"{SELECT} WHERE owner = $1 ORDER BY seq {order} "
                                       "LIMIT $2", owner, limit)
        else:
            rows = await self._s.fetch(
                f"{SELECT} WHERE owner = $1 AND seq {cmp} (SELECT seq FROM video_jobs "  # noqa: S608
                f"WHERE id = $2 AND owner = $1) ORDER BY seq {order} LIMIT $3",
                owner, after, limit)
        return [job_of(r) for r in rows]

    async def started(self, job_id: str, provider: str, operation: str, served: str,
                      progress: int) -> bool:
        return await self._s.write(
            "UPDATE video_jobs SET status = 'in_progress', provider = $1, operation = $2, "  # noqa: S608
            f"served = $3, progress = $4 WHERE id = $5 AND {UNFINISHED}",
            provider, operation, served, progress, job_id, counted=False) > 0

    async def finish(self, job_id: str, *, status: str, when: int, media: str | None = None,
                     expires_at: int | None = None, error_code: str | None = None,
                     error_message: str | None = None) -> bool:
        progress = 100 if status == "completed" else 0
        return await self._s.write(
            "UPDATE video_jobs SET status = $1, progress = $2, completed_at = $3, media = $4, "  # noqa: S608
            "expires_at = $5, error_code = $6, error_message = $7, lease_owner = NULL, "
            f"lease_until = NULL WHERE id = $8 AND {UNFINISHED}",
            status, progress, when, media, expires_at, error_code, error_message, job_id,
            counted=False) > 0

    async def delete(self, job_id: str, owner: str) -> VideoJob | None:
        rows = await self._s.fetch(f"DELETE FROM video_jobs WHERE id = $1 AND owner = $2 "  # noqa: S608
                                   f"RETURNING {COLUMNS}", job_id, owner)
        return job_of(rows[0]) if rows else None

    async def unfinished(self) -> list[VideoJob]:
        return [job_of(r) for r in await self._s.fetch(
            f"{SELECT} WHERE {UNFINISHED} ORDER BY seq")]

    async def prune(self, before: int) -> list[str | None]:
        rows = await self._s.fetch(
            f"DELETE FROM video_jobs WHERE {DEAD.format('$1', '$1')} RETURNING media",  # noqa: S608
            before)
        return [r["media"] for r in rows]
