"""Who is the client, and may they come in.

* The client IP is the socket peer, unless the peer is a trusted proxy: then it is read from
  the one header that proxy sets (``server.client_ip_header``): ``X-Forwarded-For`` read
  right to left, the first hop that is not a trusted proxy (a hop that does not parse ends
  the walk at the address that added it: never a hop further left; with no such header,
  ``X-Real-IP``), or ``X-Real-IP`` alone (then a client's own ``X-Forwarded-For``, which a
  proxy that sets only ``X-Real-IP`` passes on untouched, is ignored).  Nobody else's
  forwarding headers are believed.
* IPv6 addresses that carry an IPv4 address (IPv4-mapped ``::ffff:0:0/96``, 6to4
  ``2002::/16``, Teredo ``2001::/32``, NAT64 ``64:ff9b::/96``) are taken as that IPv4
  address: such a client is one IPv4 user, not a /48 of fresh identities.
* A request from an untrusted peer that carries proxy headers is a proxy (403).
* Blocklists: files of CIDRs (or bare addresses, or ``first-last`` ranges), kept as one set
  of network numbers per prefix length; a lookup is one set probe per prefix length in use.
  Clean IPv4 lines are converted in bulk (``inet_pton`` over the whole file), only unusual
  lines go one by one, so a file of 200,000 ranges loads in a few tenths of a second.
"""
from __future__ import annotations

import ipaddress
import operator
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import compress
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton

from .errors import Forbidden

# Headers that forwarding proxies, VPN gateways and anonymisers add.
PROXY_HEADERS = frozenset(("via", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip",
                 "proxy-connection", "x-proxy-id", "client-ip", "x-client-ip",
                 "true-client-ip", "x-originating-ip", "x-remote-ip", "x-remote-addr",
                 "x-proxyuser-ip", "x-bluecoat-via", "x-forwarded-server"))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_BITS = {4: 32, 6: 128}
_pton4 = partial(inet_pton, AF_INET)
_U32 = next(code for code in "IL" if array(code).itemsize == 4)
CACHE_SIZE = 65536        # per-address answers kept (a reload starts a new guard, afresh)
MAX_REPORTED = 5          # unreadable lines named one by one; the rest are counted


def _parse_ip(text: str) -> Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):                       # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1 and "." in text:     # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return embedded_ipv4(ip) or ip


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition address stands for (None for any other)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]                 # (server, client): the client's own address
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def network_of(ip: str) -> str:
    """The unit one visitor controls: the IPv4 address itself, or the IPv6 /64."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    except ValueError:
        return ip


def parse_network(text: str) -> Network:
    """An IP or CIDR, host bits allowed (ValueError if neither)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _networks_of(line: str) -> list[Network]:
    """One unusual blocklist line: a CIDR, a bare address, or ``first-last``."""
    if "-" in line:
        first, _, last = line.partition("-")
        return list(ipaddress.summarize_address_range(ipaddress.ip_address(first.strip()),
                                                      ipaddress.ip_address(last.strip())))
    return [ipaddress.ip_network(line, strict=False)]


def _bulk_v4(lines: list[str]) -> tuple[array, list[int]] | None:
    """Addresses and prefix lengths of IPv4 lines (``a.b.c.d/n`` or a bare ``a.b.c.d``),
    converted in bulk; None if any line is not one (the caller then goes line by line)."""
    body = "\n".join(lines)
    slashes = body.count("/")
    try:
        if slashes == 0:
            addrs, plens = lines, [32] * len(lines)
        else:
            if slashes != len(lines):
                body = "\n".join([line if "/" in line else line + "/32" for line in lines])
            flat = body.replace("/", "\n").split("\n")
            if len(flat) != 2 * len(lines):                # a line with two slashes
                return None
            addrs, plens = flat[0::2], list(map(int, flat[1::2]))
            if min(plens) < 0 or max(plens) > 32:
                return None
        ints = array(_U32)
        ints.frombytes(b"".join(map(_pton4, addrs)))
    except (OSError, ValueError):
        return None
    if sys.byteorder == "little":
        ints.byteswap()
    return ints, plens


def _fast_net(line: str) -> tuple[int, int, int] | None:
    """``(version, address, prefix length)`` of a CIDR or bare address; None if unusual."""
    addr, _, plen = line.partition("/")
    version, family = (6, AF_INET6) if ":" in addr else (4, AF_INET)
    try:
        n = int.from_bytes(inet_pton(family, addr), "big")
        p = int(plen) if plen else _BITS[version]
    except (OSError, ValueError):
        return None
    return (version, n, p) if 0 <= p <= _BITS[version] else None


_PLAIN = "0123456789./"
_NOT_PLAIN = str.maketrans("", "", _PLAIN + "\r\n")


class Blocklist:
    """Per address family, one set of ``network number | prefix length << width`` keys (the
    network number is the address shifted right by its host bits).  A lookup probes the set
    once per prefix length in use (at most 33 for IPv4, 129 for IPv6, whatever the size of
    the list): O(1) in the number of ranges.  Loading needs no sorting, and overlapping or
    nested ranges no merging."""

    def __init__(self, networks: Iterable[Network] = ()):
        self._keys: dict[int, set[int]] = {4: set(), 6: set()}
        self._plens: dict[int, set[int]] = {4: set(), 6: set()}
        self.problems: list[str] = []     # "FILE:LINE: ..." for the first unreadable lines
        self.bad_lines = 0
        for net in networks:
            self._add(net.version, int(net.network_address), net.prefixlen)
        self._finish()

    def _add(self, version: int, n: int, p: int) -> None:
        bits = _BITS[version]
        self._keys[version].add((n >> (bits - p)) | (p << bits))
        self._plens[version].add(p)

    def _finish(self) -> None:
        self._probes = {v: tuple((_BITS[v] - p, p << _BITS[v]) for p in sorted(plens))
                        for v, plens in self._plens.items()}
        self.entries = len(self._keys[4]) + len(self._keys[6])
        self._merged: int | None = None

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Blocklist:
        """Load blocklist files: one CIDR, address or ``first-last`` range a line, ``#``
        comments.  Unreadable lines are skipped and reported in ``problems``; a file that
        cannot be opened raises OSError."""
        bl = cls()
        for path in paths:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
            bl._read(text, str(path))
        bl._finish()
        return bl

    def _read(self, text: str, source: str) -> None:
        todo: Iterable[tuple[int, str]]
        if not text.translate(_NOT_PLAIN):          # digits, dots and slashes only
            plain, todo = text.split(), []
        else:
            lines = text.splitlines()
            rest = [line.strip(_PLAIN) for line in lines]     # "": a plain line (or blank)
            plain = list(compress(lines, map(operator.not_, rest)))
            if "" in plain:
                plain = [line for line in plain if line]
            todo = compress(enumerate(lines, 1), rest)
        bulk = _bulk_v4(plain) if plain else None
        if bulk is not None:
            ints, plens = bulk
            self._keys[4] |= {(n >> (32 - p)) | (p << 32) for n, p in zip(ints, plens, strict=True)}
            self._plens[4].update(plens)
        elif plain:                                 # a bad line among them: one by one
            todo = [(no, line) for no, line in enumerate(text.splitlines(), 1)
                    if line and line[0] != "#"]
        for no, raw in todo:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            hit = _fast_net(line) if "-" not in line else None
            if hit is not None:
                self._add(*hit)
                continue
            try:
                nets = _networks_of(line)
            except ValueError:
                self.bad_lines += 1
                if len(self.problems) < MAX_REPORTED:
                    self.problems.append(f"{source}:{no}: not an IP address, CIDR or range: "
                                         f"{line[:60]!r} (line skipped)")
                continue
            for net in nets:
                self._add(net.version, int(net.network_address), net.prefixlen)

    def __bool__(self) -> bool:
        return bool(self._keys[4] or self._keys[6])

    def __len__(self) -> int:
        """The number of disjoint ranges once overlapping and adjacent ones are merged
        (computed on first use: for reports, not for the request path)."""
        if self._merged is None:
            total = 0
            for version, keys in self._keys.items():
                bits = _BITS[version]
                low = (1 << bits) - 1
                ranges = sorted(((k & low) << (bits - (k >> bits)),
                                 (((k & low) + 1) << (bits - (k >> bits))) - 1) for k in keys)
                last = -2
                for start, end in ranges:
                    if start > last + 1:
                        total += 1
                    last = max(last, end)
            self._merged = total
        return self._merged

    def __contains__(self, ip: Address) -> bool:
        n, keys = int(ip), self._keys[ip.version]
        return any((n >> shift) | tag in keys for shift, tag in self._probes[ip.version])


@dataclass(frozen=True)
class Visitor:
    ip: str
    peer_trusted: bool


class NetGuard:
    def __init__(self, trusted: Iterable[Network] = (), block_proxy_headers: bool = True,
                 blocklist: Blocklist | None = None,
                 client_ip_header: str = "X-Forwarded-For"):
        self.trusted = tuple(trusted)
        self.client_ip_header = client_ip_header
        self.block_proxy_headers = block_proxy_headers
        self.blocklist = blocklist or Blocklist()
        self._trust_cache: dict[str, bool] = {}
        self._direct: dict[str, Visitor] = {}       # peer -> visitor, for untrusted peers
        self._listed: dict[str, bool] = {}          # ip -> in the blocklist

    def is_trusted(self, ip: Address) -> bool:
        key = str(ip)
        hit = self._trust_cache.get(key)
        if hit is None:
            hit = any(ip in net for net in self.trusted if net.version == ip.version)
            if len(self._trust_cache) < CACHE_SIZE:
                self._trust_cache[key] = hit
        return hit

    def visitor(self, peer: str, headers: Mapping[str, str]) -> Visitor:
        """Resolve the client IP from the socket peer and (trusted) forwarding headers."""
        known = self._direct.get(peer)
        if known is not None:                     # an untrusted peer seen before: no parsing
            return known
        peer_ip = _parse_ip(peer)
        if peer_ip is None:                       # unix socket or similar: take it as given
            return Visitor(peer, False)
        if not self.trusted or not self.is_trusted(peer_ip):
            if len(self._direct) >= CACHE_SIZE:
                self._direct.clear()
            known = self._direct[peer] = Visitor(str(peer_ip), False)
            return known
        client = peer_ip
        if self.client_ip_header.lower() == "x-real-ip":
            real = _parse_ip(headers.get("X-Real-IP", ""))
            if real is not None:
                client = real
            return Visitor(str(client), True)
        xff = headers.get("X-Forwarded-For")
        if xff:
            for text in reversed(xff.split(",")):
                hop = _parse_ip(text)
                if hop is None:              # garbage: the address that added it is the client
                    break
                client = hop
                if not self.is_trusted(hop):
                    break
        else:                                # a proxy that sent no X-Forwarded-For
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
        if self.blocklist:
            listed = self._listed.get(visitor.ip)
            if listed is None:
                ip = _parse_ip(visitor.ip)
                listed = ip is not None and ip in self.blocklist
                if len(self._listed) >= CACHE_SIZE:
                    self._listed.clear()
                self._listed[visitor.ip] = listed
            if listed:
                raise Forbidden(
                    f"Your network ({visitor.ip}) is listed as a VPN, proxy, hosting or Tor "
                    f"network. Connect from a residential or mobile connection without a VPN "
                    f"and try again.", code="vpn_detected")
