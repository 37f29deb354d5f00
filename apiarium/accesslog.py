"""The access log: one line per request on stderr, in the same shape as the other log lines,
without the logging module's per-record cost (a caller lookup, a LogRecord, a lock and a
write per line).  Lines are formatted with a per-second cached timestamp and written in
batches: when 64 KB have gathered, and by ``flush``, which the gateway calls four times a
second and on shutdown."""
from __future__ import annotations

import sys
import time
from typing import TextIO

BATCH_BYTES = 64 * 1024


class AccessLog:
    def __init__(self, stream: TextIO | None = None, name: str = "apiarium.access"):
        self.stream = stream or sys.stderr
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
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass            # a closed or broken stderr must not take the server down
