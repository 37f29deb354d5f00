"""Every error the gateway can answer with, as one tree.

Each class fixes the HTTP status and the OpenAI ``type``; ``code`` and ``param`` vary per
raise.  ``ApiError.envelope()`` is the body every client sees:
``{"error": {"message", "type", "param", "code"}}``.

    ApiError                          500 server_error          internal_error
    ├── InvalidRequest                400 invalid_request_error invalid_request, <field>_invalid, …
    │   └── NoOutput                  400 invalid_request_error upstream_no_output
    ├── AuthError                     401 authentication_error  missing_api_key, invalid_api_key,
    │                                                           ip_mismatch
    ├── Forbidden                     403 permission_error      vpn_detected
    ├── NotFound                      404 invalid_request_error model_not_found, not_found
    ├── MethodNotAllowed              405 invalid_request_error method_not_allowed
    ├── BodyTooLarge                  413 invalid_request_error body_too_large
    ├── Misdirected                   421 invalid_request_error misdirected_request
    ├── RateLimited                   429 rate_limit_error      rate_limit_exceeded,
    │   │                                                       upstream_rate_limited
    │   └── QuotaExceeded             429 insufficient_quota    insufficient_quota
    ├── storage.StorageUnavailable    503 server_error          storage_unavailable (the database)
    ├── LimiterUnavailable            503 server_error          rate_limiter_unavailable (Redis)
    └── UpstreamFailure               (the upstream did not give a usable answer)
        ├── UpstreamError             502 upstream_error        upstream_unreachable, upstream_error
        ├── UpstreamPassthrough       4xx as the upstream said  (its own message, about the request)
        ├── ServiceUnavailable        503 server_error          upstream_overloaded
        │   └── Unserved              503 server_error          provider_not_configured,
        │                                                       upstream_cooling_down,
        │                                                       server_shutting_down
        └── UpstreamTimeout           504 server_error          upstream_timeout

Domain code raises these; only ``handlers/`` turns them into HTTP responses.  A value a
client sent is quoted in a message (or a log line) through ``echo``: at most ``ECHO_CHARS``
characters of it, so a 20 MB field is never answered or logged whole.
"""
from __future__ import annotations

import math
import reprlib
from http import HTTPStatus
from typing import Any

ECHO_CHARS = 200


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = shown.maxlong = ECHO_CHARS
    shown.maxlevel, shown.maxdict, shown.maxlist, shown.maxtuple = 3, 8, 8, 8
    shown.maxset = shown.maxfrozenset = shown.maxdeque = shown.maxarray = 8
    return shown


_SHOWN = _bounded_repr()          # configured once, never changed


def echo(value: object, quote: bool = True) -> str:
    """``value``, a client's, as a message or a log line quotes it: its ``repr()`` (with
    ``quote``; a str as it is without), at most ``ECHO_CHARS`` characters of it, and when
    cut, "…" and the length of a str.  A long str is cut before it is rendered, any other
    value rendered by a bounded ``reprlib``, so quoting a huge value costs no more than a
    short one."""
    if isinstance(value, str):
        head = value[:ECHO_CHARS]
        text = repr(head) if quote else head
        cut = len(value) > ECHO_CHARS
    else:
        text, cut = _SHOWN.repr(value), False
    if len(text) > ECHO_CHARS:
        text, cut = text[:ECHO_CHARS], True
    if not cut:
        return text
    return f"{text}… ({len(value):,} characters)" if isinstance(value, str) else f"{text}…"


class ApiError(Exception):
    status = 500
    type = "server_error"
    default_code: str | None = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class NoOutput(InvalidRequest):
    """The upstream answered but made nothing (an image model that answered in words, a
    video operation with no video): the request's own outcome, not the provider's fault, so it
    never counts against the provider's circuit breaker."""
    default_code = "upstream_no_output"


class AuthError(ApiError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    default_code = "vpn_detected"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class BodyTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    default_code = "body_too_large"


class Misdirected(ApiError):
    """A Host this gateway does not answer to (``server.allowed_hosts``)."""
    status = 421
    type = "invalid_request_error"
    default_code = "misdirected_request"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, **kw: Any):
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class LimiterUnavailable(ApiError):
    """The shared rate limiter (Redis) cannot be reached and ``rate_limit.on_backend_down``
    is ``closed``: no request is let through uncounted."""
    status = 503
    type = "server_error"
    default_code = "rate_limiter_unavailable"

    def __init__(self, retry_after: float = 1.0) -> None:
        super().__init__("The gateway cannot check its rate limits right now (its limiter "
                         "store is unreachable), so it is not taking requests. Retry in a "
                         "few seconds.",
                         headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class UpstreamFailure(ApiError):
    """The upstream did not give a usable answer (base of the 5xx/passthrough family)."""


class UpstreamError(UpstreamFailure):
    status = 502
    type = "server_error"
    default_code = "upstream_error"


class UpstreamPassthrough(UpstreamFailure):
    """An upstream 4xx about the request itself: its status and message reach the client."""
    type = "invalid_request_error"
    default_code = None


class ServiceUnavailable(UpstreamFailure):
    status = 503
    type = "server_error"
    default_code = "upstream_overloaded"


class Unserved(ServiceUnavailable):
    """The gateway could not serve the request through no fault of the caller, before any
    upstream work: the provider has no key here, its circuit is open, the gateway is
    shutting down.  Such a request is not counted against the key's rpm or credits."""


class UpstreamTimeout(UpstreamFailure):
    status = 504
    type = "server_error"
    default_code = "upstream_timeout"


def for_status(exc: BaseException | None, status: int, method: str, path: str) -> ApiError:
    """The error a client sees for ``exc`` (an ``ApiError`` stays itself) or, for what the
    web framework raised on its own, for the bare ``status`` of ``method path``."""
    if isinstance(exc, ApiError):
        return exc
    method, path = echo(method, quote=False), echo(path, quote=False)
    if status == 404:
        return NotFound(f"Unknown path {method} {path}. The API lives under /v1 (see GET "
                        f"/openapi.json).")
    if status == 405:
        return MethodNotAllowed(f"{method} is not allowed on {path}.")
    if status == 413:
        return BodyTooLarge("The request body is too large.")
    if 400 <= status < 500:
        reason = getattr(exc, "log_message", None)
        if reason:
            reason = echo(reason, quote=False)
        else:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
        return InvalidRequest(f"Bad request: {reason}.", status=status)
    return ApiError("The gateway hit an internal error; the operator can find it in the log")
