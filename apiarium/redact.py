"""What an upstream's error text may not carry to a client.

An upstream's message about a request (a 400 naming the field it disliked) is worth passing
on; but upstreams also write account details into their messages: the organisation
(``org-…``), project (``proj_…``) and user (``user-…``) ids, the key they were sent, whole or
masked (``sk-proj-****abcd``, ``sk-...abcd``), and URLs, some of them of the operator's own
network (a self-hosted upstream names its internal address).  ``scrub`` replaces everything
shaped like a key or an account id, and every URL but those on the vendor's public sites
(``public_hosts``, each kind's own; a configured ``base_url`` counts only when it is one of
them), whose query and fragment it drops all the same.
"""
from __future__ import annotations

import re
from collections.abc import Collection

import yarl

REDACTED = "[redacted]"

_SECRET = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:"
    r"sk-[A-Za-z0-9_\-*.…]*[A-Za-z0-9*]"      # OpenAI sk-…, sk-proj-…; Anthropic sk-ant-…
    r"|key-[A-Za-z0-9_\-*.…]*[A-Za-z0-9*]"    # key-… (Mailgun-style keys, some gateways)
    r"|org-[A-Za-z0-9_\-]+"                    # OpenAI organisation ids
    r"|proj_[A-Za-z0-9_\-]+"                   # OpenAI project ids
    r"|user-(?=[A-Za-z]*[0-9])[A-Za-z0-9]{8,}"  # OpenAI user ids (not "user-provided")
    r"|AIza[A-Za-z0-9_\-]{8,}"                 # Google API keys
    r")"
    r"|(?i:bearer)\s+[A-Za-z0-9_\-.~+/=*]{8,}")   # a bearer credential written out
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"`<>()\[\]{}]+")
_TRAILING = ".,;:!?"


def scrub(text: str, *secrets: str, public_hosts: Collection[str] = ()) -> str:
    """``text`` with key-shaped strings, account ids, each of ``secrets`` (the provider's
    own key) and every URL not on ``public_hosts`` (https only) replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _URL.sub(lambda m: _url(m.group(0), public_hosts), text)
    return _SECRET.sub(REDACTED, text)


def _url(found: str, public_hosts: Collection[str]) -> str:
    """A URL as a client may see it: on a public host, without query and fragment (they
    carry project numbers); anywhere else, redacted.  Sentence punctuation stays outside."""
    url = found.rstrip(_TRAILING)
    tail = found[len(url):]
    try:
        parsed = yarl.URL(url)
        host = (parsed.host or "").lower()
    except (TypeError, ValueError):
        return REDACTED + tail
    if parsed.scheme.lower() != "https" or host not in public_hosts or parsed.user \
            or parsed.password or parsed.explicit_port not in (None, 443):
        return REDACTED + tail
    return str(parsed.with_query(None).with_fragment(None)) + tail
