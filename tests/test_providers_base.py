"""The one upstream path (apiarium/providers/base.py), against a tiny aiohttp server on
loopback: the status → error table, transport failures, the event-stream check and relay,
each kind's credential header, and ``auth: none`` (no credential, no provider_not_configured).
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.config import ConfigError, load_config
from apiarium.errors import (
    ApiError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamPassthrough,
    UpstreamTimeout,
)
from apiarium.metrics import Metrics
from apiarium.providers import KINDS
from apiarium.providers.base import Provider
from tests.fakes.base import loopback

KEY = "sk-secret-0123456789"
CREDENTIALS = ("authorization", "x-api-key", "x-goog-api-key")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """A loopback HTTP server answering every request with ``handler``; it records the
    headers of each request in ``seen``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[dict[str, str]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        return await self.handler(request)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstream]:
        async with loopback(self._handle) as self.url:
            yield self


def answer(status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
           ctype: str = "application/json") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body or {})
        return web.Response(status=status, body=raw, headers=headers, content_type=ctype)
    return handler


def events(*frames: bytes, then_wait: float = 0.0) -> Handler:
    """An event stream of ``frames``, then (optionally) a silence before the end."""
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        await asyncio.sleep(then_wait)
        return resp
    return handler


def make(kind: str, base_url: str, session: aiohttp.ClientSession, metrics: Metrics | None = None,
         **spec: Any) -> Provider:
    spec = {"api_key": KEY, **spec}
    return KINDS[kind](ProviderSpec(name="up", kind=kind, base_url=base_url, **spec), session,
                       metrics)


def run(main: Callable[[aiohttp.ClientSession], Awaitable[Any]]) -> Any:
    async def with_session() -> Any:
        async with aiohttp.ClientSession() as session:
            return await main(session)
    return asyncio.run(with_session())


def raised(handler: Handler, kind: str = "openai", **spec: Any) -> ApiError:
    """The ApiError ``call_json`` raises when the upstream answers with ``handler``."""
    async def main(session: aiohttp.ClientSession) -> ApiError:
        async with Upstream(handler).running() as up:
            provider = make(kind, up.url, session, **spec)
            with pytest.raises(ApiError) as exc:
                await provider.call_json("POST", up.url + "/x", json={"q": 1})
            return exc.value
    return run(main)


def oa_error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# ---------------------------------------------------------------------- status → error

@pytest.mark.parametrize("kind, status, body, headers, cls, want_status, code, words", [
    ("openai", 401, oa_error("bad key"), {}, UpstreamError, 502, "upstream_error",
     "providers.up.api_key"),
    ("openai", 403, oa_error("forbidden"), {}, UpstreamError, 502, "upstream_error",
     "refused this gateway's credentials (HTTP 403)."),
    ("openai", 429, oa_error("slow down", "requests"), {"Retry-After": "7"}, RateLimited, 429,
     "upstream_rate_limited", "rate limiting this gateway. Retry in 7 s"),
    ("openai", 429, oa_error("You exceeded your quota", "insufficient_quota",
                             "insufficient_quota"), {}, RateLimited, 429,
     "upstream_rate_limited", "out of quota or credit"),
    ("anthropic", 402, {"type": "error", "error": {"type": "billing_error", "message": "pay"}},
     {}, RateLimited, 429, "upstream_rate_limited", "out of quota or credit"),
    ("gemini", 429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
                               "details": [{"@type": "type.googleapis.com/google.rpc."
                                            "QuotaFailure", "violations": [
                                                {"quotaId": "GenerateRequestsPerDayPerModel"}]}]}},
     {}, RateLimited, 429, "upstream_rate_limited", "out of quota or credit"),
    ("openai", 500, oa_error("boom", "server_error"), {}, UpstreamError, 502, "upstream_error",
     "failed with HTTP 500. Try"),
    ("openai", 503, oa_error("busy", "server_error"), {"Retry-After": "3"}, ServiceUnavailable,
     503, "upstream_overloaded", "is overloaded. Retry"),
    ("anthropic", 529, {"type": "error", "error": {"type": "overloaded_error",
                                                   "message": "Overloaded"}}, {},
     ServiceUnavailable, 503, "upstream_overloaded", "is overloaded. Retry"),
    ("openai", 504, oa_error("gateway timeout", "server_error"), {}, UpstreamTimeout, 504,
     "upstream_timeout", "timed out."),
    ("openai", 400, oa_error("temperature is above 2"), {}, UpstreamPassthrough, 400, None,
     "rejected the request: temperature is above 2"),
    ("openai", 404, oa_error("no such model"), {}, UpstreamPassthrough, 404, "model_not_found",
     "no such model"),
    ("openai", 413, oa_error("too big"), {}, UpstreamPassthrough, 413, "request_too_large",
     "too big"),
    ("openai", 422, b"<html>nope</html>", {}, UpstreamPassthrough, 422, None,
     "rejected the request (HTTP 422)"),
])
def test_error_statuses_are_mapped(kind, status, body, headers, cls, want_status, code, words):
    err = raised(answer(status, body, headers), kind)
    assert type(err) is cls and (err.status, err.code) == (want_status, code)
    assert words in err.message and "`up`" in err.message
    # the upstream's own words only for a 4xx about the request (exposure 13.6)
    for said in ("bad key", "forbidden", "slow down", "exceeded", "pay", "boom", "busy",
                 "Overloaded", "gateway timeout"):
        assert said not in err.message
    if "quota" in words:
        assert err.headers["x-should-retry"] == "false"
    if "Retry-After" in headers:
        assert err.headers["Retry-After"] == headers["Retry-After"]


def test_retry_hints_and_an_echoed_key():
    err = raised(answer(429, {"error": {"code": 429, "message": "later", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}),
        "gemini")
    assert isinstance(err, RateLimited) and err.retry_after == 12
    err = raised(answer(429, oa_error("later"), {"retry-after-ms": "2500"}))
    assert isinstance(err, RateLimited) and err.retry_after == 2.5
    err = raised(answer(400, oa_error(f"Incorrect API key provided: {KEY}")))
    assert KEY not in err.message and "[redacted]" in err.message


def test_an_answer_that_is_not_json_is_502():
    err = raised(answer(200, b"<html>hello</html>", ctype="text/html"))
    assert isinstance(err, UpstreamError) and err.code == "upstream_error"
    assert "not a JSON object" in err.message and "text/html" in err.message


# ---------------------------------------------------------------------- transport

def test_a_refused_port_is_502_unreachable():
    async def main(session: aiohttp.ClientSession) -> ApiError:
        provider = make("openai", f"http://127.0.0.1:{port}", session)
        with pytest.raises(ApiError) as exc:
            await provider.call_json("GET", provider.spec.base_url + "/models")
        return exc.value
    with socket.socket() as sock:                  # bound, never listening: refuses
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        err = run(main)
    assert isinstance(err, UpstreamError) and err.code == "upstream_unreachable"
    assert "Cannot connect to the upstream provider `up`" in err.message


def test_silence_is_504_after_timeout_s_before_and_after_the_headers():
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response({})

    async def call(session: aiohttp.ClientSession) -> tuple[float, ApiError]:
        async with Upstream(slow).running() as up:
            provider = make("openai", up.url, session, timeout_s=0.3)
            started = time.monotonic()
            with pytest.raises(ApiError) as exc:
                await provider.call_json("POST", up.url, json={})
            return time.monotonic() - started, exc.value
    took, err = run(call)
    assert 0.25 < took < 2
    assert isinstance(err, UpstreamTimeout) and err.code == "upstream_timeout"
    assert "did not answer within 0.3 s" in err.message

    async def main(session: aiohttp.ClientSession) -> tuple[list[bytes], ApiError]:
        async with Upstream(events(b"data: 1\n\n", then_wait=1.5)).running() as up:
            provider = make("openai", up.url, session, timeout_s=0.3)
            got = []
            with pytest.raises(ApiError) as exc:
                async with provider.request("POST", up.url) as resp:
                    async for event in provider.sse_events(resp):
                        got.append(event)
            return got, exc.value
    got, err = run(main)
    assert got == [b"data: 1"] and isinstance(err, UpstreamTimeout)


# ---------------------------------------------------------------------- event streams

@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_a_stream_answered_without_an_event_stream_is_502(kind):
    async def main(session: aiohttp.ClientSession) -> ApiError:
        async with Upstream(answer(200, {"not": "a stream"})).running() as up:
            provider = make(kind, up.url, session)
            model = ModelSpec(alias="m", provider=provider.spec, upstream="m")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(ApiError) as exc:
                async for _ in provider.chat_stream(model, body, None):
                    pass
            return exc.value
    err = run(main)
    assert isinstance(err, UpstreamError)
    assert err.message == ("The upstream provider `up` did not answer the stream request with "
                           "an event stream (application/json).")


@pytest.mark.parametrize("kind, frames", [
    ("openai", [(b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[]}'
                b'\n\n')]),
    ("anthropic", [(b'event: message_start\ndata: {"type":"message_start","message":'
                   b'{"usage":{"input_tokens":1}}}\n\n')]),
    ("gemini", [b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}\n\n']),
])
def test_a_stream_that_ends_before_its_terminal_event_is_an_error(kind, frames):
    async def main(session: aiohttp.ClientSession) -> tuple[int, ApiError]:
        async with Upstream(events(*frames)).running() as up:
            provider = make(kind, up.url, session)
            model = ModelSpec(alias="m", provider=provider.spec, upstream="m")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            relayed = 0
            with pytest.raises(ApiError) as exc:
                async for _ in provider.chat_stream(model, body, None):
                    relayed += 1
            return relayed, exc.value
    relayed, err = run(main)
    assert relayed >= 1 and isinstance(err, UpstreamError)
    assert "ended the stream before it was complete" in err.message


def test_events_are_relayed_as_they_arrive_and_closing_closes_the_upstream():
    first_seen = asyncio.Event()
    gone: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: a\r\ndata: 1\r\n\r\ndata: 2\n")   # CRLF, and half an event
        await asyncio.wait_for(first_seen.wait(), 5)   # the client has event 1 already
        await resp.write(b"\ndata: 3\n\n")
        try:
            for _ in range(200):                       # until the client hangs up
                await asyncio.sleep(0.02)
                await resp.write(b": keep-alive\n\n")
        except (ConnectionError, RuntimeError):
            gone.append(time.monotonic())
        return resp

    async def main(session: aiohttp.ClientSession) -> list[bytes]:
        async with Upstream(handler).running() as up:
            provider = make("openai", up.url, session)
            got: list[bytes] = []
            async with provider.request("POST", up.url, json={}) as resp:
                async for event in provider.sse_events(resp):
                    got.append(event)
                    first_seen.set()
                    if len(got) == 3:
                        break                          # the client goes away mid-stream
            closed = time.monotonic()
            for _ in range(100):
                if gone:
                    break
                await asyncio.sleep(0.02)
            assert gone and gone[0] - closed < 1.5
            return got
    assert run(main) == [b"event: a\ndata: 1", b"data: 2", b"data: 3"]


# ---------------------------------------------------------------------- credentials

@pytest.mark.parametrize("kind, credential", [
    ("openai", {"authorization": f"Bearer {KEY}"}),
    ("rag", {"authorization": f"Bearer {KEY}"}),
    ("anthropic", {"x-api-key": KEY, "anthropic-version": "2023-06-01"}),
    ("gemini", {"x-goog-api-key": KEY}),
])
def test_each_kind_sends_its_credential_and_the_configured_headers(kind, credential):
    async def main(session: aiohttp.ClientSession) -> Upstream:
        metrics = Metrics()
        async with Upstream(answer(200, {"ok": True})).running() as up:
            provider = make(kind, up.url, session, metrics,
                            headers={"X-Team": "blue", "Content-Type": "application/json"})
            provider.require_configured()
            assert await provider.call_json("POST", up.url + "/x", json={}) == {"ok": True}
            async with provider.request("GET", up.url + "/elsewhere", auth=False):
                pass
        assert b'apiarium_upstream_latency_seconds_count{provider="up"} 2.0' in metrics.render()
        return up
    first, elsewhere = run(main).seen
    assert {k: first[k] for k in credential} == credential
    assert not set(CREDENTIALS).difference(credential) & set(first)
    assert first["x-team"] == "blue" and first["content-type"] == "application/json"
    assert not set(CREDENTIALS) & set(elsewhere) and "x-team" not in elsewhere


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if k != "demo"))   # it calls nothing
def test_auth_none_sends_no_credential_and_needs_no_key(kind):
    async def main(session: aiohttp.ClientSession) -> dict[str, str]:
        async with Upstream(answer(200, {})).running() as up:
            provider = make(kind, up.url, session, api_key="", auth="none")
            assert provider.spec.configured
            provider.require_configured()                  # no provider_not_configured
            await provider.call_json("POST", up.url + "/x", json={})
            keyless = make(kind, up.url, session, api_key="")
            with pytest.raises(ServiceUnavailable) as exc:
                keyless.require_configured()
            assert exc.value.code == "provider_not_configured"
            assert "providers.up.api_key" in exc.value.message
            return up.seen[0]
    sent = run(main)
    assert not set(CREDENTIALS) & set(sent)
    if kind == "anthropic":
        assert sent["anthropic-version"] == "2023-06-01"      # not a credential


def test_auth_is_checked_in_models_yaml(tmp_path):
    (tmp_path / "apiarium.yaml").write_text("database: db.sqlite3\n")
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"providers": {
        "local": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "auth": "none"}},
        "models": {"llama": {"provider": "local"}}}))
    spec = load_config(tmp_path / "apiarium.yaml").catalog.providers["local"]
    assert (spec.auth, spec.api_key, spec.configured) == ("none", "", True)

    models.write_text("providers:\n"
                      "  a: {kind: openai, auth: bearer}\n"
                      "  b:\n"
                      "    kind: openai\n"
                      "    api_key: sk-1\n"
                      "    auth: none\n"
                      "models: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "apiarium.yaml")
    assert [str(p) for p in exc.value.problems] == [
        f"{models}:2: providers.a.auth: 'bearer' is not one of key, none",
        (f"{models}:5: providers.b.api_key: is set, but auth is none, so it would never be "
        f"sent (remove one of the two)")]
