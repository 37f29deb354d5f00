"""The ``rate_limit`` settings that need more than a type: the per-endpoint limits
(``{videos: "2/hour", …}``), the limiter backend (``memory``, or a Redis URL), and whether
workers may count on ``memory`` (``per_process``)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .yamlschema import Ctx, Problem

LIMITED_ENDPOINTS = ("chat", "completions", "responses", "messages", "images", "videos",
                     "embeddings")
DEFAULT_ENDPOINT_LIMITS = {"videos": "2/hour", "images": "20/hour"}
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
REDIS_SCHEMES = ("redis", "rediss")


def endpoint_limits(given: Mapping[str, str], ctx: Ctx,
                    problems: list[Problem]) -> dict[str, tuple[int, float]]:
    """``rate_limit.endpoints``: ``{videos: "2/hour", …}`` on top of the defaults; ``off``
    (or ``0``) lifts an endpoint's limit."""
    out: dict[str, tuple[int, float]] = {}
    for name, spec in {**DEFAULT_ENDPOINT_LIMITS, **given}.items():
        line = ctx.lines.get(("rate_limit", "endpoints", name), 0)
        if name not in LIMITED_ENDPOINTS:
            problems.append(Problem(str(ctx.file), line, f"rate_limit.endpoints: {name!r} is "
                                    f"not one of {', '.join(LIMITED_ENDPOINTS)}"))
            continue
        if spec.strip() in ("off", "0"):
            continue
        m = _RATE.match(spec)
        if m is None or int(m.group(1)) < 1:
            problems.append(Problem(str(ctx.file), line, f"rate_limit.endpoints.{name}: "
                                    f"{spec!r} is not like '10/hour' (N per second, minute, "
                                    f"hour or day; 'off' for none)"))
            continue
        out[name] = (int(m.group(1)), PERIODS[m.group(2)])
    return out


def redis_url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable ``redis://[:password@]host[:port][/db]`` URL (or
    ``rediss://``, TLS); None when it is.  The message never repeats a password."""
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return "is not a URL like redis://host:6379/0"
    if url.scheme not in REDIS_SCHEMES:
        return "must be `memory` or a redis:// or rediss:// URL (e.g. redis://127.0.0.1:6379/0)"
    if not url.hostname:
        return "names no host (e.g. redis://127.0.0.1:6379/0)"
    if port == 0:
        return "has port 0"
    if url.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", url.path):
        return "has a path that is not a database number (e.g. /0)"
    if url.query or url.fragment:
        return "takes no ?query or #fragment here"
    return None


def limiter_backend(value: str, ctx: Ctx, problems: list[Problem]) -> str:
    """``rate_limit.backend``: ``memory`` (this process) or a Redis URL shared by every
    gateway process."""
    value = value.strip()
    if value == "memory":
        return value
    why = redis_url_problem(value)
    if why is not None:
        problems.append(Problem(str(ctx.file), ctx.lines.get(("rate_limit", "backend"), 0),
                                f"rate_limit.backend: {why}"))
    return value


def memory_workers(workers: int, backend: str, per_process: bool) -> str | None:
    """Why ``workers`` processes may not count their limits on ``backend`` (None: they may):
    on ``memory`` each would count its own buckets and daily credits, so a key would get
    ``workers`` times its allowance, unless ``rate_limit.per_process`` accepts that."""
    if workers <= 1 or backend != "memory" or per_process:
        return None
    return (f"{workers} workers with rate_limit.backend: memory would each count their own "
            f"rate limits and daily credits, so a key would get {workers} times its "
            f"allowance. Set rate_limit.backend to a Redis the workers share (e.g. "
            f"redis://127.0.0.1:6379/0; docs/scaling.md: Limits in Redis), or "
            f"rate_limit.per_process: true to accept limits x {workers}, or run one worker")


def per_process(workers: int, rate_limit: Mapping[str, Any], ctx: Ctx,
                problems: list[Problem]) -> bool:
    """``rate_limit.per_process``; a problem at ``server.workers`` when it is needed and
    false (``memory_workers``)."""
    why = memory_workers(workers, str(rate_limit["backend"]).strip(), rate_limit["per_process"])
    if why:
        problems.append(Problem(str(ctx.file), ctx.lines.get(("server", "workers"), 0),
                                f"server.workers: {why}"))
    return bool(rate_limit["per_process"])


def per_process_warning(workers: int, backend: str, per_process: bool) -> str | None:
    """What a start with ``rate_limit.per_process: true`` warns of (None: nothing)."""
    if workers <= 1 or backend != "memory" or not per_process:
        return None
    return (f"rate_limit.per_process is true: each of the {workers} workers counts its own "
            f"rate limits and daily credits, so a key gets up to {workers} times its "
            f"allowance (rpm, rate_limit.endpoints, daily_credits)")
