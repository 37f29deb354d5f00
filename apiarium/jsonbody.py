"""A client's JSON body, parsed with the limits the rest of the gateway relies on.

orjson reads JSON nested up to 1024 levels deep but writes at most 254: a body nested
deeper than that would parse, then fail (a 500) wherever the gateway re-encodes it: a
provider translating it, a dialect echoing a field back.  So a body may nest at most
``MAX_DEPTH`` levels (the object itself is the first), which leaves ample room for the
levels a translation adds; deeper is a 400 naming the limit.

The check costs nothing for ordinary bodies: a body with fewer than ``MAX_DEPTH`` brackets
cannot be nested that deep.  Only a body with more is measured, by orjson itself: encoding
it inside ``254 - MAX_DEPTH`` levels of lists fails exactly when it is nested deeper than
``MAX_DEPTH`` (C speed, no walk in Python).
"""
from __future__ import annotations

from typing import Any

import orjson

from .errors import InvalidRequest

ENCODE_DEPTH = 254            # the deepest nesting orjson.dumps writes
MAX_DEPTH = 128


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``obj`` (parsed JSON) nests more than ``limit`` levels deep."""
    wrapped = obj
    for _ in range(ENCODE_DEPTH - limit):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False


def parse_object(raw: bytes) -> dict:
    """``raw`` as a JSON object, or a 400 ``invalid_json`` saying what is wrong with it."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.",
                             code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc.msg} at byte "
                             f"{exc.pos}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body):
        raise InvalidRequest(f"The request body nests JSON more than {MAX_DEPTH} levels deep; "
                             f"this gateway accepts at most {MAX_DEPTH}.", code="invalid_json")
    return body


def nesting_error() -> InvalidRequest:
    """The 400 for a request that became too deep to encode on its way upstream (a tool
    call's ``arguments`` string, decoded, can nest deeper than the body itself)."""
    return InvalidRequest(f"The request nests JSON too deeply to be sent on (a tool call's "
                          f"arguments, perhaps); this gateway accepts at most {MAX_DEPTH} "
                          f"levels.", code="invalid_json")
