"""Generated images and videos on disk, under unguessable names, kept for ``ttl_hours``, and
at most ``max_bytes`` of them: a save that would pass the cap first deletes the oldest files.

Only the media types of ``EXTENSIONS`` are kept (``extension_for``): the file's extension
is what it is served as, so an upstream that answers an SVG or an HTML page as an "image"
cannot get script served from the gateway's origin.

The sizes of the files are counted in memory (the folder is scanned once, on the first save
or sweep, and again at every sweep, which also picks up what other processes wrote), so a
save costs no listing of the folder.  Disk work runs in a worker thread, so the event loop
never waits on the disk; the bookkeeping stays on the loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from pathlib import Path

from .errors import ServiceUnavailable, UpstreamError

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg",
              "image/webp": ".webp", "image/gif": ".gif", "video/mp4": ".mp4",
              "video/webm": ".webm"}
SERVED = frozenset(EXTENSIONS.values())
NAME = re.compile(r"^[A-Za-z0-9_-]{32}(\.[a-z0-9]{2,5})$")


def extension_for(mime: str) -> str:
    """The file extension of an allowed media type; anything else is refused as the
    upstream's failure (a 502)."""
    ext = EXTENSIONS.get(mime.split(";")[0].strip().lower())
    if ext is None:
        raise UpstreamError(f"The upstream provider answered with a file of type "
                            f"`{mime[:60]}`, which this gateway does not serve (PNG, JPEG, "
                            f"WebP, GIF, MP4 and WebM only).", code="upstream_bad_media")
    return ext


class MediaStore:
    def __init__(self, folder: Path, ttl_hours: float, max_bytes: int = 5 * 1024 ** 3):
        self.folder = Path(folder)
        self.ttl_s = ttl_hours * 3600
        self.max_bytes = max_bytes
        self._files: dict[str, int] = {}     # name -> size, oldest first
        self._total = 0
        self._scanned = False

    def configure(self, ttl_hours: float, max_bytes: int) -> None:
        """A reload's new limits (the folder, and what is counted in it, stay)."""
        self.ttl_s, self.max_bytes = ttl_hours * 3600, max_bytes

    @property
    def total_bytes(self) -> int:
        return self._total

    # ------------------------------------------------------------------ saving
    def _write(self, data: bytes, name: str, evict: list[str]) -> None:
        for old in evict:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / old)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.folder / name)

    async def save(self, data: bytes, mime: str) -> str:
        """Store ``data`` under a new name (deleting the oldest files if the cap needs it);
        the name.  A type outside ``EXTENSIONS`` is a 502, a file over the cap a 503."""
        ext = extension_for(mime)
        if len(data) > self.max_bytes:
            raise ServiceUnavailable(f"The generated file ({len(data) / 1048576:.1f} MB) is "
                                     f"larger than this gateway keeps (media.max_gb).",
                                     code="media_store_full")
        if not self._scanned:
            await self.sweep()
        name = secrets.token_urlsafe(24) + ext            # 32 characters, 192 bits
        evict = []
        while self._files and self._total + len(data) > self.max_bytes:
            oldest = next(iter(self._files))
            self._forget(oldest)
            evict.append(oldest)
        self._files[name] = len(data)                     # counted now: a concurrent save
        self._total += len(data)                          # sees it
        try:
            await asyncio.to_thread(self._write, data, name, evict)
        except BaseException:
            self._forget(name)
            raise
        return name

    def _forget(self, name: str) -> None:
        self._total -= self._files.pop(name, 0)

    # ------------------------------------------------------------------ serving
    def path_of(self, name: str) -> Path | None:
        """The file behind a public name, or None if the name is malformed, not of a served
        type, unknown or expired (an expired file is deleted on the spot)."""
        m = NAME.match(name)
        if m is None or m.group(1) not in SERVED:
            return None
        path = self.folder / name
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            self._forget(name)
            return None
        return path

    async def remove(self, name: str) -> None:
        """Delete a file now (a deleted video job's); unknown names are ignored."""
        if NAME.match(name) is None:
            return
        self._forget(name)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.unlink, self.folder / name)

    # ------------------------------------------------------------------ the sweep
    def _scan(self) -> tuple[int, list[tuple[float, str, int]]]:
        """Delete expired files (and stray ones of types no longer served): how many, and
        (mtime, name, size) of the files kept, oldest first."""
        removed, kept, cutoff = 0, [], time.time() - self.ttl_s
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0, []
        for entry in entries:
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
                m = NAME.match(entry.name)
                if st.st_mtime < cutoff or (m is not None and m.group(1) not in SERVED):
                    os.unlink(entry.path)
                    removed += 1
                elif m is not None:
                    kept.append((st.st_mtime, entry.name, st.st_size))
            except OSError:
                continue
        return removed, sorted(kept)

    async def sweep(self) -> int:
        """Remove expired files and count the folder afresh; how many files went."""
        before = set(self._files)
        removed, kept = await asyncio.to_thread(self._scan)
        files = {name: size for _, name, size in kept}
        for name, size in self._files.items():     # saved while the scan ran: still there
            if name not in before and name not in files:
                files[name] = size
        self._files, self._total, self._scanned = files, sum(files.values()), True
        return removed
