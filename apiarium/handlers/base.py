"""What every handler shares: request ids, JSON errors, client IP, auth, limits, SSE relay.

``BaseHandler`` answers every error as the OpenAI envelope (no traceback ever leaves) and
takes a public route's bucket.  ``ApiHandler`` adds, in ``prepare``: client IP and VPN/proxy
checks, bearer auth, the route's body cap (checked before the body is read) and its bucket,
as the route declares them (``admission``).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import orjson
import tornado.http1connection
import tornado.httputil
import tornado.iostream
import tornado.web

from .. import errors, hosts, logcontext, requestids, sse
from ..catalog import ModelSpec
from ..errors import (
    ApiError,
    AuthError,
    BodyTooLarge,
    RateLimited,
    Unserved,
)
from ..jsonbody import parse_object
from ..live import Services
from ..netguard import Visitor
from ..services.keys import identity_of
from ..storage import KeyRecord
from .admission import ADDRESS, LOOKUPS, REQUESTS, Admission

log = logging.getLogger("apiarium")

_JSON = "application/json"
_WITH_BODY = frozenset(("POST", "PUT", "PATCH"))
_SSE_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
T = TypeVar("T")
_KEY_SHAPE = re.compile(r"^api-[a-z0-9]{16}$")     # an issued key's shape: no master key


class BaseHandler(tornado.web.RequestHandler):
    # Ours live in slots: on top of Tornado's attributes they grew the instance dict into a
    # larger table on every request (~1.5 KB per open stream, scripts/cpu_profile.py memory)
    __slots__ = ("_limit_headers", "_visitor", "bytes_out", "client_ip", "key_record",
                 "model_alias", "peer_trusted", "provider_name", "svc", "upstream_ms")
    admission: ClassVar[dict[str, Admission]] = {}   # per method: admission.admits
    endpoint = "other"            # the metrics label for this handler's requests
    dialect = "openai"            # ... and for the API it speaks (responses, anthropic)
    request_id: str = ""          # set by set_default_headers, which runs before initialize
    client_ip: str
    peer_trusted: bool
    _visitor: Visitor
    key_record: KeyRecord | None
    model_alias: str
    provider_name: str
    upstream_ms: float | None
    bytes_out: int
    _limit_headers: dict[str, str]
    svc: Services

    def initialize(self) -> None:
        self._limit_headers = {}
        self.client_ip, self.peer_trusted, self.key_record = "", False, None
        self.model_alias, self.provider_name, self.upstream_ms = "", "", None
        self.bytes_out = 0
        self.svc = self.application.settings["services"]
        self.svc.inflight.add(self)

    def prepare(self) -> Awaitable[None] | None:
        """A method the route declares nothing for is a 405; a public route takes its
        network's bucket (``security.public_requests_per_minute``)."""
        adm = self.admission.get(self.request.method or "")
        if adm is None:
            raise tornado.web.HTTPError(405)
        if adm.bucket == ADDRESS:
            self.resolve_visitor(check=False)
            self.svc.public.take(self.client_ip, self.svc.settings.public_requests_per_minute)
        return None

    def on_finish(self) -> None:
        self.svc.inflight.discard(self)

    def on_connection_close(self) -> None:
        self.svc.inflight.discard(self)

    def set_default_headers(self) -> None:
        if not self.request_id:
            self.request_id = requestids.next_id()
        self.set_header("x-request-id", self.request_id)
        self.clear_header("Server")

    def write(self, chunk: str | bytes | dict) -> None:
        if isinstance(chunk, (bytes, str)):
            self.bytes_out += len(chunk)
        super().write(chunk)

    def write_json(self, obj: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", _JSON)
        self.finish(orjson.dumps(obj))

    # ------------------------------------------------------------------ errors
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = as_api_error(exc, status_code, self.request)
        if err.status == 500 and not isinstance(exc, ApiError):
            err.message += f" (request id {self.request_id})"
        self.set_status(err.status)
        if err.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        for name, value in {**self._limit_headers, **err.headers}.items():
            self.set_header(name, value)
        self.set_header("Content-Type", _JSON)
        self.finish(orjson.dumps(err.envelope()))

    def allowed_methods(self) -> list[str]:
        base = tornado.web.RequestHandler
        return [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
                if getattr(type(self), m.lower()) is not getattr(base, m.lower())]

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None,
                      tb: TracebackType | None) -> None:
        path = errors.echo(self.request.path, quote=False)     # a client's, cut
        if isinstance(value, ApiError):         # a message may quote the client: one line
            log.info("%s %s -> %d %s: %s", self.request_id, path, value.status, value.code,
                     value.message if value.message.isprintable() else repr(value.message))
        elif isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            log.info("%s %s -> %d", self.request_id, path, value.status_code)
        else:
            log.error("%s unexpected error on %s %s", self.request_id,
                      errors.echo(self.request.method, quote=False), path, exc_info=value)

    # ------------------------------------------------------------------ who is asking
    def resolve_visitor(self, check: bool = True, shows_key: bool = False) -> None:
        """The client IP (through trusted proxies only); on /v1/ and where a key is shown
        (``shows_key``) a 421 for a host not in ``server.allowed_hosts``; ``check``: 403s."""
        guard = self.svc.live.guard
        visitor = self._visitor = guard.visitor(self.request.remote_ip or "",
                                                self.request.headers)
        self.client_ip = visitor.ip
        self.peer_trusted = visitor.peer_trusted
        names = self.svc.settings.allowed_hosts
        if names and (shows_key or self.request.path.startswith("/v1/")):
            hosts.check(self.request_origin()[1], names, self.public_base())
        if check:
            guard.check(visitor, self.request.headers)

    async def issue_key(self) -> tuple[str, KeyRecord]:
        """The visitor's key, as ``/v1/keys/me`` and the homepage hand it out: proxy, VPN
        and blocklist checks (403), then the key service's visit and issuance limits."""
        self.resolve_visitor(shows_key=True)
        try:
            return await self.svc.keys.issue(self.client_ip, self.svc.settings)
        except RateLimited:
            self.svc.metrics.rate_limited.labels("key_issuance").inc()
            raise

    def request_origin(self) -> tuple[str, str]:
        return hosts.origin(self.request.protocol, self.request.host, self.request.headers,
                            self.peer_trusted)

    def public_base(self) -> str:
        """``scheme://host[:port]`` for the homepage and media URLs (``hosts.base_url``):
        ``server.public_url``, else the request's host when allowed, else the first of
        ``server.allowed_hosts``, else the address the request arrived on."""
        s = self.svc.settings
        if s.public_url:
            return s.public_url
        sock = getattr(getattr(self.request.connection, "stream", None), "socket", None)
        name = sock.getsockname() if sock else ("127.0.0.1", 80)
        here = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        return hosts.base_url("", *self.request_origin(), s.allowed_hosts, here)

    def bearer(self) -> str | None:
        """The key sent as ``Authorization: Bearer`` (or, as Anthropic's clients send it,
        ``x-api-key``); "" for a malformed Authorization header, None for none."""
        auth = self.request.headers.get("Authorization")
        if not auth:
            key = self.request.headers.get("x-api-key", "").strip()
            return key or None
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else ""

    def is_master(self, token: str | None) -> bool:
        master = self.svc.settings.master_key
        return bool(token and master and hmac.compare_digest(token.encode(), master.encode()))


def as_api_error(exc: BaseException | None, status: int,
                 request: tornado.httputil.HTTPServerRequest) -> ApiError:
    return errors.for_status(exc, status, request.method or "", request.path)


@tornado.web.stream_request_body
class ApiHandler(BaseHandler):
    """An authenticated /v1 endpoint, admitted as its route declares (``admission``)."""
    __slots__ = ("_cap", "_chunks", "_size", "_started", "_too_large", "_work", "client_gone")
    _cap: int
    client_gone: bool
    _started: float
    _work: asyncio.Future | None

    def initialize(self) -> None:
        super().initialize()
        self.client_gone, self._started, self._work = False, 0.0, None

    def prepare(self) -> Awaitable[None] | None:   # a coroutine only when it must wait
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        token = self.bearer()
        self.resolve_visitor(check=False)
        logcontext.REQUEST_ID.set(self.request_id)
        # a network out of failed guesses gets 429 before the master key is compared
        self.svc.guesses.check(self.client_ip, self.svc.settings.master_key_guesses_per_minute)
        adm = self.admission.get(self.request.method or "")
        if adm is None:
            raise tornado.web.HTTPError(405)
        master = self.is_master(token)
        if not master:
            self.svc.live.guard.check(self._visitor, self.request.headers)
        self._cap = limit = adm.body_cap(self.svc.settings.max_body_bytes)
        length = self.request.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise self._over_limit(int(length))
        if self.request.method in _WITH_BODY:
            # a chunked body has no length: data_received enforces the limit (with a 413)
            conn = self.request.connection
            if isinstance(conn, tornado.http1connection.HTTP1Connection):
                conn.set_max_body_size(limit + 1 if length else 1 << 62)
                if length:   # its deadline is kept by bodies.sweep: no timer (None, as the
                    conn.set_body_timeout(None)  # type: ignore[arg-type]  # params allow)
        if master:
            return None
        rec = self.authenticate(token)
        if rec is None:
            return self._authenticate_late(token or "", adm)   # the one path that waits
        return self._admit(rec, adm)

    async def _authenticate_late(self, token: str, adm: Admission) -> None:
        """A key another process issued a moment ago: read from the database, then checked."""
        await self.svc.keys.load(token)
        rec = self.authenticate(token, unseen_ok=False)
        if rec is not None and (pending := self._admit(rec, adm)) is not None:
            await pending

    def _admit(self, rec: KeyRecord, adm: Admission) -> Awaitable[None] | None:
        """The route's bucket: at once in memory; a shared limiter (Redis) hands back an
        awaitable."""
        self.key_record = rec
        if adm.bucket == LOOKUPS:
            return self.svc.limits.lookup(rec, self.svc.settings)
        if adm.bucket == REQUESTS:
            headers = self.svc.limits.admit(rec, self.endpoint, self.svc.settings)
            if not isinstance(headers, dict):
                return self._admitted(headers)
            self._limit_headers = headers
            for name, value in headers.items():
                self.set_header(name, value)
        return None

    async def _admitted(self, pending: Awaitable[dict[str, str]]) -> None:
        self._limit_headers = headers = await pending
        for name, value in headers.items():
            self.set_header(name, value)

    def authenticate(self, token: str | None, unseen_ok: bool = True) -> KeyRecord | None:
        """The token's key record; None (with ``unseen_ok``) when it is not known here but
        may be a key another process just issued: ask the database (``keys.load``)."""
        if not token:
            raise AuthError("Missing API key. Send it as `Authorization: Bearer <key>`; "
                            "GET /v1/keys/me gives you one.", code="missing_api_key")
        rec = self.svc.keys.verify(token)
        if rec is None:
            if unseen_ok and self.svc.keys.unseen(token, self.client_ip):
                return None
            if not _KEY_SHAPE.match(token):        # a guess at the master key
                self.svc.guesses.fail(self.client_ip,
                                      self.svc.settings.master_key_guesses_per_minute)
            shown = token[:8] + "…" if len(token) > 8 else token
            raise AuthError(f"Invalid API key `{shown}` (unknown or revoked). GET /v1/keys/me "
                            f"gives you your current key.", code="invalid_api_key")
        if rec.ip != self.client_ip and identity_of(rec.ip) != identity_of(self.client_ip):
            raise AuthError(f"This API key belongs to another IP address; keys work only from "
                            f"the IP that created them. GET /v1/keys/me from {self.client_ip} "
                            f"gives you this address's own key.", code="ip_mismatch")
        return rec

    @property
    def key_hash(self) -> str | None:
        """Whose usage this request is (None: the master key's)."""
        return self.key_record.key_hash if self.key_record else None

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """An error answer; a request the gateway could not serve through no fault of the
        caller (``Unserved``: no provider key, an open circuit, a shutdown) gives its token
        back to the key's request bucket."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Unserved) and self.key_record is not None:
            adm = self.admission.get(self.request.method or "")
            if adm is not None and adm.bucket == REQUESTS:
                self.svc.limits.refund(self.key_record, self.endpoint, self.svc.settings)
        super().send_error(status_code, **kwargs)

    # ------------------------------------------------------------------ the body
    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self._cap:
            self._too_large = True
            self._chunks.clear()
            self.send_error(413, exc_info=(BodyTooLarge, self._over_limit(), None))
        else:
            self._chunks.append(chunk)

    def _over_limit(self, size: int | None = None) -> BodyTooLarge:
        cap = self._cap
        if not cap:
            return BodyTooLarge(f"{self.request.method} {self.request.path} takes no request "
                                f"body; send the request without one.")
        where = ("this gateway" if cap == self.svc.settings.max_body_bytes
                 else str(self.request.path))
        if size is None:
            return BodyTooLarge(f"The request body is over the limit of {where}: "
                                f"{cap / 1048576:g} MB.")
        return BodyTooLarge(f"The request body is {size / 1048576:.1f} MB; {where} accepts "
                            f"at most {cap / 1048576:g} MB.")

    def body_overdue(self, limit: float) -> bool:
        """Whether this POST's body, of a known length, is still not whole ``limit`` s on."""
        length = self.request.headers.get("Content-Length", "")
        return (self.request.method in _WITH_BODY and length.isdigit() and not self._too_large
                and self._size < int(length) and self.request.request_time() > limit)

    def raw_body(self) -> bytes:
        if self._too_large:
            raise self._over_limit()
        raw = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []            # handed over once: the caller holds it only as needed
        return raw

    def json_body(self) -> tuple[dict, bytes]:
        raw = self.raw_body()
        return parse_object(raw), raw

    # ------------------------------------------------------------------ upstream work
    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.client_gone = True
        self.interrupt()

    def interrupt(self) -> None:
        """End this request's upstream work now (client gone, or shutdown's grace over)."""
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def _watch(self) -> None:
        """From now on a disconnect (or the end of the shutdown grace) cancels this
        handler's task: a stream is closed, a call not yet answered runs on (services.detached)."""
        self._work = asyncio.current_task()
        if not self._started:                      # TTFB counts from the first upstream call
            self._started = time.perf_counter()

    def _cut_short(self, err: asyncio.CancelledError) -> None:
        """The task was cancelled: if we asked for it (client gone, shutdown), the handler
        goes on to end the request cleanly; any other cancellation propagates."""
        self._work = None
        if not (self.client_gone or self.svc.stopping):
            raise err
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()

    async def guarded(self, work: Awaitable[T]) -> T | None:
        """Await upstream ``work``; None if a disconnect or the shutdown grace cut it short."""
        self._watch()
        try:
            result = await work
        except asyncio.CancelledError as err:
            self._cut_short(err)
            if not self.client_gone:
                self._shutdown_answer()
            return None
        self._work = None
        return result

    def served_by(self, model: ModelSpec) -> None:
        """Name the model that answered (it may be a fallback of the one asked for)."""
        self.provider_name = model.provider.name
        self.set_header("x-apiarium-model", model.alias)
        if self.upstream_ms is None:
            self.upstream_ms = self._observe_ttfb()

    def _observe_ttfb(self) -> float:
        elapsed = time.perf_counter() - self._started
        if self.provider_name:
            self.svc.metrics.upstream_ttfb.labels(self.provider_name).observe(elapsed)
        return elapsed * 1000

    def _shutdown_answer(self) -> None:
        err = Unserved("The gateway is shutting down; retry in a few seconds.",
                       code="server_shutting_down")
        if self._finished:
            return
        if self._headers_written:
            self.write(self.error_frame(err))
            self.finish()
        else:
            self.send_error(503, exc_info=(type(err), err, None))

    def error_frame(self, err: ApiError) -> bytes:
        """How a stream says it failed: OpenAI's ``data: {"error": …}`` (dialects override)."""
        return sse.encode(err.envelope())

    async def translated_chat(self, model: ModelSpec, chat_body: dict, stream: bool,
                              events: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
                              answer: Callable[[dict], object]) -> None:
        """A dialect's request run as the internal chat request: ``events`` turns chat
        frames into the dialect's stream, ``answer`` a ``chat.completion`` into its answer."""
        chat = self.svc.chat
        if stream:
            async def open_stream() -> AsyncIterator[bytes]:
                frames = await chat.stream(model, chat_body, None, self.key_hash)
                self.served_by(frames.served)
                return frames.through(events)
            await self.relay(open_stream)
            return
        answered = await self.guarded(chat.complete(model, chat_body, None, self.key_hash))
        if answered is not None:
            self.served_by(answered[1])
            self.write_json(answer(answered[0]))

    async def relay(self, open_stream: Callable[[], Awaitable[AsyncIterator[bytes]]]) -> None:
        """Open a stream and send its SSE frames as they come, with backpressure.  A failure
        before the first frame is an ordinary JSON error; one after it ends the stream with
        ``error_frame``.  The stream is closed however it ends (a metered stream books its
        usage then)."""
        gauge = self.svc.metrics.active_streams
        gauge.inc()
        self._watch()
        events: AsyncIterator[bytes] | None = None
        try:
            events = await open_stream()
            first = await anext(events, None)
            if self.upstream_ms is None:
                self.upstream_ms = self._observe_ttfb()
            for name, value in _SSE_HEADERS:
                self.set_header(name, value)
            if first is not None:
                self.write(first)
                del first          # not held for the life of the stream
            await self.flush()
            try:
                async for frame in events:
                    self.write(frame)
                    await self.flush()
            except tornado.iostream.StreamClosedError:
                raise
            except ApiError as err:
                log.info("%s stream ended by upstream error: %s", self.request_id, err.message)
                self.write(self.error_frame(err))
            except Exception:
                log.exception("%s unexpected error inside a stream", self.request_id)
                self.write(self.error_frame(ApiError(
                    f"The gateway hit an internal error (request id {self.request_id}).")))
            self._work = None
            self.finish()
        except asyncio.CancelledError as err:
            self._cut_short(err)
            if not self.client_gone:
                self._shutdown_answer()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self._work = None
            gauge.dec()
            if events is not None:
                await events.aclose()  # type: ignore[attr-defined]
