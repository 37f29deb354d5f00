"""Generated images and videos on disk, under unguessable names, kept for ``ttl_hours``.

Writes and the sweep run in a worker thread, so the event loop never waits on the disk.
"""
from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import secrets
import time
from pathlib import Path

EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp",
              "image/gif": ".gif", "video/mp4": ".mp4", "video/webm": ".webm",
              "video/quicktime": ".mov"}
NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.[a-z0-9]{2,5}$")


class MediaStore:
    def __init__(self, folder: Path, ttl_hours: float):
        self.folder = Path(folder)
        self.ttl_s = ttl_hours * 3600

    def _write(self, data: bytes, ext: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = secrets.token_urlsafe(24) + ext            # 32 characters, 192 bits
        tmp = self.folder / f".{name}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.folder / name)
        return name

    async def save(self, data: bytes, mime: str) -> str:
        ext = EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
        return await asyncio.to_thread(self._write, data, ext)

    def path_of(self, name: str) -> Path | None:
        """The file behind a public name, or None if the name is malformed, unknown or
        expired (an expired file is deleted on the spot)."""
        if not NAME.match(name):
            return None
        path = self.folder / name
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return path

    def _sweep(self) -> int:
        removed, cutoff = 0, time.time() - self.ttl_s
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed

    async def sweep(self) -> int:
        return await asyncio.to_thread(self._sweep)
