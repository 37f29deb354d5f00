"""What a provider's answer says about where and when to go next: the origin a URL belongs to
(credentials go only to the provider's own), ``Retry-After`` headers and Google's ``"37s"``
retry delays."""
from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import yarl


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``: who may see the provider's credentials."""
    try:
        u = yarl.URL(url)
    except (TypeError, ValueError):
        return ("", "", None)
    return (u.scheme.lower(), (u.host or "").lower(), u.port)


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_DURATION = re.compile(r"^\s*([0-9.]+)s\s*$")


def parse_duration(value: Any) -> float | None:
    """Google's ``"37s"`` / ``"1.2s"`` durations."""
    m = _DURATION.match(str(value or ""))
    return float(m.group(1)) if m else None
