"""What an upstream's error text may not carry to a client.

An upstream's message about a request (a 400 naming the field it disliked) is worth passing
on; but upstreams also write account details into their messages: the organisation
(``org-…``), the key they were sent, whole or masked (``sk-proj-****abcd``,
``sk-...abcd``).  ``scrub`` replaces everything shaped like a key or an organisation id.
"""
from __future__ import annotations

import re

REDACTED = "[redacted]"

_SECRET = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-[A-Za-z0-9_\-*.…]*[A-Za-z0-9*]"      # OpenAI sk-…, sk-proj-…; Anthropic sk-ant-…
    r"|key-[A-Za-z0-9_\-*.…]*[A-Za-z0-9*]"    # key-… (Mailgun-style keys, some gateways)
    r"|org-[A-Za-z0-9_\-]+"                    # OpenAI organisation ids
    r"|AIza[A-Za-z0-9_\-]{8,}"                 # Google API keys
    r")"
    r"|(?i:bearer)\s+[A-Za-z0-9_\-.~+/=*]{8,}")   # a bearer credential written out


def scrub(text: str, *secrets: str) -> str:
    """``text`` with key-shaped strings, organisation ids and each of ``secrets`` (the
    provider's own key) replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _SECRET.sub(REDACTED, text)
