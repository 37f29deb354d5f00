"""A small Redis client for the request path: one connection per process, pipelined.

Every command issued in one turn of the event loop goes out in one write, and the replies
come back in order on the same connection (Redis answers a connection's commands in the
order sent), each to the future waiting for it.  That is what makes the shared limiter cheap
per request: no connection pool, no lock, one system call for many requests under load.
(redis-py's client takes a pooled connection, a write and a read per command: several
times the CPU per request.)  Only what the limiter needs: RESP2 replies, ``AUTH`` and
``SELECT`` from the URL, TLS for ``rediss://``, ``EVALSHA`` with ``SCRIPT LOAD`` when the
server does not know the script (``NOSCRIPT``: restarted, or flushed).

A reply later than ``timeout_s`` (or a connection that cannot be made within it) fails
every call waiting on the connection with ``Unreachable`` and closes it: the next call
connects again.
"""
from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

Reply = int | bytes | list | None


class Unreachable(Exception):
    """Redis cannot be reached, closed the connection, or did not answer in time."""


class ReplyError(Exception):
    """Redis answered with an error (``-ERR …``, ``-NOSCRIPT …``)."""


def pack(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """A command as RESP (an array of bulk strings), built as text when it is all ASCII
    (the limiter's commands are: hashes, numbers, names), else byte by byte."""
    text = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    if all(t.isascii() for t in text):
        return (f"*{len(text)}\r\n" + "".join([f"${len(t)}\r\n{t}\r\n" for t in text])).encode()
    out = [b"*%d\r\n" % len(text)]
    for t in text:
        b = t.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytearray, pos: int) -> tuple[Reply | ReplyError, int] | None:
    """One reply from ``buf`` at ``pos``: (it, where the next starts), or None (incomplete)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == 0x3A:                                   # ':' integer
        return int(line), pos
    if kind == 0x24:                                   # '$' bulk string
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            return None
        return bytes(buf[pos:pos + n]), pos + n + 2
    if kind == 0x2A:                                   # '*' array
        n = int(line)
        if n < 0:
            return None, pos
        items: list = []
        for _ in range(n):
            got = parse(buf, pos)
            if got is None:
                return None
            item, pos = got
            items.append(item)
        return items, pos
    if kind == 0x2B:                                   # '+' simple string
        return line, pos
    if kind == 0x2D:                                   # '-' error
        return ReplyError(line.decode(errors="replace")), pos
    raise Unreachable(f"unexpected reply from Redis: {bytes(buf[pos - 2 - len(line) - 1:end])!r}")


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.out: list[bytes] = []
        self.buf = bytearray()
        self.lost: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future:
        fut = self._loop.create_future()
        if self.lost is not None:
            fut.set_exception(Unreachable(str(self.lost)))
            return fut
        if not self.out:
            self._loop.call_soon(self._flush)          # one write per turn of the loop
        self.out.append(command)
        self.waiting.append((fut, time.monotonic() + self.timeout_s))
        if self._timer is None:
            self._timer = self._loop.call_later(self.timeout_s, self._check)
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(out))

    def _check(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        deadline = self.waiting[0][1]
        if time.monotonic() >= deadline:
            self.abort(Unreachable(f"Redis did not answer within {self.timeout_s:g} s"))
        else:
            self._timer = self._loop.call_later(deadline - time.monotonic(), self._check)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while self.waiting:
                got = parse(self.buf, pos)
                if got is None:
                    break
                reply, pos = got
                fut, _ = self.waiting.popleft()
                if fut.done():
                    continue
                if isinstance(reply, ReplyError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except (Unreachable, ValueError) as exc:        # not RESP: nothing more is trusted
            self.abort(exc if isinstance(exc, Unreachable) else Unreachable(f"bad reply: {exc}"))
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(Unreachable(f"Redis closed the connection ({exc or 'EOF'})"))

    def abort(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(Unreachable(str(exc)))
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.abort()


class Script:
    """A Lua script, known to Redis by its SHA-1 once loaded."""
    __slots__ = ("_heads", "sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._heads: dict[tuple[int, int], str] = {}

    def head(self, keys: int, args: int) -> str:
        """What begins its EVALSHA with that many keys and arguments, as RESP text."""
        head = self._heads.get((keys, args))
        if head is None:
            head = self._heads[keys, args] = (
                f"*{3 + keys + args}\r\n$7\r\nEVALSHA\r\n$40\r\n{self.sha}\r\n"
                f"${len(str(keys))}\r\n{keys}\r\n")
        return head


class RespClient:
    """One pipelined connection to the Redis of ``url``, made again when it is lost."""

    def __init__(self, url: str, timeout_s: float) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        self.db = int(u.path.strip("/") or 0)
        self.user = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.tls = ssl.create_default_context() if u.scheme == "rediss" else None
        self.timeout_s = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(self.timeout_s), self.host, self.port, ssl=self.tls),
                self.timeout_s)
        except (TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot connect to {self.host}:{self.port} ({exc or 'timeout'})"
                              ) from exc
        try:
            if self.password is not None:
                await conn.send(pack((b"AUTH", self.user, self.password) if self.user
                                     else (b"AUTH", self.password)))
            if self.db:
                await conn.send(pack((b"SELECT", self.db)))
        except ReplyError as exc:                      # e.g. WRONGPASS (it names no password)
            conn.abort(Unreachable(str(exc)))
            raise Unreachable(f"{self.host}:{self.port} refused the connection: {exc}") from exc
        self._conn = conn
        return conn

    async def call(self, *args: bytes | str | int | float) -> Reply:
        conn = await self._connection()
        return await conn.send(pack(args))

    async def evalsha(self, script: Script, keys: Sequence[str],
                      args: Sequence[str | int | float]) -> Reply:
        conn = await self._connection()
        # the request path's command, as text at once (``pack`` if any of it is not ASCII)
        text = script.head(len(keys), len(args)) + "".join(
            [f"${len(t)}\r\n{t}\r\n" for t in map(str, (*keys, *args))])
        command = text.encode()
        if len(command) != len(text):
            command = pack((b"EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            return await conn.send(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call(b"SCRIPT", b"LOAD", script.text)
        return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort(Unreachable("closed"))
            self._conn = None
