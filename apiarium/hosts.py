"""The host names this gateway answers to (``server.allowed_hosts``), and the base URL it
shows: in the homepage and in every media URL it hands out.

A client chooses its ``Host`` header freely; a gateway that puts it into the URLs it
generates can be made to point them anywhere (Host header injection).  ``server.public_url``
fixes the base URL outright; failing that, ``server.allowed_hosts`` (when not empty) lists
the names a request may use: the API paths refuse any other with 421, and the homepage
and media URLs then use the first name of the list instead.

A name without a port matches that name on any port; ``name:port`` only that port.
Names are compared in lower case, without a trailing dot.

The homepage (and ``/v1/keys/me``) shows the visitor their key, so with ``allowed_hosts`` set
it answers 421 under any other name too: a web page whose own name an attacker points at
the gateway (DNS rebinding) cannot read it.  With ``allowed_hosts`` empty that is open to
whoever can reach the gateway: ``rebinding_warning`` says so, when it listens beyond
loopback.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from .errors import Misdirected

_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?$")


def _parts(text: str) -> tuple[str, str] | None:
    """``(name, ":port" or "")`` of a host, in lower case without a trailing dot; None if
    ``text`` is not shaped like one."""
    m = _HOST.match(text.strip().lower())
    if m is None:
        return None
    name = m.group(1).rstrip(".")
    return (name, m.group(2) or "") if name else None


def normalize(text: str) -> str | None:
    """``text`` as ``name[:port]`` (see ``_parts``), or None if it is not a host."""
    parts = _parts(text)
    return parts[0] + parts[1] if parts else None


def allowed(host: str, names: tuple[str, ...]) -> bool:
    """Whether the request's ``host`` (a Host header value) is one of ``names`` (each
    normalised): exactly, or by its name alone; an empty ``names`` allows any host."""
    if not names:
        return True
    parts = _parts(host)
    return parts is not None and (parts[0] + parts[1] in names or parts[0] in names)


def base_url(public_url: str, proto: str, host: str, names: tuple[str, ...],
             fallback: str) -> str:
    """``scheme://host[:port]`` for the links a request is given: ``public_url`` if set;
    else the request's ``host`` when it is a well-formed, allowed one; else the first of
    ``names``; else ``fallback`` (the address the request arrived on)."""
    if public_url:
        return public_url
    if proto not in ("http", "https"):
        proto = "http"
    if normalize(host or "") is None or not allowed(host, names):
        host = names[0] if names else fallback
    return f"{proto}://{host}"


def origin(proto: str, host: str, headers: Mapping[str, str], trusted: bool) -> tuple[str, str]:
    """``(scheme, host)`` as a request names them: its own scheme and Host header, or the
    X-Forwarded-Proto/-Host a trusted proxy set (``trusted``: the peer is one)."""
    if trusted:
        fwd_proto = headers.get("X-Forwarded-Proto", "")
        fwd_host = headers.get("X-Forwarded-Host", "")
        if fwd_proto:
            proto = fwd_proto.split(",")[0].strip().lower()
        if fwd_host:
            host = fwd_host.split(",")[0].strip()
    return proto, host


def check(host: str, names: tuple[str, ...], public: str) -> None:
    """A 421 for a request whose ``host`` is not one of ``names`` (none: any host is)."""
    if not allowed(host, names):
        raise Misdirected(f"This gateway does not answer to the host name this request "
                          f"was sent to; use {public}.")


def rebinding_warning(listen: str, names: tuple[str, ...]) -> str | None:
    """What ``check-config`` and the start warn of when ``names`` (``server.allowed_hosts``)
    is empty and ``listen`` (``server.host``) is not loopback; None otherwise."""
    if names or _loopback(listen):
        return None
    return (f"server.allowed_hosts is empty and server.host ({listen or 'every address'}) is "
            f"not loopback: the homepage shows each visitor their key under any Host name, "
            f"so a web page that points its own name at this gateway (DNS rebinding) can read "
            f"its visitors' keys. List the names clients use in server.allowed_hosts (e.g. "
            f"[api.example.com])")


def _loopback(listen: str) -> bool:
    if listen.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen.strip().strip("[]")).is_loopback
    except ValueError:
        return False
