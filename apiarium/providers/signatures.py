"""What an upstream gave with a tool call and must see again with it: ``Signatures``.

Gemini 3 signs its function calls (``thoughtSignature`` on the ``functionCall`` part) and
answers 400 "Function call is missing a thought_signature" when a later request's history
brings the call back without it; Anthropic, with thinking on, wants the thinking blocks that
led to a tool call back in front of it.  OpenAI-speaking clients know nothing of either, so
the gateway keeps them by tool call id (ids it minted, or the upstream's own) and puts them
back when a history names the id again; it never packs them into the id (clients truncate
long ids).

One store for the whole gateway, built once by ``app.py`` and handed to every provider, so a
reload (which builds new providers) keeps it; a restart empties it, and history the gateway
did not produce never had an entry: the providers then fall back to what each vendor allows
(``SKIP``, Google's documented value for calls it did not sign).  Bounded: the least
recently used entries go first beyond ``max_entries`` or ``max_bytes``, and an entry lives
``ttl_s`` (two days by default).
"""
from __future__ import annotations

import time
from collections import OrderedDict

# Google's value for a functionCall whose signature is unknown (history it did not produce)
SKIP = "skip_thought_signature_validator"

MAX_ENTRIES = 100_000
MAX_BYTES = 64 * 1024 * 1024
TTL_S = 2 * 86400.0


class Signatures:
    """A bounded LRU of ``call id → value`` (strings), each entry kept ``ttl_s`` seconds."""

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 max_bytes: int = MAX_BYTES) -> None:
        self.max_entries, self.ttl_s, self.max_bytes = max_entries, ttl_s, max_bytes
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held (ids and values, roughly)."""
        return self._bytes

    def put(self, call_id: str, value: str) -> None:
        if not call_id or not value:
            return
        old = self._items.pop(call_id, None)
        if old is not None:
            self._bytes -= len(call_id) + len(old[1])
        self._items[call_id] = (time.monotonic() + self.ttl_s, value)
        self._bytes += len(call_id) + len(value)
        while self._items and (len(self._items) > self.max_entries
                               or self._bytes > self.max_bytes):
            key, (_, gone) = self._items.popitem(last=False)
            self._bytes -= len(key) + len(gone)

    def get(self, call_id: object) -> str | None:
        if not isinstance(call_id, str):
            return None
        item = self._items.get(call_id)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._items[call_id]
            self._bytes -= len(call_id) + len(value)
            return None
        self._items.move_to_end(call_id)
        return value
