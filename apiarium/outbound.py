"""Fetching a URL a user chose (a video's ``image_url``): ``ImageFetcher`` and its rules.

Anyone with a free key picks these URLs, so a fetch reaches public servers only and tells the
user nothing that maps a network:

* Its own aiohttp session: no cookie jar, no provider headers, its own User-Agent,
  ``auto_decompress=False``, no proxy from the environment, a new connection per request.
* Addresses: allowed are globally routable unicast ones (``is_public``) and those inside
  ``media.fetch_allow_cidrs``.  Checked on an IP literal in the URL before anything is sent;
  on every answer of the resolver (one bad answer fails the name); on the exact address each
  socket is about to connect to; and on the peer of the connection made, before the request
  is written.  A name that resolves first to a public address and then to an internal one
  (DNS rebinding) reaches nothing.
* Redirects followed by hand, at most ``MAX_REDIRECTS``, each target checked again.
* Only a 200 with an ``image/*`` type and no Content-Encoding but identity; the body is read
  in chunks, counted, and given up at the size limit.  A total and a connect timeout.
* At most ``concurrency`` fetches at once; a fetch waits ``queue_wait_s`` for a slot, then 429.
* Every failure is the same 400 (``failure_message``): never a status, type, exception or
  address.  The real cause is logged at info level for the operator.

``app.py`` builds one fetcher and hands it to every provider (``Provider.fetcher``);
``providers/gemini_media.py`` uses it for Veo's first frame.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from yarl import URL

from . import __version__
from .errors import InvalidRequest, RateLimited

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("apiarium.outbound")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``resolve(host, port) -> IP addresses as text`` (injectable: tests simulate DNS)."""

MAX_REDIRECTS = 3
CHUNK = 64 * 1024
USER_AGENT = f"apiarium-image-fetch/{__version__}"
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_IDENTITY = frozenset(("", "identity"))

# Never globally reachable (IANA special-purpose registries), whatever Python's tables say.
_NOT_PUBLIC_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
_NOT_PUBLIC_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23", "2001:db8::/32", "3fff::/20"))     # 2001::/23 holds Teredo (2001::/32)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public(ip: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local, CGNAT, multicast,
    unspecified, reserved or documentation; an IPv6 form of an IPv4 address (mapped, NAT64,
    6to4) is judged by that IPv4 address; Teredo and everything outside 2000::/3 is not."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
        return (ip in _GLOBAL_UNICAST_V6 and ip.teredo is None and ip.is_global
                and not any(ip in net for net in _NOT_PUBLIC_V6))
    return ip.is_global and not any(ip in net for net in _NOT_PUBLIC_V4)


def parse_address(text: str) -> Address | None:
    """An IP address written as text (``[v6]`` brackets and a ``%zone`` allowed), or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class FetchPolicy:
    """What a deployment allows (``media.*`` settings; ``queue_wait_s`` is not a setting)."""
    enabled: bool = True
    allow: tuple[Network, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    concurrency: int = 8
    queue_wait_s: float = 5.0

    @classmethod
    def from_settings(cls, s: Settings) -> FetchPolicy:
        """The policy the ``media.fetch_*`` and ``media.image_url_max_mb`` settings make."""
        return cls(enabled=s.fetch_image_urls, allow=s.fetch_allow_cidrs,
                   max_bytes=s.image_url_max_bytes, timeout_s=s.fetch_timeout_s,
                   connect_timeout_s=s.fetch_connect_timeout_s, concurrency=s.fetch_concurrency)

    def allows(self, ip: Address) -> bool:
        """Public, or inside the operator's allowlist (an IPv6 form of an IPv4 address is
        also looked up as that IPv4 address)."""
        if is_public(ip):
            return True
        candidates: list[Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            inner = embedded_ipv4(ip)
            if inner is not None:
                candidates.append(inner)
        return any(c in net for c in candidates for net in self.allow if net.version == c.version)

    def failure_message(self) -> str:
        """The one message of every failed fetch."""
        return (f"image_url could not be used: it must lead to an image of at most "
                f"{self.max_bytes / 1048576:g} MB on a public web server.")


@dataclass(frozen=True)
class FetchedImage:
    """An image as fetched: its bytes and its MIME type (``image/...``)."""
    data: bytes
    mime: str


class Refused(Exception):
    """Why a fetch failed, for the operator's log only (never shown to the user)."""


class AddressRefused(OSError):
    """A connection to an address the policy does not allow (raised before connecting)."""


def _check(policy: FetchPolicy, text: str, what: str) -> None:
    ip = parse_address(text)
    if ip is None or not policy.allows(ip):
        raise AddressRefused(errno.EACCES, f"{what} {text}: not an allowed address")


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's own resolver (getaddrinfo in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _CheckedResolver(AbstractResolver):
    """aiohttp's resolver interface over a ``Resolver``; every answer is checked."""

    def __init__(self, resolve: Resolver, policy: Callable[[], FetchPolicy]):
        self._resolve, self._policy = resolve, policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = list(await self._resolve(host, port))
        if not answers:
            raise OSError(errno.ENOENT, f"{host}: no address")
        policy, results = self._policy(), []
        for text in answers:
            _check(policy, text, f"{host} resolves to")
            fam = socket.AF_INET6 if ":" in text else socket.AF_INET
            if family in (0, fam):
                results.append(ResolveResult(hostname=host, host=text, port=port, family=fam,
                                             proto=0, flags=socket.AI_NUMERICHOST))
        return results

    async def close(self) -> None:
        """Nothing to release."""


class _GuardedConnector(aiohttp.TCPConnector):
    """Checks the address each socket is about to connect to, and the peer once connected."""

    def __init__(self, resolve: Resolver, policy: Callable[[], FetchPolicy]):
        self._policy = policy
        super().__init__(resolver=_CheckedResolver(resolve, policy), use_dns_cache=False,
                         force_close=True, limit=0, socket_factory=self._socket_for)

    def _socket_for(self, addr_info: tuple) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        _check(self._policy(), str(sockaddr[0]), "connect to")
        return socket.socket(family, type_, proto)

    async def connect(self, req: Any, *args: Any, **kwargs: Any) -> Connection:
        """A new connection, closed unless its peer is an allowed address."""
        conn = await super().connect(req, *args, **kwargs)
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        try:
            _check(self._policy(), str(peer[0]) if peer else "(none)", "connected to")
        except AddressRefused:
            conn.close()
            raise
        return conn


class ImageFetcher:
    """Fetches user-given image URLs under a ``FetchPolicy`` (see the module docstring).

    One per gateway: ``configure`` swaps the policy on reload, ``close`` ends the session.
    ``resolver`` replaces the host's DNS (tests)."""

    def __init__(self, policy: FetchPolicy | None = None, resolver: Resolver | None = None):
        self.policy = policy or FetchPolicy()
        self._resolve = resolver or system_resolver
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        self._session: aiohttp.ClientSession | None = None

    def configure(self, policy: FetchPolicy) -> None:
        """Use ``policy`` from now on (fetches under way keep their slot of the old cap)."""
        if policy.concurrency != self.policy.concurrency:
            self._slots = asyncio.Semaphore(policy.concurrency)
        self.policy = policy

    async def close(self) -> None:
        """Close the session (if one was opened)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = _GuardedConnector(self._resolve, lambda: self.policy)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                trust_env=False, timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": USER_AGENT, "Accept": "image/*",
                         "Accept-Encoding": "identity"})
        return self._session

    def failed(self, policy: FetchPolicy | None = None) -> InvalidRequest:
        """The 400 of every failed fetch (the same text whatever went wrong)."""
        return InvalidRequest((policy or self.policy).failure_message(), param="image_url")

    def check_data_url(self, url: str) -> None:
        """Refuse a ``data:`` URL whose payload is over the size limit, before decoding it."""
        payload = len(url) - url.find(",") - 1
        if payload * 3 // 4 > self.policy.max_bytes:
            log.info("image_url refused: a data: URL of about %d bytes (limit %d)",
                     payload * 3 // 4, self.policy.max_bytes)
            raise self.failed()

    async def fetch(self, url: str) -> FetchedImage:
        """The image at an http(s) ``url``; raises the fixed 400 on any failure, a 400 naming
        the field when fetching is off, a 429 when too many fetches are under way."""
        policy = self.policy
        if not policy.enabled:
            raise InvalidRequest("`image_url` must be a data: URL on this gateway "
                                 "(data:image/png;base64,...): it does not fetch images from "
                                 "http(s) URLs.", param="image_url")
        slots = self._slots
        try:
            async with asyncio.timeout(policy.queue_wait_s):
                await slots.acquire()
        except TimeoutError:
            log.info("image_url fetch refused: %d fetches already under way", policy.concurrency)
            raise RateLimited("Too many images are being fetched for image_url on this gateway "
                              "right now; retry in a few seconds, or send the image as a "
                              "data: URL.", code="image_fetch_busy",
                              retry_after=policy.queue_wait_s) from None
        try:
            async with asyncio.timeout(policy.timeout_s):
                return await self._fetch(URL(url), policy)
        except Exception as exc:  # noqa: BLE001 - every failure is the one message; cancel goes on
            detail = _describe(exc, policy, url)
        finally:
            slots.release()
        log.info("image_url refused: %s (url %.200s)", detail, url)
        raise self.failed(policy)

    async def _fetch(self, target: URL, policy: FetchPolicy) -> FetchedImage:
        session = self._session_for()
        timeout = aiohttp.ClientTimeout(total=None, connect=policy.connect_timeout_s,
                                        sock_connect=policy.connect_timeout_s)
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(target, policy)
            async with session.get(target, allow_redirects=False, timeout=timeout) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise Refused(f"{target}: HTTP {resp.status} without a Location")
                    target = target.join(URL(location))
                    continue
                return await _read_image(resp, policy, target)
        raise Refused(f"more than {MAX_REDIRECTS} redirects (the last to {target})")


def _describe(exc: Exception, policy: FetchPolicy, url: str) -> str:
    """What went wrong, for the log."""
    if isinstance(exc, TimeoutError):             # before OSError: it is one
        return f"no complete answer within {policy.timeout_s:g} s"
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, (OSError, aiohttp.ClientError, ValueError)):
        return f"{type(exc).__name__}: {exc}"
    log.warning("image_url fetch of %.200s failed unexpectedly", url, exc_info=exc)
    return type(exc).__name__


def _check_url(url: URL, policy: FetchPolicy) -> None:
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise Refused(f"{url}: not an http(s) URL with a host")
    ip = parse_address(url.raw_host)
    if ip is not None and not policy.allows(ip):
        raise AddressRefused(errno.EACCES, f"{url}: {ip} is not an allowed address")


async def _read_image(resp: aiohttp.ClientResponse, policy: FetchPolicy,
                      url: URL) -> FetchedImage:
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    transfer = {t.strip() for t in resp.headers.get("Transfer-Encoding", "").lower().split(",")}
    if resp.status != 200 or not ctype.startswith("image/"):
        raise Refused(f"{url}: HTTP {resp.status} with {ctype or 'no content type'}")
    if encoding not in _IDENTITY or not transfer <= {"", "chunked", "identity"}:
        raise Refused(f"{url}: Content-Encoding {encoding!r}, Transfer-Encoding "
                      f"{resp.headers.get('Transfer-Encoding', '')!r} (only identity is read)")
    limit = policy.max_bytes
    if (resp.content_length or 0) > limit:
        raise Refused(f"{url}: Content-Length {resp.content_length} over {limit} bytes")
    # kept as chunks, joined once: growing one buffer may copy it (glibc realloc on the heap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise Refused(f"{url}: more than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise Refused(f"{url}: an empty body")
    data = b"".join(chunks)
    del chunks
    return FetchedImage(data, ctype)


_ATTRIBUTE = "image_fetcher"
