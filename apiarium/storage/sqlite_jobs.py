"""``VideoJobRepository`` on SQLite's ``video_jobs`` table (schema versions 3 and 4,
``sqlite_schema.VIDEO_JOBS`` and ``VIDEO_LEASE``).  Paging is by ``seq``, the row's
insertion order; a lease is claimed, renewed and released by one UPDATE each."""
from __future__ import annotations

from dataclasses import astuple
from typing import TYPE_CHECKING, Any

from . import VideoJob

if TYPE_CHECKING:                       # sqlite imports this module
    from .sqlite import SqliteStorage

COLUMNS = ("id, owner, model, prompt, seconds, size, resolution, aspect_ratio, status, "
           "progress, created_at, completed_at, expires_at, provider, operation, served, "
           "media, error_code, error_message")
SELECT = f"SELECT {COLUMNS} FROM video_jobs"  # noqa: S608  (a constant)
UNFINISHED = "status IN ('queued', 'in_progress')"
FREE = "(lease_until IS NULL OR lease_until < ? OR lease_owner = ?)"    # now, owner
# failed, or its content expired, before the cut-off (given twice)
DEAD = "(status = 'failed' AND completed_at < {0}) OR (status = 'completed' AND expires_at < {1})"


def job_of(row: Any) -> VideoJob:
    return VideoJob(*row)


class SqliteVideoJobs:
    def __init__(self, storage: SqliteStorage) -> None:
        self._s = storage

    async def create(self, job: VideoJob, lease_owner: str | None = None,
                     lease_until: float | None = None) -> None:
        values = (*astuple(job), lease_owner, lease_until)    # the fields in COLUMNS' order
        async with self._s.write_lock:
            await self._s.write(f"INSERT INTO video_jobs ({COLUMNS}, lease_owner, "  # noqa: S608
                                f"lease_until) VALUES ({', '.join('?' * len(values))})",
                                values, counted=False)

    async def claimable(self, owner: str, now: float) -> list[VideoJob]:
        return [job_of(r) for r in await self._s.fetch(
            f"{SELECT} WHERE {UNFINISHED} AND {FREE} ORDER BY seq", (now, owner))]

    async def claim(self, job_id: str, owner: str, now: float, until: float) -> bool:
        async with self._s.write_lock:
            return await self._s.write(
                "UPDATE video_jobs SET lease_owner = ?, lease_until = ? "  # noqa: S608
                f"WHERE id = ? AND {UNFINISHED} AND {FREE}",
                (owner, until, job_id, now, owner), counted=False) > 0

    async def renew(self, job_id: str, owner: str, until: float) -> bool:
        async with self._s.write_lock:
            return await self._s.write(
                "UPDATE video_jobs SET lease_until = ? "  # noqa: S608
                f"WHERE id = ? AND lease_owner = ? AND {UNFINISHED}",
                (until, job_id, owner), counted=False) > 0

    async def release(self, job_id: str, owner: str) -> bool:
        async with self._s.write_lock:
            return await self._s.write(
                "UPDATE video_jobs SET lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ?", (job_id, owner), counted=False) > 0

    async def get(self, job_id: str, owner: str | None = None) -> VideoJob | None:
        if owner is None:
            rows = await self._s.fetch(SELECT + " WHERE id = ?", (job_id,))
        else:
            rows = await self._s.fetch(SELECT + " WHERE id = ? AND owner = ?", (job_id, owner))
        return job_of(rows[0]) if rows else None

    async def page(self, owner: str, after: str | None, limit: int,
                   newest_first: bool = True) -> list[VideoJob]:
        order, cmp = ("DESC", "<") if newest_first else ("ASC", ">")
        if after is None:
            sql = f"{SELECT} WHERE owner = ? ORDER BY seq {order} LIMIT ?"
            args: tuple[Any, ...] = (owner, limit)
        else:
            sql = (f"{SELECT} WHERE owner = ? AND seq {cmp} (SELECT seq FROM video_jobs "  # noqa: S608
                   f"WHERE id = ? AND owner = ?) ORDER BY seq {order} LIMIT ?")
            args = (owner, after, owner, limit)
        return [job_of(r) for r in await self._s.fetch(sql, args)]

    async def started(self, job_id: str, provider: str, operation: str, served: str,
                      progress: int) -> bool:
        async with self._s.write_lock:
            return await self._s.write(
                "UPDATE video_jobs SET status = 'in_progress', provider = ?, operation = ?, "  # noqa: S608
                f"served = ?, progress = ? WHERE id = ? AND {UNFINISHED}",
                (provider, operation, served, progress, job_id), counted=False) > 0

    async def finish(self, job_id: str, *, status: str, when: int, media: str | None = None,
                     expires_at: int | None = None, error_code: str | None = None,
                     error_message: str | None = None) -> bool:
        progress = 100 if status == "completed" else 0
        async with self._s.write_lock:
            return await self._s.write(
                "UPDATE video_jobs SET status = ?, progress = ?, completed_at = ?, media = ?, "  # noqa: S608
                "expires_at = ?, error_code = ?, error_message = ?, lease_owner = NULL, "
                f"lease_until = NULL WHERE id = ? AND {UNFINISHED}",
                (status, progress, when, media, expires_at, error_code, error_message,
                 job_id), counted=False) > 0

    async def delete(self, job_id: str, owner: str) -> VideoJob | None:
        async with self._s.write_lock:
            rows = await self._s.fetch(
                f"DELETE FROM video_jobs WHERE id = ? AND owner = ? RETURNING {COLUMNS}",  # noqa: S608
                (job_id, owner))
        return job_of(rows[0]) if rows else None

    async def unfinished(self) -> list[VideoJob]:
        return [job_of(r) for r in await self._s.fetch(
            f"{SELECT} WHERE {UNFINISHED} ORDER BY seq")]

    async def prune(self, before: int) -> list[str | None]:
        async with self._s.write_lock:
            rows = await self._s.fetch(
                f"DELETE FROM video_jobs WHERE {DEAD.format('?', '?')} RETURNING media",  # noqa: S608
                (before, before))
        return [r[0] for r in rows]
