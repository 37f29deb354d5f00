"""Request ids: ``req_`` + ten hex digits chosen per process + a counter.  A worker forked by
``serve --workers`` draws a prefix of its own, so ids stay unique across workers."""
from __future__ import annotations

import itertools
import os
import secrets

_prefix = "req_" + secrets.token_hex(5)
_counter = itertools.count(1)


def next_id() -> str:
    return f"{_prefix}{next(_counter):07x}"


def _after_fork() -> None:
    global _prefix, _counter
    _prefix, _counter = "req_" + secrets.token_hex(5), itertools.count(1)


os.register_at_fork(after_in_child=_after_fork)
