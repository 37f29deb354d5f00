"""The Provider interface, and what every provider shares: timeouts, error mapping, streams.

A provider turns an OpenAI-shaped request into its upstream's wire format and back:

    chat(model, body, raw)         -> dict                OpenAI ``chat.completion``
    chat_stream(model, body, raw)  -> AsyncIterator[bytes] SSE frames of ``chat.completion.chunk``,
                                                          ending with ``data: [DONE]``
    image(model, ImageRequest)     -> list[Media]         (image models)
    video(model, VideoRequest)     -> Media               (video models)

Each item a stream yields is exactly one SSE event (``legacy`` and the relay rely on it).
``body`` is the parsed client JSON, ``raw`` its bytes (a passthrough may forward them as they
are).  Failures are raised as ``errors.ApiError``; inside a stream, an error raised after the
first frame becomes an SSE error event (the handler does that).
"""
from __future__ import annotations

import math
import re
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import aiohttp
import orjson

from ..catalog import ModelSpec, ProviderSpec
from ..generation import ImageRequest, Media, VideoRequest
from ..metrics import Metrics
from ..errors import (ApiError, InvalidRequest, RateLimited, ServiceUnavailable, UpstreamError,
                      UpstreamPassthrough, UpstreamTimeout)

MAX_ERROR_BODY = 64 * 1024


class Provider:
    kind = ""

    def __init__(self, spec: ProviderSpec, session: aiohttp.ClientSession,
                 metrics: Metrics | None = None):
        self.spec = spec
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=spec.connect_timeout_s,
                                             sock_read=spec.timeout_s)
        self._latency = metrics.upstream_latency.labels(spec.name) if metrics else None

    # ------------------------------------------------------------------ the interface
    async def chat(self, model: ModelSpec, body: dict, raw: bytes | None) -> dict:
        raise InvalidRequest(f"`{model.alias}` cannot answer chat requests.", param="model")

    def chat_stream(self, model: ModelSpec, body: dict, raw: bytes | None) -> AsyncIterator[bytes]:
        raise InvalidRequest(f"`{model.alias}` cannot stream chat.", param="model")

    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        raise InvalidRequest(f"`{model.alias}` is served by a `{self.kind}` provider, which "
                             f"cannot make images.", param="model")

    async def video(self, model: ModelSpec, req: VideoRequest) -> Media:
        raise InvalidRequest(f"`{model.alias}` is served by a `{self.kind}` provider, which "
                             f"cannot make videos.", param="model")

    # ------------------------------------------------------------------ shared plumbing
    def require_configured(self) -> None:
        if not self.spec.base_url:
            raise ServiceUnavailable(
                f"The provider `{self.spec.name}` has no base_url configured on this gateway; "
                f"the operator must set providers.{self.spec.name}.base_url in models.yaml.",
                code="provider_not_configured")
        if not self.spec.api_key:
            raise ServiceUnavailable(
                f"The provider `{self.spec.name}` has no API key configured on this gateway; "
                f"the operator must set providers.{self.spec.name}.api_key in models.yaml "
                f"(usually through an environment variable) and reload.",
                code="provider_not_configured")

    @asynccontextmanager
    async def request(self, method: str, url: str, *, data: bytes | None = None,
                      headers: dict | None = None, timeout: aiohttp.ClientTimeout | None = None,
                      **kw):
        """An upstream call with transport failures mapped to 502/504, error statuses mapped."""
        if data is not None:
            # orjson leaves ~4 KB allocated behind every result; aiohttp holds the body for
            # as long as the answer streams, so hold an exact-size copy instead
            data = bytes(memoryview(data))
        started = time.perf_counter()
        try:
            async with self.session.request(method, url, data=data, headers=headers,
                                            timeout=timeout or self.timeout, **kw) as resp:
                if self._latency is not None:
                    self._latency.observe(time.perf_counter() - started)
                if resp.status >= 400:
                    await self.raise_for_status(resp)
                yield resp
        except ApiError:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise self.transport_error(exc) from None

    async def fetch_json(self, method: str, url: str, *, data: bytes | None = None,
                         headers: dict | None = None,
                         then: Callable[[dict], dict] | None = None) -> dict:
        """``request`` + ``read_json`` in one coroutine: the lean path of a JSON answer
        (``then``, if given, checks and shapes the answer)."""
        started = time.perf_counter()
        try:
            async with self.session.request(method, url, data=data, headers=headers,
                                            timeout=self.timeout) as resp:
                if self._latency is not None:
                    self._latency.observe(time.perf_counter() - started)
                if resp.status >= 400:
                    await self.raise_for_status(resp)
                body = await resp.read()
        except ApiError:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise self.transport_error(exc) from None
        data = self.answer_json(body, resp.headers.get("Content-Type"))
        return then(data) if then else data

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

    async def read_json(self, resp: aiohttp.ClientResponse) -> dict:
        return self.answer_json(await resp.read(), resp.headers.get("Content-Type"))

    def answer_json(self, body: bytes, ctype: str | None) -> dict:
        return self.parse_json(body, f"answered with something ({ctype or 'no content type'}, "
                                     f"{len(body)} bytes)")

    def parse_json(self, data: bytes | None, what: str) -> dict:
        """``data`` as a JSON object, or a 502 saying the upstream ``what`` that is not one."""
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` {what} that is not "
                                f"a JSON object.")
        return obj

    # ------------------------------------------------------------------ error mapping
    def error_message(self, data) -> str:
        """The human message inside an upstream error body (override per wire format)."""
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                return str(err.get("message") or err.get("type") or "")[:2000]
            if isinstance(err, str):
                return err[:2000]
        return ""

    def retry_hint(self, resp: aiohttp.ClientResponse, data) -> float | None:
        """Seconds the upstream asked us to wait (headers; providers add body hints)."""
        ms = resp.headers.get("retry-after-ms")
        if ms:
            try:
                return float(ms) / 1000
            except ValueError:
                pass
        return parse_retry_after(resp.headers.get("Retry-After"))

    def is_quota(self, status: int, data) -> bool:
        """Whether the upstream means 'out of quota or credit' rather than 'slow down'."""
        return False

    async def raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        body = await resp.content.read(MAX_ERROR_BODY)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        raise self.map_error(resp.status, data, self.retry_hint(resp, data))

    def map_error(self, status: int, data, retry_after: float | None) -> ApiError:
        name = self.spec.name
        said = self.error_message(data).strip().rstrip(".")
        key = self.spec.api_key
        if key and len(key) >= 4:                    # an upstream may echo the key back
            said = said.replace(key, "[redacted]")
        detail = f": {said}" if said else ""
        if status in (401, 403):
            return UpstreamError(f"The upstream provider `{name}` refused this gateway's "
                                 f"credentials (HTTP {status}){detail}. The operator must check "
                                 f"providers.{name}.api_key.")
        if self.is_quota(status, data):
            return RateLimited(f"The upstream provider `{name}` refused the request: this "
                               f"gateway's account is out of quota or credit (HTTP {status}"
                               f"{detail}). Retrying will not help until the operator tops it "
                               f"up.", code="upstream_rate_limited", retry_after=retry_after,
                               headers={"x-should-retry": "false"})
        if status == 429:
            return RateLimited(f"The upstream provider `{name}` is rate limiting this gateway"
                               f"{detail}." + (f" Retry in {math.ceil(retry_after)} s."
                                               if retry_after else ""),
                               code="upstream_rate_limited", retry_after=retry_after)
        if status in (503, 529):
            h = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else {}
            return ServiceUnavailable(f"The upstream provider `{name}` is overloaded{detail}. "
                                      f"Retry in a few seconds.", headers=h)
        if status == 504:
            return UpstreamTimeout(f"The upstream provider `{name}` timed out{detail}.")
        if status >= 500:
            return UpstreamError(f"The upstream provider `{name}` failed with HTTP {status}"
                                 f"{detail}. Try again later.")
        code = {404: "model_not_found", 413: "request_too_large"}.get(status)
        return UpstreamPassthrough(f"The upstream provider `{name}` rejected the request"
                                   f"{detail or f' (HTTP {status})'}.", status=status, code=code)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_DURATION = re.compile(r"^\s*([0-9.]+)s\s*$")


def parse_duration(value) -> float | None:
    """Google's ``"37s"`` / ``"1.2s"`` durations."""
    m = _DURATION.match(str(value or ""))
    return float(m.group(1)) if m else None
