"""Who is the client, and may they come in.

* The client IP is the socket peer, unless the peer is a trusted proxy: then it is the first
  untrusted hop of ``X-Forwarded-For`` (read right to left), or ``X-Real-IP``.  Nobody
  else's forwarding headers are believed.
* A request from an untrusted peer that carries proxy headers is a proxy (403).
* Blocklists: files of CIDRs, merged into sorted integer ranges; a lookup is one bisect.
"""
from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import Forbidden

# Headers that forwarding proxies, VPN gateways and anonymisers add.
PROXY_HEADERS = frozenset(("via", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip",
                 "proxy-connection", "x-proxy-id", "client-ip", "x-client-ip",
                 "true-client-ip", "x-originating-ip", "x-remote-ip", "x-remote-addr",
                 "x-proxyuser-ip", "x-bluecoat-via", "x-forwarded-server"))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str):
    text = text.strip().strip('"')
    if text.startswith("["):                       # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1 and "." in text:     # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


class Blocklist:
    """Sorted, merged [start, end] integer ranges per address family."""

    def __init__(self, networks: Iterable[Network] = ()):
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in networks:
            ranges[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, rs in ranges.items():
            rs.sort()
            merged: list[list[int]] = []
            for s, e in rs:
                if merged and s <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            self._starts[version] = [s for s, _ in merged]
            self._ends[version] = [e for _, e in merged]

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> "Blocklist":
        """Load CIDR files ('#' comments, one range per line); unreadable lines are skipped."""
        nets = []
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    try:
                        nets.append(ipaddress.ip_network(line, strict=False))
                    except ValueError:
                        continue
        return cls(nets)

    def __len__(self) -> int:
        return sum(len(v) for v in self._starts.values())

    def __contains__(self, ip) -> bool:
        starts = self._starts.get(ip.version)
        if not starts:
            return False
        n = int(ip)
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= self._ends[ip.version][i]


@dataclass(frozen=True)
class Visitor:
    ip: str
    peer_trusted: bool


class NetGuard:
    def __init__(self, trusted: Iterable[Network] = (), block_proxy_headers: bool = True,
                 blocklist: Blocklist | None = None):
        self.trusted = tuple(trusted)
        self.block_proxy_headers = block_proxy_headers
        self.blocklist = blocklist or Blocklist()
        self._trust_cache: dict[str, bool] = {}

    def is_trusted(self, ip) -> bool:
        key = str(ip)
        hit = self._trust_cache.get(key)
        if hit is None:
            hit = any(ip in net for net in self.trusted if net.version == ip.version)
            if len(self._trust_cache) < 4096:
                self._trust_cache[key] = hit
        return hit

    def visitor(self, peer: str, headers: Mapping[str, str]) -> Visitor:
        """Resolve the client IP from the socket peer and (trusted) forwarding headers."""
        peer_ip = _parse_ip(peer)
        if peer_ip is None:                       # unix socket or similar: take it as given
            return Visitor(peer, False)
        if not self.trusted or not self.is_trusted(peer_ip):
            return Visitor(str(peer_ip), False)
        client = peer_ip
        xff = headers.get("X-Forwarded-For")
        if xff:
            hops = [h for h in (_parse_ip(p) for p in xff.split(",")) if h is not None]
            for hop in reversed(hops):
                client = hop
                if not self.is_trusted(hop):
                    break
        else:
            real = _parse_ip(headers.get("X-Real-IP", ""))
            if real is not None:
                client = real
        return Visitor(str(client), True)

    def check(self, visitor: Visitor, headers: Mapping[str, str]) -> None:
        """Raise Forbidden for proxies, VPNs and blocklisted networks."""
        if self.block_proxy_headers and not visitor.peer_trusted:
            for name in headers:
                if name.lower() in PROXY_HEADERS:
                    raise Forbidden(
                        f"Requests through a proxy or VPN are not accepted (the request carried "
                        f"a {name!r} header). Connect directly, without a proxy or VPN, and try "
                        f"again.", code="vpn_detected")
        if len(self.blocklist):
            ip = _parse_ip(visitor.ip)
            if ip is not None and ip in self.blocklist:
                raise Forbidden(
                    f"Your network ({visitor.ip}) is listed as a VPN, proxy, hosting or Tor "
                    f"network. Connect from a residential or mobile connection without a VPN "
                    f"and try again.", code="vpn_detected")
