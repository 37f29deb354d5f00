"""What a log line written below the handlers (a provider, a service) needs to name the
request it belongs to.

``REQUEST_ID`` is set by the handler when a request starts; asyncio gives every task its
own copy of the context, so each request's code (and the tasks it starts) sees its own id.
"""
from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("apiarium_request_id", default="-")
