"""Range requests on stored media (a video's MP4, a hosted file): which ``Range`` header the
file server is given, and the error for a range outside the file (RFC 9110: an invalid
``Range`` is ignored and the whole file sent; an unsatisfiable one is a 416).

A position is parsed with a bound: one of more than ``MAX_DIGITS`` digits is past the end of
any file, and is read as ``PAST_END`` (never as a Python int of thousands of digits, which
``int()`` refuses past 4,300).  So an absurd last position means the rest of the file (RFC 9110
§14.1.2: a last-pos at or past the end is read as the end; ``bytes=0-<5000 digits>`` is the
whole file), and an absurd first position is past the end: a 416, as any first position past
the end is (§14.1.2, §15.5.17)."""
from __future__ import annotations

import re

from .errors import InvalidRequest

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
MAX_DIGITS = 18                  # 10**18 bytes: an exabyte, past the end of any file
PAST_END = 10 ** MAX_DIGITS - 1


def _position(digits: str) -> int | None:
    digits = digits.lstrip("0") or ("0" if digits else "")
    if not digits:
        return None
    return int(digits) if len(digits) <= MAX_DIGITS else PAST_END


def bounded(spec: str) -> str | None:
    """``spec`` as the file server is given it, if it is one well-formed byte range
    (``first-``, ``first-last``, ``-n``), its positions bounded; None for anything else (to
    be ignored: the whole file is sent)."""
    m = _RANGE.match(spec)
    if m is None:
        return None
    first, last = (_position(g) for g in m.groups())
    if (first is None and last is None) or (first is not None and last is not None
                                            and last < first):
        return None
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


def outside(spec: str) -> InvalidRequest:
    return InvalidRequest(f"The requested range ({spec[:100]}) lies outside the file.",
                          status=416, code="range_not_satisfiable")
