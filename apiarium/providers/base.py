"""The Provider interface, and THE upstream path every provider goes through.

A provider turns an OpenAI-shaped request into its upstream's wire format and back:

    async def chat(model, body, raw)        -> dict                 OpenAI ``chat.completion``
    async def chat_stream(model, body, raw) -> AsyncIterator[bytes] (an async generator) SSE
                                               frames of ``chat.completion.chunk``, ending
                                               with ``data: [DONE]``
    async def image(model, ImageRequest)    -> list[Media]          (image models)
    async def video(model, VideoRequest)    -> Media                (video models)
    async def video_job(model, VideoRequest, started) -> Media      the same, telling
                                               ``started(operation)`` the upstream operation
                                               it runs as, once it has one (default: none)
    async def resume_video(operation, VideoRequest) -> Media       wait on an operation
                                               started earlier (a restart); default: refused
    async def embed(model, EmbeddingRequest) -> dict                OpenAI embeddings ``list``
                                               (embedding models), vectors encoded as the
                                               request's ``encoding_format`` asks

Each item a stream yields is exactly one SSE event (``legacy`` and the relay rely on it).
``body`` is the parsed client JSON, ``raw`` its bytes (a passthrough may forward them as they
are).  Failures are raised as ``errors.ApiError``; inside a stream, an error raised after the
first frame becomes an SSE error event (the handler does that).

What a provider module writes is translation only.  The calls themselves go through here:

    request(method, url, data=|json=)  async context manager yielding the aiohttp response;
                                       the one place that maps transport failures (502/504),
                                       error statuses (``map_error``) and times the upstream
    call_json(method, url, data=|json=) ``request`` + the answer as a JSON object
    sse_events(resp)                   the events of an event-stream answer, as they arrive
                                       (a 502 if the answer is not an event stream)
    incomplete()                       the error for a stream that ended before its last event

Headers: every call carries ``self.headers``, built once from ``content-type``, the kind's
``protocol_headers``, its credential (``auth_headers()``, unless the provider says
``auth: none``) and the operator's ``headers`` from models.yaml, in that order (later wins).

A kind is one subclass: ``kind`` (its name in models.yaml), ``owned_by`` (for /v1/models),
``auth_headers``, and the error-reading hooks (``error_message``, ``retry_hint``,
``is_quota``, ``map_error``) where its wire format differs.  ``providers.KINDS`` lists the
built-in ones.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Protocol

import aiohttp
import orjson
import yarl

from .. import logcontext, redact, sse
from ..catalog import ModelSpec, ProviderSpec
from ..embedding import EmbeddingRequest
from ..errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    Unserved,
    UpstreamError,
    UpstreamPassthrough,
    UpstreamTimeout,
)
from ..generation import ImageRequest, Media, VideoRequest
from ..jsonbody import nesting_error
from ..metrics import Metrics
from ..outbound import FetchPolicy, ImageFetcher
from .signatures import Signatures
from .upstream_hints import origin, parse_retry_after

MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5            # followed for GET only; credentials only within base_url's origin
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_ABOUT_REQUEST = frozenset((400, 404, 413, 422))   # statuses whose message a client sees
log = logging.getLogger("apiarium.upstream")


class EventStream(Protocol):
    """What ``chat_stream`` returns: an async generator, or an iterator of that shape that
    must be closed however it ends."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def __anext__(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class Provider:
    """One configured upstream (a ``ProviderSpec``) of one kind, on the shared session."""

    kind: ClassVar[str] = ""
    #: what /v1/models says in ``owned_by`` for this kind's models ("" → the provider's name)
    owned_by: ClassVar[str] = ""
    #: headers every call of this kind carries, whatever its ``auth``
    protocol_headers: ClassVar[Mapping[str, str]] = {}
    #: the vendor's public sites: URLs on them stay in the upstream texts a client sees
    public_hosts: ClassVar[frozenset[str]] = frozenset()
    #: what a prompt-cache write costs by default, x the input price (``Credits``)
    cache_write_factor: ClassVar[float] = 1.0

    def __init__(self, spec: ProviderSpec, session: aiohttp.ClientSession,
                 metrics: Metrics | None = None, fetcher: ImageFetcher | None = None,
                 signatures: Signatures | None = None) -> None:
        self.spec = spec
        self.session = session
        # what upstreams gave with tool calls, by call id: the gateway's one store (it
        # outlives reloads); a provider built alone gets one of its own
        self.signatures = signatures if signatures is not None else Signatures()
        # user-given URLs (Veo's image_url) are fetched through this, never ``session``;
        # without one, nothing is fetched
        self.fetcher = fetcher or ImageFetcher(FetchPolicy(enabled=False))
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=spec.connect_timeout_s,
                                             sock_read=spec.timeout_s)
        self._latency = metrics.upstream_latency.labels(spec.name) if metrics else None
        credential = self.auth_headers() if spec.auth != "none" else {}
        merged = {"content-type": "application/json", **self.protocol_headers, **credential,
                  **spec.headers}
        # header names are case-insensitive: one entry per name, the operator's last
        self.headers: dict[str, str] = {}
        for name, value in merged.items():
            self.headers[name.lower()] = value

    def auth_headers(self) -> dict[str, str]:
        """The credential this kind sends with ``spec.api_key`` (default: a bearer token, as
        OpenAI-compatible servers take it).  Not called for a provider with ``auth: none``."""
        return {"authorization": f"Bearer {self.spec.api_key}"}

    # client dialects this kind can take as they are (the provider then has the dialect's
    # methods, e.g. ``messages`` / ``messages_stream`` / ``count_tokens``)
    native_dialects: ClassVar[frozenset[str]] = frozenset()

    def takes(self, dialect: str) -> bool:
        """Whether this provider takes ``dialect`` as it is (its kind can, and its entry in
        models.yaml does not say otherwise)."""
        return dialect in self.native_dialects

    # ------------------------------------------------------------------ the interface
    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        raise InvalidRequest(f"`{model.alias}` cannot answer chat requests.", param="model")

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> EventStream:
        raise InvalidRequest(f"`{model.alias}` cannot stream chat.", param="model")
        yield b""          # unreachable: makes this an async generator, like the overrides

    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        raise InvalidRequest(f"`{model.alias}` is served by a "
                             f"`{self.kind or self.spec.kind}` provider, which cannot make "
                             f"images.", param="model")

    async def video(self, model: ModelSpec, req: VideoRequest) -> Media:
        raise InvalidRequest(f"`{model.alias}` is served by a "
                             f"`{self.kind or self.spec.kind}` provider, which cannot make "
                             f"videos.", param="model")

    async def video_job(self, model: ModelSpec, req: VideoRequest,
                        started: Callable[[str], Awaitable[None]]) -> Media:
        """``video``, naming the upstream operation to ``started`` if the kind has one (a
        job whose render has an operation is polled again after a restart)."""
        return await self.video(model, req)

    async def resume_video(self, operation: str, req: VideoRequest) -> Media:
        raise UpstreamError(f"The provider `{self.spec.name}` cannot resume a video render "
                            f"started before the gateway restarted.", code="video_not_resumable")

    async def embed(self, model: ModelSpec, req: EmbeddingRequest) -> dict[str, Any]:
        raise InvalidRequest(f"`{model.alias}` is served by a "
                             f"`{self.kind or self.spec.kind}` provider, which cannot make "
                             f"embeddings.", param="model")

    # ------------------------------------------------------------------ the upstream path
    def require_configured(self) -> None:
        """A 503 ``provider_not_configured`` unless the provider can be called: it needs a
        ``base_url``, and an ``api_key`` unless it says ``auth: none``.  The message names
        what to set: the environment variable models.yaml reads it from, if any."""
        spec = self.spec
        hint = spec.setup_hint()
        if not hint:
            return
        missing = [(what, names) for what, value, names in (
            ("base_url", spec.base_url, spec.base_url_vars),
            ("API key", spec.api_key or spec.auth == "none", spec.api_key_vars)) if not value]
        # an environment variable is read at start; models.yaml again on a reload (SIGHUP)
        if any(names for _, names in missing):
            then = "restart the gateway"
        else:
            then = "reload the gateway" + (" (an upstream that takes no key: say `auth: none`)"
                                           if spec.base_url else "")
        raise Unserved(
            f"The provider `{spec.name}` has no "
            f"{' and no '.join(what for what, _ in missing)} configured on this gateway. To use "
            f"it, {hint} and {then}, or start the gateway with --demo.",
            code="provider_not_configured")

    def request(self, method: str, url: str, *, data: bytes | None = None,
                json: Any = None, auth: bool = True,
                timeout: aiohttp.ClientTimeout | None = None,
                extra_headers: Mapping[str, str] | None = None) -> UpstreamCall:
        """One upstream call: ``async with provider.request(...) as resp``.

        ``data`` is the body as bytes, or ``json`` an object to encode; ``extra_headers`` go
        with the provider's (a client's ``anthropic-beta`` flags, say).  The provider's
        headers (its credential among them) go only to ``base_url``'s origin (scheme, host
        and port); ``auth=False`` sends them nowhere (a URL on someone else's server, such
        as an image an upstream links to).  Redirects: a GET follows up to
        ``MAX_REDIRECTS``, and once it leaves the origin it carries none of those headers
        (a Veo video is fetched so); any other method's redirect is a 502, never followed.
        Connection failures and timeouts, also while the body is read inside the block,
        become 502 / 504; an error status is read and raised as ``map_error`` says; the
        time to the answer's headers is observed per provider.
        """
        if json is not None:
            try:
                data = orjson.dumps(json)
            except orjson.JSONEncodeError:     # nested deeper than orjson writes
                raise nesting_error() from None
        if data is not None:
            # orjson leaves ~4 KB allocated behind every result; aiohttp holds the body for
            # as long as the answer streams, so hold an exact-size copy instead
            data = bytes(memoryview(data))
        headers = self.headers if auth else None
        if extra_headers and headers is not None:
            headers = {**headers, **extra_headers}
        return UpstreamCall(self, method, url, data, headers, timeout or self.timeout)

    def at_home(self, url: str) -> bool:
        """Whether ``url`` is on ``base_url``'s origin (scheme, host and port): the only one
        that sees the provider's headers.  A URL under base_url is, without parsing."""
        base = self.spec.base_url
        return bool(base) and (url.startswith(base + "/") or origin(url) == origin(base))

    def redirect_error(self, status: int, target: str) -> UpstreamError:
        """A redirect the upstream path does not follow (logged with its target)."""
        log.info("%s upstream `%s` answered HTTP %d to %s; not followed",
                 logcontext.REQUEST_ID.get(), self.spec.name, status, target[:300] or "nowhere")
        return UpstreamError(f"The upstream provider `{self.spec.name}` answered with a "
                             f"redirect (HTTP {status}), which this gateway does not follow.")

    async def call_json(self, method: str, url: str, *, data: bytes | None = None,
                        json: Any = None) -> dict[str, Any]:
        """``request``, and its answer as a JSON object (a 502 if it is not one)."""
        async with self.request(method, url, data=data, json=json) as resp:
            return await self.read_json(resp)

    async def sse_events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The raw events of an event-stream answer, each as soon as it is complete
        (without its blank-line terminator); a 502 if the answer is not an event stream."""
        self.check_event_stream(resp)
        decoder = sse.SSEDecoder()
        async for chunk in resp.content.iter_any():
            for event in decoder.feed(chunk):
                yield event
        for event in decoder.close():
            yield event

    def check_event_stream(self, resp: aiohttp.ClientResponse) -> None:
        """A 502 unless ``resp`` is an event stream."""
        ctype = resp.headers.get("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` did not answer "
                                f"the stream request with an event stream "
                                f"({ctype or 'no content type'}).")

    def incomplete(self) -> UpstreamError:
        """The error for an upstream stream that ended without its terminal event."""
        return UpstreamError(f"The upstream provider `{self.spec.name}` ended the stream "
                             f"before it was complete.")

    def transport_error(self, exc: BaseException) -> ApiError:
        """The error a client gets when the upstream connection itself failed."""
        name = self.spec.name
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"The upstream provider `{name}` did not answer within "
                                   f"{self.spec.timeout_s:g} s. Try again later.")
        if isinstance(exc, aiohttp.ClientConnectorError):
            why = exc.os_error.strerror or exc.os_error if exc.os_error else exc
            return UpstreamError(f"Cannot connect to the upstream provider `{name}` ({why}). "
                                 f"Try again later.", code="upstream_unreachable")
        return UpstreamError(f"The connection to the upstream provider `{name}` failed "
                             f"({type(exc).__name__}). Try again later.")

    async def read_json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        """The whole answer as a JSON object (a 502 if it is not one)."""
        body = await resp.read()
        obj = json_object(body)
        if obj is None:
            ctype = resp.headers.get("Content-Type") or "no content type"
            raise self.not_json(f"answered with something ({ctype}, {len(body)} bytes)")
        return obj

    def parse_json(self, data: bytes | None, what: str) -> dict[str, Any]:
        """``data`` as a JSON object, or a 502 saying the upstream ``what`` that is not one."""
        obj = json_object(data)
        if obj is None:
            raise self.not_json(what)
        return obj

    def not_json(self, what: str) -> UpstreamError:
        return UpstreamError(f"The upstream provider `{self.spec.name}` {what} that is not a "
                             f"JSON object.")

    # ------------------------------------------------------------------ error mapping
    def error_message(self, data: Any) -> str:
        """The human message inside an upstream error body (override per wire format)."""
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                return str(err.get("message") or err.get("type") or "")[:2000]
            if isinstance(err, str):
                return err[:2000]
        return ""

    def retry_hint(self, resp: aiohttp.ClientResponse, data: Any) -> float | None:
        """Seconds the upstream asked us to wait (headers; providers add body hints)."""
        ms = resp.headers.get("retry-after-ms")
        if ms:
            try:
                return float(ms) / 1000
            except ValueError:
                pass
        return parse_retry_after(resp.headers.get("Retry-After"))

    def is_quota(self, status: int, data: Any) -> bool:
        """Whether the upstream means 'out of quota or credit' rather than 'slow down'."""
        return False

    async def raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        """Read an error answer (at most 64 KB) and raise it as ``map_error`` says."""
        body = await resp.content.read(MAX_ERROR_BODY)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        raise self.map_error(resp.status, data, self.retry_hint(resp, data))

    def map_error(self, status: int, data: Any, retry_after: float | None) -> ApiError:
        """The contract's status table: 401/403 → 502 (the gateway's own key), quota and 429
        → 429 ``upstream_rate_limited``, 503/529 → 503, 504 → 504, other 5xx → 502, other
        4xx passed through with their status.  Only a 4xx about the request itself (400, 404,
        413, 422) keeps the upstream's message, scrubbed of anything shaped like a key or an
        account id and of URLs off ``public_hosts`` (``redact``); every other answer gets
        the gateway's own words, since upstreams write account names, org ids and key tails
        into those.  The upstream's own message is logged (info) with the request id."""
        name = self.spec.name
        said = self.error_message(data).strip().rstrip(".")
        key = self.spec.api_key
        if said:                   # for the operator: org ids and all, but never the key
            log.info("%s upstream `%s` answered HTTP %d: %s", logcontext.REQUEST_ID.get(),
                     name, status, said.replace(key, redact.REDACTED) if key else said)
        if status in (401, 403):
            return UpstreamError(f"The upstream provider `{name}` refused this gateway's "
                                 f"credentials (HTTP {status}). The operator must check "
                                 f"{self.spec.setting('api_key')}.")
        if self.is_quota(status, data):
            return RateLimited(f"The upstream provider `{name}` refused the request: this "
                               f"gateway's account is out of quota or credit (HTTP {status}). "
                               f"Retrying will not help until the operator tops it up.",
                               code="upstream_rate_limited", retry_after=retry_after,
                               headers={"x-should-retry": "false"})
        if status == 429:
            return RateLimited(f"The upstream provider `{name}` is rate limiting this gateway."
                               + (f" Retry in {math.ceil(retry_after)} s." if retry_after
                                  else " Retry in a little while."),
                               code="upstream_rate_limited", retry_after=retry_after)
        if status in (503, 529):
            h = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else {}
            return ServiceUnavailable(f"The upstream provider `{name}` is overloaded. "
                                      f"Retry in a few seconds.", headers=h)
        if status == 504:
            return UpstreamTimeout(f"The upstream provider `{name}` timed out.")
        if status >= 500:
            return UpstreamError(f"The upstream provider `{name}` failed with HTTP {status}. "
                                 f"Try again later.")
        code = {404: "model_not_found", 413: "request_too_large"}.get(status)
        detail = redact.scrub(said, self.spec.api_key, public_hosts=self.public_hosts) \
            if status in _ABOUT_REQUEST else ""
        return UpstreamPassthrough(f"The upstream provider `{name}` rejected the request"
                                   f"{f': {detail}' if detail else f' (HTTP {status})'}.",
                                   status=status, code=code)


def json_object(data: bytes | None) -> dict[str, Any] | None:
    """``data`` parsed, if it is a JSON object (else None)."""
    try:
        obj = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class UpstreamCall:
    """``Provider.request``'s context manager (a class, not a generator: it is on every
    request's path and lives as long as a stream).  Entering sends the request; leaving
    releases every answer it opened, and turns a transport failure (also one raised while
    the body was read inside the block) into the client's 502 / 504."""
    __slots__ = ("data", "headers", "method", "opened", "provider", "timeout", "url")

    def __init__(self, provider: Provider, method: str, url: str, data: bytes | None,
                 headers: Mapping[str, str] | None, timeout: aiohttp.ClientTimeout) -> None:
        self.provider, self.method, self.url, self.data = provider, method, url, data
        self.headers, self.timeout = headers, timeout
        self.opened: list[aiohttp.ClientResponse] = []

    async def __aenter__(self) -> aiohttp.ClientResponse:
        """Send the request, following redirects as ``Provider.request`` says; every answer
        opened is kept in ``opened`` (``__aexit__`` releases them)."""
        p = self.provider
        method, url = self.method, self.url
        started = time.perf_counter()
        credentials = self.headers is not None
        try:
            for hop in range(MAX_REDIRECTS + 1):
                credentials = credentials and p.at_home(url)
                resp = await p.session.request(
                    method, url, data=self.data, allow_redirects=False,
                    headers=self.headers if credentials else None, timeout=self.timeout)
                self.opened.append(resp)
                if resp.status not in _REDIRECTS:
                    break
                target = resp.headers.get("Location", "")
                if method != "GET" or not target or hop == MAX_REDIRECTS:
                    raise p.redirect_error(resp.status, target)
                url = str(resp.url.join(yarl.URL(target)))
                resp.release()
            if p._latency is not None:
                p._latency.observe(time.perf_counter() - started)
            if resp.status >= 400:
                await p.raise_for_status(resp)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, None)
            raise
        return resp

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # an answer read to its end goes back to the pool; one cut short (a client that
        # left) takes its connection down with it, so the upstream sees the hang-up
        opened, self.opened, self.data = self.opened, [], None
        for answer in opened:
            answer.release()
            await answer.wait_for_close()
        if isinstance(exc, (TimeoutError, aiohttp.ClientError, ValueError)):
            raise self.provider.transport_error(exc) from None

