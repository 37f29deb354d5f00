"""The access log: one line per request on stderr, in the same shape as the other log lines,
without the logging module's per-record cost (a caller lookup, a LogRecord, a lock and a
write per line).  Lines are formatted with a per-second cached timestamp and written in
batches: when 64 KB have gathered, and by ``flush``, which the gateway calls four times a
second and on shutdown.  A worker of several (``--workers``) shares its stderr with the
others: its batches go out in writes of at most ``PIPE_BUF`` bytes that end at a line's end,
each of which a pipe keeps whole, so the workers' lines never interleave mid-line."""
from __future__ import annotations

import sys
import time
from typing import TextIO

BATCH_BYTES = 64 * 1024
PIPE_BUF = 4096           # what POSIX guarantees a pipe writes in one piece


class AccessLog:
    def __init__(self, stream: TextIO | None = None, name: str = "apiarium.access",
                 shared: bool = False):
        self.stream = stream or sys.stderr
        self.shared = shared            # other processes write to the same stream
        self._suffix = f" INFO {name}: "
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""

    def write(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._stamp},{int((now - second) * 1000):03d}{self._suffix}{message}\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            try:
                for piece in _pieces(lines) if self.shared else ("".join(lines),):
                    self.stream.write(piece)
                    self.stream.flush()
            except (OSError, ValueError):
                pass            # a closed or broken stderr must not take the server down


def _pieces(lines: list[str]) -> list[str]:
    """The lines joined into pieces of at most PIPE_BUF bytes (a longer line: alone)."""
    out: list[str] = []
    piece: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode())
        if piece and size + n > PIPE_BUF:
            out.append("".join(piece))
            piece, size = [], 0
        piece.append(line)
        size += n
    if piece:
        out.append("".join(piece))
    return out
