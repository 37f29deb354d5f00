"""Common machinery of the fake upstreams: a real aiohttp server in a daemon thread.

Each fake records every request it receives (``requests``), can be scripted with
one-shot behaviours (``fail_next`` ...) and streams answers split into
``stream_events`` pieces.

Conventions shared by all fakes (tests rely on them):

* Answer text: ``reply_text`` if set, else ``"echo: <last user text>"``.
* Pieces: ``split_pieces(text, n)`` cuts the text into exactly ``n`` pieces of
  nearly equal length (no piece is empty). A text shorter than ``n`` characters
  gives one piece per character (so fewer than ``n`` pieces); an empty text
  gives one empty piece. ``"".join(pieces) == text`` always.
* Usage: prompt tokens = whitespace-separated words in all message texts
  (system included, tool results included, media and tool-call arguments not);
  completion tokens = words in the answer text plus words in the tool-call
  arguments string when a tool call is answered.
* Output limits: with ``obey_output_limit`` set, an OpenAI chat answer stops after as many
  words as the request's ``max_completion_tokens`` (else ``max_tokens``) allows, with
  ``finish_reason: length``, as the vendors' models stop; unset, the limit is not looked at.
* Streaming "events" are SSE frames of any kind (role chunk, ping, [DONE] ...):
  ``die_mid_stream_next(k)`` sends the first ``k`` frames, then aborts.
* Embeddings: ``embedding_vector(text, dims)``, numbers drawn from a generator seeded with
  the text's SHA-256 and scaled to length 1, so a test can check each output vector against
  its own input (and so the order).  A token array embeds as the text ``tokens:1,2,3``.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import orjson
from aiohttp import web

# aiohttp's ClientConnectionResetError is a ConnectionResetError
_WRITE_ERRORS = (ConnectionError, RuntimeError)


def _key(name: str):
    """Typed request-storage key where aiohttp has them (avoids NotAppKeyWarning)."""
    return web.RequestKey(name, object) if hasattr(web, "RequestKey") else name


JSON, BEHAVIOUR, DISCONNECTED = _key("fake_json"), _key("fake_behaviour"), _key("fake_gone")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    json: object
    at: float


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


def _loads(body: bytes):
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def sse_data(obj) -> bytes:
    """One ``data: {json}`` frame (OpenAI / Gemini framing)."""
    return b"data: " + dumps(obj) + b"\n\n"


def sse_event(name: str, obj) -> bytes:
    """One named frame (Anthropic framing)."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def words(text: str | None) -> int:
    return len(text.split()) if text else 0


def embedding_vector(text: str, dims: int) -> list[float]:
    """The fakes' full-size embedding of ``text`` (see module doc)."""
    rng = random.Random(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def split_pieces(text: str, n: int) -> list[str]:
    """Split ``text`` into ``n`` nearly equal, non-empty pieces (see module doc)."""
    n = max(1, int(n))
    if not text:
        return [""]
    if len(text) <= n:
        return list(text)
    q, r = divmod(len(text), n)
    out, pos = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(text[pos:pos + size])
        pos += size
    return out


class FakeUpstream:
    """Base class. Subclasses set ``default_api_key`` and implement ``routes(app)``."""

    default_api_key = "fake-key"

    def __init__(self, api_key: str | None = None):
        self.api_key = self.default_api_key if api_key is None else api_key
        self.port = 0
        self.requests: list[Recorded] = []
        self.disconnects: list[float] = []
        self.stream_events = 5
        self.stream_delay = 0.0
        self.obey_output_limit = False
        self.reply_text: str | None = None
        self.reply_tool_call: dict | None = None
        self._lock = threading.Lock()
        self._script: list[dict] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------
    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root

    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # the knobs tests turn; ``reset`` puts back the values they had when the fake started
    KNOBS = ("stream_events", "stream_delay", "obey_output_limit", "reply_text", "reply_tool_call",
             "veo_polls_until_done", "sources", "image_in_words", "embedding_dims",
             "embed_delay", "embed_peak", "cached_tokens", "thought_text", "hosted_calls",
             "server_tools", "usage_tier")

    def reset(self) -> FakeUpstream:
        """Forget requests and scripts, and restore every knob: a clean fake for the next
        test, without the cost of a new server."""
        self.clear()
        for name, value in self._defaults.items():
            setattr(self, name, copy.deepcopy(value))
        return self

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        self._defaults = {k: copy.deepcopy(getattr(self, k)) for k in self.KNOBS
                          if hasattr(self, k)}
        ready, errors = threading.Event(), []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # report to start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            pending = asyncio.all_tasks(loop)  # e.g. a handler still in hang_next
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread = None
            raise errors[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 ** 2)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- recording -------------------------------------------------------
    def last(self) -> Recorded:
        with self._lock:
            if not self.requests:
                raise AssertionError(f"{type(self).__name__} received no request")
            return self.requests[-1]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.disconnects.clear()
            self._script.clear()

    def _note_disconnect(self, request: web.Request) -> None:
        if not request.get(DISCONNECTED):
            request[DISCONNECTED] = True
            with self._lock:
                self.disconnects.append(time.monotonic())

    # ---- scripting -------------------------------------------------------
    def _push(self, path_contains: str | None, **behaviour) -> None:
        behaviour["path_contains"] = path_contains
        with self._lock:
            self._script.append(behaviour)

    def _take(self, path_qs: str) -> dict | None:
        with self._lock:
            for i, b in enumerate(self._script):
                if b["path_contains"] is None or b["path_contains"] in path_qs:
                    return self._script.pop(i)
        return None

    def fail_next(self, status: int, body, headers: dict | None = None,
                  path_contains: str | None = None) -> None:
        """Next matching request gets ``status`` with ``body`` (dict -> JSON)."""
        self._push(path_contains, kind="fail", status=status, body=body, headers=headers)

    def hang_next(self, seconds: float, path_contains: str | None = None) -> None:
        """Next matching request: send nothing for ``seconds``, then answer normally."""
        self._push(path_contains, kind="hang", seconds=seconds)

    def scripted(self) -> int:
        """How many scripted behaviours still wait for their request."""
        with self._lock:
            return len(self._script)

    def garbage_next(self, status: int = 200, path_contains: str | None = None) -> None:
        """Next matching request gets ``b"<html>not json"`` as text/html."""
        self._push(path_contains, kind="garbage", status=status)

    def tool_call_next(self, name: str, arguments: str, path_contains: str | None = None) -> None:
        """Next matching request that declares tools is answered with a call of ``name`` with
        ``arguments`` (a JSON string), as ``reply_tool_call`` would, once; later requests get
        text again (an agent's tool round trip: the call, then the answer to its result).
        A matching request without tools consumes it and gets text."""
        self._push(path_contains, kind="tool", tool={"name": name, "arguments": arguments})

    def tool_for(self, request: web.Request, body: dict) -> dict | None:
        """The tool call this request is answered with: a ``tool_call_next`` taken by it, else
        ``reply_tool_call``; none when the request declares no tools."""
        b = request.get(BEHAVIOUR)
        tool = b["tool"] if b and b["kind"] == "tool" else self.reply_tool_call
        return tool if body.get("tools") and tool else None

    def die_mid_stream_next(self, after_events: int, path_contains: str | None = None) -> None:
        """Next stream: send ``after_events`` frames, then abort the TCP connection.

        A non-streaming request that takes it gets its connection aborted with no response.
        """
        self._push(path_contains, kind="die", after=after_events)

    # ---- plumbing for subclasses -----------------------------------------
    def answer_for(self, last_user_text: str) -> str:
        return self.reply_text if self.reply_text is not None else f"echo: {last_user_text}"

    def within_limit(self, text: str, limit: object) -> tuple[str, bool]:
        """``text`` cut to ``limit`` words when ``obey_output_limit`` says so: (the text,
        whether it was cut)."""
        if not self.obey_output_limit or not isinstance(limit, int) or words(text) <= limit:
            return text, False
        return " ".join(text.split()[:limit]), True

    @staticmethod
    def json_response(obj, status: int = 200, headers: dict | None = None) -> web.Response:
        return web.Response(status=status, body=dumps(obj), headers=headers,
                            content_type="application/json")

    def _scripted_response(self, b: dict) -> web.Response:
        """dict/list body -> JSON; str/bytes sent as-is (JSON content-type if it parses)."""
        body, headers = b["body"], dict(b["headers"] or {})
        body = dumps(body) if isinstance(body, (dict, list)) else body
        body = body.encode() if isinstance(body, str) else bytes(body)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ("text/plain" if _loads(body) is None
                                       else "application/json")
        return web.Response(status=b["status"], body=body, headers=headers)

    def mid_stream_fallback(self, b: dict) -> web.StreamResponse | None:
        """Response for a non-stream request that consumed an ``error`` mid-stream behaviour."""
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        body = await request.read()
        parsed = _loads(body)
        request[JSON] = parsed
        rec = Recorded(request.method, request.path, dict(request.query),
                       {k.lower(): v for k, v in request.headers.items()},
                       body, parsed, time.monotonic())
        with self._lock:
            self.requests.append(rec)
        b = self._take(request.path_qs)
        kind = b["kind"] if b else None
        request[BEHAVIOUR] = b
        if kind == "fail":
            return self._scripted_response(b)
        if kind == "garbage":
            return web.Response(status=b["status"], body=b"<html>not json",
                                content_type="text/html")
        if kind == "hang":
            await asyncio.sleep(b["seconds"])
        resp = await handler(request)
        if kind in ("die", "error") and not b.get("used"):
            if kind == "error":
                fallback = self.mid_stream_fallback(b)
                if fallback is not None:
                    return fallback
            if request.transport is not None:
                request.transport.abort()
        return resp

    async def stream(self, request: web.Request, frames: list[bytes],
                     content_type: str = "text/event-stream",
                     headers: dict | None = None) -> web.StreamResponse:
        """Send ``frames`` one by one, honouring stream_delay, mid-stream scripting
        and client disconnects."""
        b = request.get(BEHAVIOUR)
        mid = b if b and b["kind"] in ("die", "error") else None
        if mid:
            mid["used"] = True
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                       "Cache-Control": "no-cache",
                                                       **(headers or {})})
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if mid and i == mid["after"]:
                return await self._end_mid(request, resp, mid)
            if i and self.stream_delay:
                await asyncio.sleep(self.stream_delay)
            if not await self._write(request, resp, frame):
                return resp
        if mid:
            return await self._end_mid(request, resp, mid)
        await self._eof(request, resp)
        return resp

    async def _eof(self, request: web.Request, resp: web.StreamResponse) -> None:
        try:
            await resp.write_eof()
        except _WRITE_ERRORS:
            self._note_disconnect(request)

    async def _write(self, request: web.Request, resp: web.StreamResponse, data: bytes) -> bool:
        transport = request.transport
        if transport is None or transport.is_closing():
            self._note_disconnect(request)
            return False
        try:
            await resp.write(data)
        except _WRITE_ERRORS:
            self._note_disconnect(request)
            return False
        return True

    async def _end_mid(self, request, resp, mid) -> web.StreamResponse:
        if mid["kind"] == "die":
            if request.transport is not None:
                request.transport.abort()
            return resp
        if await self._write(request, resp, mid["frame"]):
            await self._eof(request, resp)
        return resp


@asynccontextmanager
async def loopback(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> AsyncIterator[str]:
    """A throwaway aiohttp server on 127.0.0.1 in the caller's loop, sending every request to
    ``handle``: its base URL, for the length of the block."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)   # a held request does not delay the end
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
