"""OpenAI Responses API: the gateway's own ``compaction`` items, which let a stateless gateway
answer ``/responses/compact`` (and Codex's compaction trigger).

A compaction item's ``encrypted_content`` is ``apiarium.compaction.v2:`` + P + ``.`` + T, where
P is the urlsafe base64 of zlib-compressed JSON ``{"items": [...]}`` (the conversation items
given) or ``{"summary": "..."}`` (a summary some service had a model write), and T the urlsafe
base64 (unpadded) of HMAC-SHA256 over the key that made it and P, keyed with the key secret's
``compaction`` subkey (``CompactionSeal``).  It is opaque to the client, not secret: it holds
nothing the client did not send.  It is signed so that only what the gateway itself checked
and wrote comes back, and only for the key it was written for: an unsigned (``v1``), altered
or other key's item is a 400 naming its ``encrypted_content``, found before anything is
inflated.  Expanding is bounded for a whole request: at most ``MAX_COMPACTION_BYTES`` of JSON
and ``MAX_COMPACTION_ITEMS`` items held in all (inflation stops as soon as the total passes),
nested no deeper than a request body may be (``jsonbody.MAX_DEPTH``).  What a compaction held
is then checked as if the client had sent it directly (the callers translate or check the
expanded items, not the compaction).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import zlib
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..jsonbody import MAX_DEPTH, too_deep

COMPACTION_PREFIX = "apiarium.compaction.v2:"
UNSIGNED_PREFIX = "apiarium.compaction.v1:"      # before items were signed: refused
MAX_COMPACTION_BYTES = 8 * 1024 * 1024   # JSON a compaction holds, and a request's hold in all
MAX_COMPACTION_ITEMS = 20_000            # items a compaction holds, and a request's hold in all
SEAL_PURPOSE = "compaction"              # the key secret's subkey that signs them
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (it was compacted):\n"
_CLIENT_ONLY = "internal_chat_message_metadata_passthrough"   # Codex's per-item bookkeeping
_NOT_CONTENT = frozenset({_CLIENT_ONLY, "id", "status"})
_INVALID = "invalid_encrypted_content"


class CompactionSeal:
    """Signs the compaction items one API key makes, and opens only those: ``key`` is the
    key secret's ``compaction`` subkey, ``owner`` whose they are (an issued key's hash, or
    ``"master"`` for the master key)."""

    __slots__ = ("_key", "_owner")

    def __init__(self, key: bytes, owner: str) -> None:
        self._key = key
        self._owner = owner.encode()

    def _tag(self, packed: str) -> bytes:
        mac = hmac.digest(self._key, b"%s\0%s\0%s" % (COMPACTION_PREFIX.encode(), self._owner,
                                                      packed.encode()), "sha256")
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def seal(self, compressed: bytes) -> str:
        packed = base64.urlsafe_b64encode(compressed).decode()
        return f"{COMPACTION_PREFIX}{packed}.{self._tag(packed).decode()}"

    def open(self, content: str) -> bytes | None:
        """The compressed payload of ``content`` (one of ours, by its prefix) if its tag is
        this owner's; None if it is not (another key's, altered, or forged).  Nothing is
        decoded before the tag is checked."""
        packed, dot, tag = content[len(COMPACTION_PREFIX):].rpartition(".")
        if not dot or not hmac.compare_digest(tag.encode(), self._tag(packed)):
            return None
        try:
            return base64.urlsafe_b64decode(packed)
        except (binascii.Error, ValueError):
            return None


def _canonical(item: Any) -> bytes | None:
    """What makes two items the same turn: all but ids, status and client bookkeeping (Codex
    re-sends its prompts after a compaction under new ids)."""
    if not isinstance(item, dict):
        return None
    return orjson.dumps({k: v for k, v in item.items() if k not in _NOT_CONTENT},
                        option=orjson.OPT_SORT_KEYS)


def compaction_item(items: list | None = None, *, seal: CompactionSeal,
                    summary: str | None = None) -> dict:
    """A ``compaction`` item, signed with ``seal``, whose opaque content holds ``items`` (or
    a ``summary`` text, for a service that had a model summarise them); ``to_chat`` expands
    it back when it returns with the same key."""
    kept = [{k: v for k, v in i.items() if k != _CLIENT_ONLY} for i in items or []
            if isinstance(i, dict)]
    if len(kept) > MAX_COMPACTION_ITEMS:
        raise InvalidRequest(f"The conversation to compact has {len(kept)} items; this "
                             f"gateway compacts at most {MAX_COMPACTION_ITEMS}.", param="input",
                             code="context_length_exceeded")
    payload: dict[str, Any] = {"summary": summary} if summary is not None else {"items": kept}
    raw = orjson.dumps(payload)
    if len(raw) > MAX_COMPACTION_BYTES:
        raise InvalidRequest(f"The conversation to compact is {len(raw)} bytes of JSON; this "
                             f"gateway compacts at most {MAX_COMPACTION_BYTES}.", param="input",
                             code="context_length_exceeded")
    return {"type": "compaction", "id": f"cmp_{secrets.token_hex(12)}",
            "encrypted_content": seal.seal(zlib.compress(raw, 6))}


class _Room:
    """What is left of a request's expansion bounds (bytes and items, over all its
    compaction items)."""

    __slots__ = ("bytes", "items")

    def __init__(self) -> None:
        self.bytes = MAX_COMPACTION_BYTES
        self.items = MAX_COMPACTION_ITEMS


def _refused(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"`{where}.encrypted_content` {message}",
                          param=f"{where}.encrypted_content", code=_INVALID)


def _inflate(compressed: bytes, room: _Room, where: str) -> bytes:
    """The JSON a compaction holds, inflated no further than the request's room left."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, room.bytes + 1)
    except zlib.error:
        raise _refused(where, "is damaged; compact the conversation again.") from None
    if len(raw) > room.bytes:
        raise InvalidRequest(
            f"`{where}.encrypted_content`: the compaction items of this request hold more "
            f"than {MAX_COMPACTION_BYTES // 1048576} MB of conversation in all, the most this "
            f"gateway expands in one request; send fewer of them (compact the conversation "
            f"into one).", param=f"{where}.encrypted_content")
    if not inflater.eof or inflater.unused_data:
        raise _refused(where, "is damaged; compact the conversation again.")
    room.bytes -= len(raw)
    return raw


def _decode_compaction(item: dict, where: str, seal: CompactionSeal | None,
                       room: _Room) -> list | None:
    """The items a compaction item of ours holds; None for someone else's (OpenAI's)."""
    content = item.get("encrypted_content")
    if not isinstance(content, str) or not content:
        raise InvalidRequest(f"`{where}.encrypted_content` must be a non-empty string.",
                             param=f"{where}.encrypted_content")
    if content.startswith(UNSIGNED_PREFIX):
        raise _refused(where, "is a compaction made before this gateway signed them (v1), "
                              "which it no longer accepts: send the conversation's items "
                              "themselves, or start a new conversation.")
    if not content.startswith(COMPACTION_PREFIX):
        return None
    compressed = seal.open(content) if seal is not None else None
    if compressed is None:
        raise _refused(where, "is not a compaction this gateway made for this API key, or it "
                              "was altered: a compaction works only with the key that made "
                              "it. Send it with that key, or send the conversation's items "
                              "and compact them again with this key.")
    raw = _inflate(compressed, room, where)
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(payload):
        raise InvalidRequest(f"`{where}.encrypted_content` holds JSON nested more than "
                             f"{MAX_DEPTH} levels deep; this gateway accepts at most "
                             f"{MAX_DEPTH}.", param=f"{where}.encrypted_content",
                             code="invalid_json")
    if isinstance(payload, dict) and isinstance(payload.get("summary"), str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": SUMMARY_PREFIX + payload["summary"]}]}]
    held = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(held, list) or not all(isinstance(h, dict) and h.get("type")
                                             != "compaction" for h in held):
        raise _refused(where, "is damaged; compact the conversation again.")
    if len(held) > room.items:
        raise InvalidRequest(
            f"`{where}.encrypted_content`: the compaction items of this request hold more "
            f"than {MAX_COMPACTION_ITEMS} items in all, the most this gateway expands in one "
            f"request; send fewer of them.", param=f"{where}.encrypted_content")
    room.items -= len(held)
    return held


def expand_compactions(items: list, seal: CompactionSeal | None, *,
                       keep_foreign: bool = False) -> list[tuple[str, Any]]:
    """(path, item) of each input item, our compaction items replaced by what they hold
    (opened with ``seal``: the requesting key's; None opens none).  The items a client kept
    from before the compaction (Codex keeps its prompts, or sends them again) are dropped
    where they stand, because the compaction holds them in their original places.  Someone
    else's compaction items are dropped (only OpenAI can read them), or kept with
    ``keep_foreign`` (the request goes to OpenAI itself)."""
    expanded: list[tuple[str, Any, int]] = []     # path, item, the compaction that held it
    room = _Room()
    ours = False
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not (isinstance(item, dict) and item.get("type") == "compaction"):
            expanded.append((where, item, -1))
            continue
        held = _decode_compaction(item, where, seal, room)
        if held is None:
            if keep_foreign:
                expanded.append((where, item, -1))
            continue
        ours = True
        expanded += [(where, h, i) for h in held]
    if not ours:                                  # nothing to de-duplicate
        return [(where, item) for where, item, _ in expanded]
    return _without_repeats(expanded)


def _without_repeats(expanded: list[tuple[str, Any, int]]) -> list[tuple[str, Any]]:
    """Drop each item that a compaction after it holds too, in one walk from the end: every
    item's canonical form is made once, and looked up in the set of those held later."""
    held_later: set[bytes] = set()
    current: set[bytes] = set()                  # held by the compaction being walked
    source = -2
    kept: list[tuple[str, Any]] = []
    for where, item, held_by in reversed(expanded):
        if held_by != source:
            held_later |= current
            current, source = set(), held_by
        key = _canonical(item)
        if key is not None and key in held_later:
            continue
        kept.append((where, item))
        if held_by >= 0 and key is not None:
            current.add(key)
    kept.reverse()
    return kept


def is_compaction_trigger(body: dict) -> bool:
    """Codex's remote compaction (v2): ``input`` ends with ``{"type": "compaction_trigger"}``
    and the answer must be exactly one ``compaction`` item."""
    items = body.get("input")
    return (isinstance(items, list) and bool(items) and isinstance(items[-1], dict)
            and items[-1].get("type") == "compaction_trigger")
