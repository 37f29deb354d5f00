"""Range requests on stored media (a video's MP4, a hosted file): which ``Range`` headers the
file server is given, and the error for a range outside the file (RFC 9110: an invalid
``Range`` is ignored and the whole file sent; an unsatisfiable one is a 416)."""
from __future__ import annotations

import re

from .errors import InvalidRequest

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def usable(spec: str) -> bool:
    """Whether ``spec`` is one well-formed byte range (``first-``, ``first-last``, ``-n``)."""
    m = _RANGE.match(spec)
    first, last = m.groups() if m else ("", "")
    return bool(first or last) and not (first and last and int(last) < int(first))


def outside(spec: str) -> InvalidRequest:
    return InvalidRequest(f"The requested range ({spec[:100]}) lies outside the file.",
                          status=416, code="range_not_satisfiable")
