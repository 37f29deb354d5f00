"""OpenAI Responses API: the gateway's own ``compaction`` items, which let a stateless gateway
answer ``/responses/compact`` (and Codex's compaction trigger).

A compaction item's ``encrypted_content`` is ``apiarium.compaction.v1:`` + urlsafe base64 of
zlib-compressed JSON ``{"items": [...]}`` (the conversation items given) or ``{"summary":
"..."}`` (a summary some service had a model write).  It is opaque to the client, not secret:
it holds nothing the client did not send.  Expanding checks the size before and after
inflating, so a forged item cannot blow up memory.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import zlib
from typing import Any

import orjson

from ..errors import InvalidRequest

COMPACTION_PREFIX = "apiarium.compaction.v1:"
MAX_COMPACTION_BYTES = 8 * 1024 * 1024        # the items a compaction item encodes, as JSON
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (it was compacted):\n"
_CLIENT_ONLY = "internal_chat_message_metadata_passthrough"   # Codex's per-item bookkeeping
_NOT_CONTENT = frozenset({_CLIENT_ONLY, "id", "status"})


def _canonical(item: Any) -> bytes | None:
    """What makes two items the same turn: all but ids, status and client bookkeeping (Codex
    re-sends its prompts after a compaction under new ids)."""
    if not isinstance(item, dict):
        return None
    return orjson.dumps({k: v for k, v in item.items() if k not in _NOT_CONTENT},
                        option=orjson.OPT_SORT_KEYS)


def compaction_item(items: list | None = None, *, summary: str | None = None) -> dict:
    """A ``compaction`` item whose opaque content holds ``items`` (or a ``summary`` text, for a
    service that had a model summarise them); ``to_chat`` expands it back when it returns."""
    payload: dict[str, Any] = {"summary": summary} if summary is not None else {
        "items": [{k: v for k, v in i.items() if k != _CLIENT_ONLY} for i in items or []
                  if isinstance(i, dict)]}
    raw = orjson.dumps(payload)
    if len(raw) > MAX_COMPACTION_BYTES:
        raise InvalidRequest(f"The conversation to compact is {len(raw)} bytes of JSON; this "
                             f"gateway compacts at most {MAX_COMPACTION_BYTES}.", param="input",
                             code="context_length_exceeded")
    blob = base64.urlsafe_b64encode(zlib.compress(raw, 6)).decode()
    return {"type": "compaction", "id": f"cmp_{secrets.token_hex(12)}",
            "encrypted_content": COMPACTION_PREFIX + blob}


def _decode_compaction(item: dict, where: str) -> list | None:
    """The items a compaction item of ours holds; None for someone else's (OpenAI's)."""
    content = item.get("encrypted_content")
    if not isinstance(content, str) or not content:
        raise InvalidRequest(f"`{where}.encrypted_content` must be a non-empty string.",
                             param=f"{where}.encrypted_content")
    if not content.startswith(COMPACTION_PREFIX):
        return None
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.urlsafe_b64decode(content[len(COMPACTION_PREFIX):]),
                                  MAX_COMPACTION_BYTES + 1)
        payload = orjson.loads(raw) if len(raw) <= MAX_COMPACTION_BYTES else None
    except (binascii.Error, ValueError, zlib.error):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("summary"), str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": SUMMARY_PREFIX + payload["summary"]}]}]
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        return payload["items"]
    raise InvalidRequest(f"`{where}.encrypted_content` is not a compaction this gateway made, "
                         f"or it was altered.", param=f"{where}.encrypted_content")


def expand_compactions(items: list, *, keep_foreign: bool = False) -> list[tuple[str, Any]]:
    """(path, item) of each input item, our compaction items replaced by what they hold.  The
    items a client kept from before the compaction (Codex keeps its prompts, or sends them
    again) are dropped where they stand, because the compaction holds them in their original
    places.  Someone else's compaction items are dropped (only OpenAI can read them), or kept
    with ``keep_foreign`` (the request goes to OpenAI itself)."""
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not (isinstance(item, dict) and item.get("type") == "compaction"):
            out.append((where, item))
            continue
        held = _decode_compaction(item, where)
        if held is None:
            if keep_foreign:
                out.append((where, item))
            continue
        keys = {_canonical(h) for h in held}
        out = [(w, x) for w, x in out if _canonical(x) not in keys]
        out += [(where, h) for h in held]
    return out


def is_compaction_trigger(body: dict) -> bool:
    """Codex's remote compaction (v2): ``input`` ends with ``{"type": "compaction_trigger"}``
    and the answer must be exactly one ``compaction`` item."""
    items = body.get("input")
    return (isinstance(items, list) and bool(items) and isinstance(items[-1], dict)
            and items[-1].get("type") == "compaction_trigger")
