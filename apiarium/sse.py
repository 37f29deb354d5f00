"""Server-sent events: split a byte stream into events, and encode events.

The decoder keeps each event's raw bytes so a passthrough relay can forward them
untouched; ``parse`` pulls out the event name and data when a translator needs them.
"""
from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"


class SSEDecoder:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the complete events in ``chunk`` (each without its blank-line terminator)."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # keep a trailing lone CR for the next chunk: it may be half of a CRLF
            tail = b"\r" if buf.endswith(b"\r") else b""
            buf = buf[:len(buf) - len(tail)].replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        events = buf.split(b"\n\n")
        self._buf = events.pop()
        return [e for e in events if e.strip(b"\n")]

    def close(self) -> list[bytes]:
        """The last event, if the stream ended without a blank line after it."""
        rest, self._buf = self._buf.rstrip(b"\r\n"), b""
        return [rest] if rest.strip() else []


def parse(event: bytes) -> tuple[str | None, bytes | None]:
    """(event name, data) of one raw event; data lines are joined with ``\\n``; None if absent."""
    name, data = None, []
    for line in event.split(b"\n"):
        if not line or line[0:1] == b":":
            continue
        field, _, value = line.partition(b":")
        if value[0:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return name, (b"\n".join(data) if data else None)


def encode(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def comment(text: str = "keep-alive") -> bytes:
    return b": " + text.encode() + b"\n\n"
