"""KeyService: API keys bound to the IP that asked for them, and the operator's IP blocks.

* A key is ``api-`` + 16 characters of ``[a-z0-9]``, derived as HMAC(secret, "ip|generation")
  (``keysecret.py``); the database keeps HMAC(secret, key) and ``api-`` + two characters, so
  without the secret file (``<database>.secret``, or the ``secret_file`` setting; every process
  on one database must read the same one) it reveals nothing a key can be checked
  against.  Older databases, which kept a bare SHA-256, are rehashed on open.
* The same IP gets the same key back, across restarts, by deriving it again.  Revoking or
  rotating moves the IP to its next generation, so its next key is a different one.
* Every lookup on the request path is a dict lookup; the database (``storage/``) is touched
  only to issue a key (committed before it is returned: a ``kill -9`` loses no key a client
  has seen), by the admin CLI, by ``flush`` (when each key was last used, counted in memory,
  written in batches) and by the periodic ``refresh`` that picks up other processes' writes.
* Who a key belongs to: an IPv4 address, or an IPv6 /64 (``identity_of``): one user controls
  a whole /64 (privacy addresses change inside it), so the /64 gets one key, good from any of
  its addresses.
* Issuance limits (``IssuanceCaps``): new keys a day per IPv6 /64, /48 and /32 (IPv6 space is
  cheap: a free tunnel gives a /48), new keys an hour in the whole gateway, and ``admit`` (a
  token bucket per IPv4 address or IPv6 /64) in front of every visit that may issue one.
  Blocked networks (``apiarium keys block``) get 403 ``vpn_detected`` on issuance and on every
  request made with one of their keys.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import keysecret
from ..errors import Forbidden
from ..keysecret import KEY_PREFIX, KeyStoreError
from ..netguard import Blocklist, network_of, parse_network
from ..ratelimit import TokenBuckets
from ..storage import BlockRecord, KeyRecord, NewKey, Storage, describe, open_storage, secret_beside
from .limits import hourly_cap, network_cap, visits_refused

if TYPE_CHECKING:
    from ..config import Settings

DAY_S = 86400
PREFIX_LEN = 6            # "api-" + 2: how much of a key is stored in the clear, to show


HOUR_S = 3600
UNSEEN_GENERATIONS = 4    # how far past its known key an IP's new key is looked for
ABSENT_MAX = 65536        # hashes looked for in the database and not found, remembered


def identity_of(ip: str) -> str:
    """Whose key an address uses: the IPv4 address itself, or its IPv6 /64."""
    return network_of(ip)


def supernet(identity: str, bits: int) -> str:
    """The IPv6 /``bits`` an identity (an address or a /64) lies in."""
    net = ipaddress.ip_network(identity if "/" in identity else f"{identity}/128", strict=False)
    return str(net.supernet(new_prefix=bits)) if net.prefixlen > bits else str(net)


@dataclass(frozen=True)
class IssuanceCaps:
    """How many new keys may be issued (0: no limit): a day per IPv6 /64, /48 and /32, and an
    hour in the whole gateway."""
    per_64: int = 0
    per_48: int = 0
    per_32: int = 0
    per_hour: int = 0


class AddressBlocked(Forbidden):
    """403 ``vpn_detected`` because the operator blocked the address (not a VPN check)."""


class KeyService:
    """The keys and blocks of one database, indexed in memory."""

    def __init__(self, database: str | Path, secret_path: str | Path | None = None) -> None:
        self.database = database
        self.secret_path = Path(secret_path) if secret_path else secret_beside(database)
        self._storage: Storage | None = None
        self._secret = b""
        self._subkeys: dict[str, bytes] = {}     # purpose -> keysecret.subkey, made once
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_ip: dict[str, KeyRecord] = {}
        self._lock = asyncio.Lock()          # every write and every reload, one at a time
        self._blocked = Blocklist()
        self._blocked_ips: dict[str, bool] = {}
        self._recent: dict[str, list[int]] = {}  # IPv6 /64, /48, /32 -> creation times today
        self._hourly: list[int] = []             # creation times of the last hour, any IP
        self._used: dict[int, int] = {}          # key id -> last use, not yet written
        self._absent: set[str] = set()           # unseen keys the database had not either
        self.visits = TokenBuckets()             # per network: visits that may issue a key
        # the caps checked and counted in Redis too (rate_limit.backend), across processes
        self.shared_caps: Callable[[str, IssuanceCaps], Awaitable[None]] | None = None
        self.shared_visits: Callable[[str, int], Awaitable[None]] | None = None   # and visits

    # ------------------------------------------------------------------ lifecycle
    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise KeyStoreError("the key store is not open")
        return self._storage

    async def open(self) -> KeyService:
        storage = await open_storage(self.database)
        try:
            self._secret = keysecret.load_secret(self.secret_path)
            await storage.upgrade_keys(self._upgraded)
            await keysecret.check_recorded(self._secret, storage.claim_secret,
                                           self.secret_path, describe(self.database))
            self._storage = storage
            async with self._lock:
                await self._reload()
        except BaseException:
            self._storage = None
            await storage.close()
            raise
        return self

    def _upgraded(self, rec: KeyRecord) -> KeyRecord:
        """A key stored with a bare SHA-256, as keys are stored now.  One made with another
        secret cannot be rehashed: it gets a hash no key has (hex has no ':') and, like any
        key this secret cannot derive, makes way for a new one at its IP's next visit."""
        new = keysecret.rehash_legacy(self._secret, rec.ip, rec.generation, rec.key_hash)
        return replace(rec, key_hash=new or f"unverifiable:{rec.key_hash}",
                       key_prefix=rec.key_prefix[:PREFIX_LEN])

    def _hash(self, key: str) -> str:
        return keysecret.hash_key(self._secret, key)

    def subkey(self, purpose: str) -> bytes:
        """The secret's subkey for ``purpose`` (``keysecret.subkey``), e.g. the key that
        signs compaction items; the secret itself never leaves this service."""
        key = self._subkeys.get(purpose)
        if key is None:
            if not self._secret:
                raise KeyStoreError("the key store is not open")
            key = self._subkeys[purpose] = keysecret.subkey(self._secret, purpose)
        return key

    def _known(self, rec: KeyRecord) -> str | None:
        """The record's key, if this secret derives it (None: made with another secret)."""
        key = self.derive(rec.ip, rec.generation)
        return key if hmac.compare_digest(self._hash(key), rec.key_hash) else None

    async def close(self) -> None:
        if self._storage is not None:
            try:
                await self.flush()
            finally:
                storage, self._storage = self._storage, None
                await storage.close()

    async def _reload(self) -> None:
        """Rebuild the in-memory index from the database (the caller holds ``_lock``)."""
        repo = self.storage.keys
        by_hash, by_ip = {}, {}
        for rec in await repo.active():
            by_hash[rec.key_hash] = rec
            by_ip[rec.ip] = rec
        now = int(time.time())
        recent: dict[str, list[int]] = {}
        for ip, created in await repo.issued_since(now - DAY_S, ipv6_only=True):
            for bits in (64, 48, 32):
                recent.setdefault(supernet(ip, bits), []).append(created)
        hourly = [created for _, created in await repo.issued_since(now - HOUR_S)]
        self._by_hash, self._by_ip = by_hash, by_ip
        self._absent = set()
        self._recent, self._hourly = recent, hourly
        await self._reload_blocks()

    async def _reload_blocks(self) -> None:
        blocks = await self.storage.blocks.all()
        self._blocked = Blocklist(parse_network(b.cidr) for b in blocks)
        self._blocked_ips = {}

    async def refresh(self) -> bool:
        """Reload the index if another process (the admin CLI) changed keys or blocks."""
        async with self._lock:
            if not await self.storage.changed_elsewhere():
                return False
            await self._reload()
            return True

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """Have ``on_change()`` called when another process changes keys or blocks (then
        ``refresh``); False: the engine cannot tell (SQLite) or not now: poll ``refresh``."""
        return await self.storage.listen(on_change)

    async def flush(self) -> int:
        """Write the last-use times counted since the previous flush (off the request path)."""
        if not self._used or self._storage is None:
            return 0
        batch, self._used = self._used, {}
        try:
            await self._storage.keys.touch(batch)
        except Exception:
            for key_id, ts in batch.items():         # keep them for the next try
                self._used.setdefault(key_id, ts)
            raise
        return len(batch)

    # ------------------------------------------------------------------ the request path
    def verify(self, key: str) -> KeyRecord | None:
        """The active key's record (None: unknown or revoked); its use is counted.  A key
        of a network the operator blocked raises Forbidden."""
        h = keysecret.hash_key(self._secret, key)
        rec = self._by_hash.get(h)
        if rec is None or not hmac.compare_digest(rec.key_hash, h):
            return None
        if self._blocked and self.is_blocked(rec.ip):
            raise self._blocked_error(rec.ip)
        self._used[rec.id] = int(time.time())
        return rec

    def unseen(self, key: str, ip: str) -> bool:
        """Whether ``key``, not in the index, is one another process may just have issued to
        ``ip``: one of its identity's next ``UNSEEN_GENERATIONS`` keys (an HMAC each; a
        guessed key never is one, so guesses never reach the database)."""
        if len(self._absent) > ABSENT_MAX:
            self._absent.clear()
        if self._hash(key) in self._absent:
            return False                     # asked already: revoked, or never issued
        ident = identity_of(ip)
        rec = self._by_ip.get(ident)
        start = rec.generation + 1 if rec is not None else 0
        return any(hmac.compare_digest(self.derive(ident, generation), key)
                   for generation in range(start, start + UNSEEN_GENERATIONS))

    async def load(self, key: str) -> None:
        """Index the key another process issued (``unseen``), if it is active."""
        h = self._hash(key)
        found = await self.storage.keys.find(key_hash=h, status="active")
        for rec in found:
            self._remember(rec)
        if not found:
            self._absent.add(h)

    def is_blocked(self, ip: str) -> bool:
        if not self._blocked:
            return False
        hit = self._blocked_ips.get(ip)
        if hit is None:
            try:             # an address, or an identity's /64 (blocked if its start is)
                addr = ipaddress.ip_network(ip, strict=False).network_address
            except ValueError:
                return False
            hit = addr in self._blocked
            if len(self._blocked_ips) < 65536:
                self._blocked_ips[ip] = hit
        return hit

    @staticmethod
    def _blocked_error(ip: str) -> Forbidden:
        return AddressBlocked(f"The operator of this gateway has blocked your address ({ip}). "
                              f"If you think this is a mistake, contact the operator.",
                              code="vpn_detected")

    def admit(self, ip: str, per_minute: int) -> None:
        """Count a visit that may issue a key (``/v1/keys/me``, the homepage): at most
        ``per_minute`` a minute per IPv4 address or IPv6 /64 (0: no limit)."""
        if per_minute <= 0:
            return
        decision = self.visits.take(network_of(ip), per_minute)
        if not decision.allowed:
            raise visits_refused(ip, decision)

    def derive(self, ip: str, generation: int) -> str:
        """The IP's key of that generation."""
        return keysecret.derive(self._secret, ip, generation)

    def __len__(self) -> int:
        return len(self._by_hash)

    def rpm_of(self, key_hash: str, default: int) -> int:
        rec = self._by_hash.get(key_hash)
        return rec.rpm if rec is not None and rec.rpm else default

    # ------------------------------------------------------------------ issuance
    def _current(self, ip: str) -> tuple[str, KeyRecord] | None:
        rec = self._by_ip.get(ip)
        key = self._known(rec) if rec is not None else None
        return (key, rec) if key and rec else None

    async def issue(self, ip: str, s: Settings) -> tuple[str, KeyRecord]:
        """A visit that may issue a key (``/v1/keys/me``, the homepage), within the settings'
        limits: ``security.key_requests_per_minute`` such visits per IPv4 address or IPv6
        /64, then the new-key caps per /64, /48, /32 and per hour (429 beyond each)."""
        if self.shared_visits is None:
            self.admit(ip, s.key_requests_per_minute)
        elif s.key_requests_per_minute > 0:
            await self.shared_visits(ip, s.key_requests_per_minute)
        return await self.key_for_ip(ip, caps=IssuanceCaps(
            per_64=s.new_keys_per_ipv6_64_per_day, per_48=s.new_keys_per_ipv6_48_per_day,
            per_32=s.new_keys_per_ipv6_32_per_day, per_hour=s.new_keys_per_hour))

    async def key_for_ip(self, ip: str, new_per_64: int = 0,
                         caps: IssuanceCaps | None = None) -> tuple[str, KeyRecord]:
        """The active key of the address's identity (the IPv4 address, or the IPv6 /64),
        issuing one (committed before it is returned) if it has none, within ``caps``
        (``new_per_64`` alone: at most that many new keys a day per IPv6 /64)."""
        if self._blocked and self.is_blocked(ip):
            raise self._blocked_error(ip)
        caps = caps or IssuanceCaps(per_64=new_per_64)
        ip = identity_of(ip)
        hit = self._current(ip)
        if hit is not None:
            return hit
        async with self._lock:
            hit = self._current(ip)
            if hit is not None:
                return hit
            self._check_caps(ip, caps)
            if self.shared_caps is not None:
                await self.shared_caps(ip, caps)
            rec = self._by_ip.get(ip)
            if rec is not None:          # the secret file was replaced: the old key cannot
                await self._revoke_record(rec)       # be given back, so it makes way
            return await self._issue(ip)

    def _check_caps(self, ident: str, caps: IssuanceCaps) -> None:
        """The caps against this process's record (the database's, as of the last
        refresh); ``shared_caps`` (Redis) checks and counts them across processes too."""
        now = int(time.time())
        if caps.per_hour > 0:
            self._hourly = [t for t in self._hourly if t > now - HOUR_S]
            if len(self._hourly) >= caps.per_hour:
                raise hourly_cap(caps.per_hour, self._hourly[0] + HOUR_S - now)
        if ":" not in ident:
            return
        for bits, limit in ((64, caps.per_64), (48, caps.per_48), (32, caps.per_32)):
            if limit <= 0:
                continue
            net = supernet(ident, bits)
            recent = [t for t in self._recent.get(net, ()) if t > now - DAY_S]
            self._recent[net] = recent
            if len(recent) >= limit:
                raise network_cap(net, bits, limit, recent[0] + DAY_S - now)

    async def _issue(self, ip: str, rpm: int | None = None) -> tuple[str, KeyRecord]:
        """Insert the IP's next key (the caller holds ``_lock``); if another process (the
        CLI) issued this IP a key since our last refresh, that one is the IP's key."""
        repo = self.storage.keys
        for _ in range(3):
            generation = await repo.next_generation(ip)
            key = self.derive(ip, generation)
            new = NewKey(self._hash(key), key[:PREFIX_LEN], ip, generation, int(time.time()),
                         rpm)
            rec = await repo.insert_key(new)
            if rec is None:                  # that generation went to a key revoked since
                continue
            self._remember(rec)
            if rec.key_hash == new.key_hash:
                self._hourly.append(rec.created)
                if ":" in ip:
                    for bits in (64, 48, 32):
                        self._recent.setdefault(supernet(ip, bits), []).append(rec.created)
                return key, rec
            hit = self._current(ip)
            if hit is None:
                raise KeyStoreError(f"another process issued {ip} a key this one cannot "
                                    f"derive: do all processes read the same secret file?")
            return hit
        raise KeyStoreError(f"could not issue {ip} a key: its generations keep being taken")

    def _remember(self, rec: KeyRecord) -> None:
        self._by_hash[rec.key_hash] = rec
        self._by_ip[rec.ip] = rec

    async def _revoke_record(self, rec: KeyRecord) -> None:
        await self.storage.keys.revoke(rec.id, int(time.time()))
        self._by_hash.pop(rec.key_hash, None)
        current = self._by_ip.get(rec.ip)
        if current is not None and current.id == rec.id:
            del self._by_ip[rec.ip]

    # ------------------------------------------------------------------ administration
    async def find(self, key_or_ip: str) -> list[KeyRecord]:
        """Every key (active or not) matching a full key, a key prefix, or an IP.  A prefix
        longer than the stored one is checked against each candidate's key, derived again
        (several keys share each stored prefix)."""
        repo = self.storage.keys
        if keysecret.looks_like_key(key_or_ip):
            return await repo.find(key_hash=self._hash(key_or_ip))
        if key_or_ip.startswith(KEY_PREFIX):
            found = await repo.find(key_prefix=key_or_ip[:PREFIX_LEN])
            return [rec for rec in found        # None: made with another secret; keep it
                    if (key := self._known(rec)) is None or key.startswith(key_or_ip)]
        try:
            ip = str(ipaddress.ip_address(key_or_ip))    # the form keys are stored in
        except ValueError:
            ip = key_or_ip
        found = await repo.find(ip=ip)
        if ":" in ip and "/" not in ip:                  # and the IPv6 address's /64 key
            found += await repo.find(ip=identity_of(ip))
        return found

    async def all_records(self, status: str | None = None) -> list[KeyRecord]:
        """Every key, oldest first; only those with ``status`` (e.g. ``active``) if given."""
        return await self.storage.keys.find(status=status)

    async def revoke(self, rec: KeyRecord) -> None:
        async with self._lock:
            await self._revoke_record(rec)

    async def rotate(self, ip: str) -> tuple[str, KeyRecord]:
        """Revoke the address's key (or its /64's) and issue the next one."""
        async with self._lock:
            rpm = None
            rec = self._by_ip.get(ip) or self._by_ip.get(identity_of(ip))
            ip = identity_of(ip)
            if rec is not None:
                rpm = rec.rpm
                await self._revoke_record(rec)
            return await self._issue(ip, rpm)

    async def set_rpm(self, rec: KeyRecord, rpm: int | None) -> KeyRecord:
        async with self._lock:
            await self.storage.keys.set_rpm(rec.id, rpm)
            new = replace(rec, rpm=rpm)
            if rec.status == "active":
                self._remember(new)
            return new

    async def blocks(self) -> list[BlockRecord]:
        """The operator's blocks: (cidr, created, note), oldest first."""
        return await self.storage.blocks.all()

    async def block(self, cidr: str, note: str = "") -> bool:
        """Block an IP or CIDR (False if it already was)."""
        net = str(parse_network(cidr))
        async with self._lock:
            added = await self.storage.blocks.add(net, int(time.time()), note)
            await self._reload_blocks()
            return added

    async def unblock(self, cidr: str) -> bool:
        """Lift a block (False if there was none for exactly that IP or CIDR)."""
        net = str(parse_network(cidr))
        async with self._lock:
            removed = await self.storage.blocks.remove(net)
            await self._reload_blocks()
            return removed
