"""What each route lets in: its bucket, its charge, its body cap and the bound on its work.

Every handler class declares, per HTTP method it answers, one ``Admission`` with ``@admits``;
``BaseHandler.prepare`` / ``ApiHandler.prepare`` enforce the bucket and the body cap before a
byte of the body is read, the services hold and book the charge, and the work bound is what
the route's code keeps (it is named here so that every route says what it is).
``check_routes`` refuses, at start, an application with a route whose handler answers a
method it declares nothing for: a new endpoint arrives limited, or the gateway does not start.

The buckets:

* ``REQUESTS``: the key's token bucket (``rate_limit.rpm``, or the key's own), the route's
  per-endpoint bucket (``rate_limit.endpoints``) and the daily-credit check.  Work that
  reaches a model.
* ``LOOKUPS``: the key's lookups bucket (``rate_limit.lookups_per_minute``): authenticated
  reads and calls that do not reach a model, or reach only a free counter.
* ``ISSUANCE``: the visitor's key-issuing visits (``security.key_requests_per_minute`` per
  network, and the new-key caps).
* ``ADDRESS``: the network's bucket of public requests (``security.public_requests_per_minute``
  per IPv4 address or IPv6 /64, counted in each process) for what needs no key.

The master key bypasses ``REQUESTS`` and ``LOOKUPS`` (it is the operator's).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import tornado.web

REQUESTS = "requests"
LOOKUPS = "lookups"
ISSUANCE = "issuance"
ADDRESS = "address"
BUCKETS = (REQUESTS, LOOKUPS, ISSUANCE, ADDRESS)

CREDITS = "credits"       # a hold at the worst case before the upstream call, booked after
FREE = "free"             # nothing is booked (the bucket is the bound)
CHARGES = (CREDITS, FREE)

MAX_BODY = -1             # the body cap is server.max_body_mb
NO_BODY = 0               # no body is read (Tornado's 64 KB bound on what a client sends)
COUNT_TOKENS_BODY = 4 * 1024 * 1024   # /v1/messages/count_tokens (and server.max_body_mb)

CHAT_CALL = ("the chat call on the model and its fallbacks, each within its provider's "
             "timeout_s; output up to the credit hold's max tokens")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class Admission:
    bucket: str
    charge: str
    body: int                 # bytes; MAX_BODY: server.max_body_mb; NO_BODY: none read
    work: str                 # the bound on the work, in words (docs/the OpenAPI text)

    def __post_init__(self) -> None:
        if self.bucket not in BUCKETS or self.charge not in CHARGES or not self.work:
            raise ValueError(f"not an admission: {self!r}")
        if self.charge == CREDITS and self.bucket != REQUESTS:
            raise ValueError("a charged route takes the key's request bucket")

    def body_cap(self, max_body: int) -> int:
        """The most body bytes this route reads, under ``server.max_body_mb`` (``max_body``)."""
        return max_body if self.body == MAX_BODY else min(self.body, max_body)


def request(work: str, body: int = MAX_BODY) -> Admission:
    """A route that reaches a model: the key's buckets and credits."""
    return Admission(REQUESTS, CREDITS, body, work)


def lookup(work: str, body: int = NO_BODY) -> Admission:
    """An authenticated route that does not reach a model (or only a free counter)."""
    return Admission(LOOKUPS, FREE, body, work)


def public(work: str) -> Admission:
    """A route that needs no key: the network's bucket of public requests."""
    return Admission(ADDRESS, FREE, NO_BODY, work)


H = TypeVar("H", bound=type[tornado.web.RequestHandler])


def admits(**per_method: Admission) -> Callable[[H], H]:
    """Declare a handler class's admission for each HTTP method it answers (``GET=…``);
    a subclass declares its own (it does not inherit them)."""
    for method in per_method:
        if method not in METHODS:
            raise ValueError(f"not an HTTP method: {method}")

    def declare(cls: H) -> H:
        cls.admission = dict(per_method)  # type: ignore[attr-defined]
        cls.admission_owner = cls  # type: ignore[attr-defined]
        return cls
    return declare


def answered_methods(cls: type[tornado.web.RequestHandler]) -> list[str]:
    """The HTTP methods ``cls`` answers (it overrides Tornado's 405 default)."""
    base = tornado.web.RequestHandler
    return [m for m in METHODS if m in cls.SUPPORTED_METHODS
            and getattr(cls, m.lower()) is not getattr(base, m.lower())]


def undeclared(handlers: Iterable[type[tornado.web.RequestHandler]]) -> list[str]:
    """``Class METHOD`` of each method a handler answers without declaring its admission."""
    missing = []
    for cls in handlers:
        declared = getattr(cls, "admission", {}) if getattr(
            cls, "admission_owner", None) is cls else {}
        methods = answered_methods(cls)
        if not methods and not declared:          # a handler that answers from prepare
            missing.append(f"{cls.__name__} (any method)")
        missing += [f"{cls.__name__} {m}" for m in methods if m not in declared]
    return missing


def check_routes(handlers: Iterable[type[tornado.web.RequestHandler]]) -> None:
    """Raise if a route's handler answers a method it declares no admission for."""
    missing = undeclared(handlers)
    if missing:
        raise RuntimeError("routes without a declared admission (handlers/admission.py): "
                           + ", ".join(missing))
