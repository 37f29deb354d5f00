"""API keys in SQLite, bound to the IP that asked for them; and the operator's IP blocks.

* A key is ``api-`` + 16 characters of ``[a-z0-9]``, derived as HMAC(secret, "ip|generation").
  The database stores only its SHA-256, so a copy of the database alone reveals no usable key;
  the secret lives in a separate file (``<database>.secret``, mode 0600, written atomically).
* The same IP gets the same key back, across restarts, by deriving it again.  Revoking or
  rotating bumps the IP's generation, so its next key is a different one.
* Every lookup on the request path is a dict lookup; SQLite is touched only to issue a key
  (committed before it is returned: a ``kill -9`` loses no key a client has seen), by the admin
  CLI, by ``flush`` (when each key was last used, counted in memory, written in batches) and
  by the periodic ``refresh`` that picks up the CLI's writes.  Triggers count every change to
  keys and blocks in ``key_changes``, so ``refresh`` reloads only when the CLI changed
  something (not when another connection wrote usage rows).
* Issuance limits: at most ``new_per_64`` new keys a day per IPv6 /64 (IPv6 addresses are
  cheap), and ``admit`` (a token bucket per IPv4 address or IPv6 /64) in front of every visit
  that may issue one.  Blocked networks (``apiarium keys block``) get 403 ``vpn_detected``
  on issuance and on every request made with one of their keys.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiosqlite

from .errors import Forbidden, RateLimited
from .keysecret import KEY_PREFIX, derive, hash_key, load_secret, looks_like_key
from .netguard import Blocklist, network_of, parse_network
from .ratelimit import TokenBuckets

DAY_S = 86400
FLUSH_BATCH = 5000        # rows per UPDATE statement when writing last-used times

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id          INTEGER PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    key_prefix  TEXT NOT NULL,
    ip          TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    rpm         INTEGER,
    status      TEXT NOT NULL DEFAULT 'active',
    revoked_at  INTEGER,
    last_used   INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_one_active_per_ip ON keys(ip) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS keys_ip ON keys(ip);
CREATE INDEX IF NOT EXISTS keys_created ON keys(created);
CREATE TABLE IF NOT EXISTS blocks (
    cidr        TEXT PRIMARY KEY,
    created     INTEGER NOT NULL,
    note        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS key_changes (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    n           INTEGER NOT NULL
);
INSERT OR IGNORE INTO key_changes (id, n) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS keys_ins AFTER INSERT ON keys
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS keys_upd AFTER UPDATE OF status, rpm, generation, ip ON keys
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS keys_del AFTER DELETE ON keys
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS blocks_ins AFTER INSERT ON blocks
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS blocks_upd AFTER UPDATE ON blocks
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS blocks_del AFTER DELETE ON blocks
    BEGIN UPDATE key_changes SET n = n + 1 WHERE id = 1; END;
"""
_COLUMNS = "id, key_hash, key_prefix, ip, generation, created, rpm, status, last_used"


class AddressBlocked(Forbidden):
    """403 ``vpn_detected`` because the operator blocked the address (not a VPN check)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    key_hash: str
    key_prefix: str       # "api-ab12" : safe to log and show
    ip: str
    generation: int
    created: int
    rpm: int | None       # None: the configured default
    status: str = "active"
    last_used: int | None = None    # as last written by ``flush`` (None: never used)


class KeyStore:
    def __init__(self, db_path: Path, secret_path: Path | None = None):
        self.db_path = Path(db_path)
        self.secret_path = Path(secret_path or f"{db_path}.secret")
        self._db: aiosqlite.Connection | None = None
        self._secret = b""
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_ip: dict[str, KeyRecord] = {}
        self._lock = asyncio.Lock()          # every write and every reload, one at a time
        self._data_version = -1
        self._changes = -1                   # key_changes.n as this process knows it
        self._blocked = Blocklist()
        self._blocked_ips: dict[str, bool] = {}
        self._new64: dict[str, list[int]] = {}   # IPv6 /64 -> creation times of its new keys
        self._used: dict[int, int] = {}          # key id -> last use, not yet written
        self.visits = TokenBuckets()             # per network: visits that may issue a key

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> KeyStore:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = load_secret(self.secret_path)
        self._db = await aiosqlite.connect(self.db_path, isolation_level=None)
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate()
        await self._db.executescript(SCHEMA)
        async with self._lock:
            await self._reload()
        return self

    async def _migrate(self) -> None:
        """Databases made before ``last_used`` existed get the column."""
        cols = [r[1] for r in await self._db.execute_fetchall("PRAGMA table_info(keys)")]
        if cols and "last_used" not in cols:
            try:
                await self._db.execute("ALTER TABLE keys ADD COLUMN last_used INTEGER")
            except sqlite3.OperationalError as exc:     # another process got there first
                if "duplicate column" not in str(exc):
                    raise

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self.flush()
            finally:
                await self._db.close()
                self._db = None

    async def _reload(self) -> None:
        """Rebuild the in-memory index from the database (the caller holds ``_lock``)."""
        db = self._db
        version = (await db.execute_fetchall("PRAGMA data_version"))[0][0]
        changes = (await db.execute_fetchall("SELECT n FROM key_changes WHERE id = 1"))[0][0]
        rows = await db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM keys WHERE status = 'active'")
        by_hash, by_ip = {}, {}
        for row in rows:
            rec = KeyRecord(*row)
            by_hash[rec.key_hash] = rec
            by_ip[rec.ip] = rec
        blocks = await db.execute_fetchall("SELECT cidr FROM blocks")
        new64: dict[str, list[int]] = {}
        for ip, created in await db.execute_fetchall(
                "SELECT ip, created FROM keys WHERE created > ? AND instr(ip, ':') > 0 "
                "ORDER BY created", (int(time.time()) - DAY_S,)):
            new64.setdefault(network_of(ip), []).append(created)
        self._by_hash, self._by_ip, self._new64 = by_hash, by_ip, new64
        self._blocked = Blocklist(parse_network(c) for (c,) in blocks)
        self._blocked_ips = {}
        self._data_version, self._changes = version, changes

    async def refresh(self) -> bool:
        """Reload the index if another process (the admin CLI) changed keys or blocks."""
        async with self._lock:
            version = (await self._db.execute_fetchall("PRAGMA data_version"))[0][0]
            if version == self._data_version:
                return False
            self._data_version = version
            rows = await self._db.execute_fetchall("SELECT n FROM key_changes WHERE id = 1")
            if rows[0][0] == self._changes:       # e.g. usage rows written: nothing for us
                return False
            await self._reload()
            return True

    async def _write(self, sql: str, args: tuple = ()) -> aiosqlite.Cursor:
        """One statement that the change triggers count (the caller holds ``_lock``)."""
        cur = await self._db.execute(sql, args)
        self._changes += max(cur.rowcount, 0)
        return cur

    async def flush(self) -> int:
        """Write the last-use times counted since the previous flush (off the request path)."""
        if not self._used or self._db is None:
            return 0
        batch, self._used = self._used, {}
        items = list(batch.items())
        try:
            for i in range(0, len(items), FLUSH_BATCH):
                chunk = items[i:i + FLUSH_BATCH]
                values = ",".join("(?, ?)" for _ in chunk)
                await self._db.execute(
                    f"WITH t(id, ts) AS (VALUES {values}) UPDATE keys SET last_used = "
                    f"(SELECT ts FROM t WHERE t.id = keys.id) WHERE id IN (SELECT id FROM t)",
                    [v for pair in chunk for v in pair])
        except Exception:
            for key_id, ts in batch.items():         # keep them for the next try
                self._used.setdefault(key_id, ts)
            raise
        return len(items)

    # ------------------------------------------------------------------ the request path
    def verify(self, key: str) -> KeyRecord | None:
        """The active key's record (None: unknown or revoked); its use is counted.  A key
        of a network the operator blocked raises Forbidden."""
        h = hash_key(key)
        rec = self._by_hash.get(h)
        if rec is None or not hmac.compare_digest(rec.key_hash, h):
            return None
        if self._blocked and self.is_blocked(rec.ip):
            raise self._blocked_error(rec.ip)
        self._used[rec.id] = int(time.time())
        return rec

    def is_blocked(self, ip: str) -> bool:
        if not self._blocked:
            return False
        hit = self._blocked_ips.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
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
            wait = decision.headers()["Retry-After"]
            raise RateLimited(f"Too many requests for an API key from {ip}: at most "
                              f"{per_minute} a minute. Wait {wait} s; your key does not "
                              f"change, so keep the one you already have.",
                              retry_after=decision.retry_after)

    def derive(self, ip: str, generation: int) -> str:
        return derive(self._secret, ip, generation)

    def __len__(self) -> int:
        return len(self._by_hash)

    def rpm_of(self, key_hash: str, default: int) -> int:
        rec = self._by_hash.get(key_hash)
        return rec.rpm if rec is not None and rec.rpm else default

    # ------------------------------------------------------------------ writes
    def _current(self, ip: str) -> tuple[str, KeyRecord] | None:
        rec = self._by_ip.get(ip)
        if rec is not None:
            key = self.derive(ip, rec.generation)
            if hmac.compare_digest(hash_key(key), rec.key_hash):
                return key, rec
        return None

    async def key_for_ip(self, ip: str, new_per_64: int = 0) -> tuple[str, KeyRecord]:
        """The IP's active key, issuing one (committed before it is returned) if it has none.
        ``new_per_64``: at most that many new keys a day per IPv6 /64 (0: no limit)."""
        if self._blocked and self.is_blocked(ip):
            raise self._blocked_error(ip)
        hit = self._current(ip)
        if hit is not None:
            return hit
        async with self._lock:
            hit = self._current(ip)
            if hit is not None:
                return hit
            self._check_new64(ip, new_per_64)
            rec = self._by_ip.get(ip)
            if rec is not None:          # the secret file was replaced: the old key cannot
                await self._revoke_record(rec)       # be given back, so it makes way
            return await self._issue(ip)

    def _check_new64(self, ip: str, limit: int) -> None:
        if limit <= 0 or ":" not in ip:
            return
        net = network_of(ip)
        now = int(time.time())
        recent = [t for t in self._new64.get(net, ()) if t > now - DAY_S]
        self._new64[net] = recent
        if len(recent) >= limit:
            wait = recent[0] + DAY_S - now
            hours = f"{wait / 3600:.0f} hours" if wait >= 5400 else f"{max(1, wait // 60)} minutes"
            raise RateLimited(f"The IPv6 network {net} has received {limit} new API keys in the "
                              f"last 24 hours, the most this gateway issues per /64. Use a key "
                              f"already issued to your network (each works from the address "
                              f"that asked for it), or try again in about {hours}.",
                              retry_after=wait)

    async def _issue(self, ip: str, rpm: int | None = None) -> tuple[str, KeyRecord]:
        """Insert the IP's next key (the caller holds ``_lock``)."""
        rows = await self._db.execute_fetchall(
            "SELECT COALESCE(MAX(generation), -1) + 1 FROM keys WHERE ip = ?", (ip,))
        generation = rows[0][0]
        key = self.derive(ip, generation)
        now = int(time.time())
        h = hash_key(key)
        try:
            cur = await self._write(
                "INSERT INTO keys (key_hash, key_prefix, ip, generation, created, rpm) "
                "VALUES (?, ?, ?, ?, ?, ?)", (h, key[:8], ip, generation, now, rpm))
        except sqlite3.IntegrityError:
            # another process (the CLI) issued this IP a key since our last refresh
            await self._reload()
            hit = self._current(ip)
            if hit is None:
                raise
            return hit
        rec = KeyRecord(cur.lastrowid, h, key[:8], ip, generation, now, rpm)
        await cur.close()
        self._by_hash[h] = rec
        self._by_ip[ip] = rec
        if ":" in ip:
            self._new64.setdefault(network_of(ip), []).append(now)
        return key, rec

    async def _revoke_record(self, rec: KeyRecord) -> None:
        await self._write("UPDATE keys SET status = 'revoked', revoked_at = ? WHERE id = ? "
                          "AND status = 'active'", (int(time.time()), rec.id))
        self._by_hash.pop(rec.key_hash, None)
        current = self._by_ip.get(rec.ip)
        if current is not None and current.id == rec.id:
            del self._by_ip[rec.ip]

    # ------------------------------------------------------------------ administration
    async def find(self, key_or_ip: str) -> list[KeyRecord]:
        """Every key (active or not) matching a full key, a key prefix, or an IP."""
        if looks_like_key(key_or_ip):
            where, arg = "key_hash = ?", hash_key(key_or_ip)
        elif key_or_ip.startswith(KEY_PREFIX):
            where, arg = "key_prefix = ?", key_or_ip[:8]
        else:
            where, arg = "ip = ?", key_or_ip
            try:
                arg = str(ipaddress.ip_address(key_or_ip))    # the form keys are stored in
            except ValueError:
                pass
        return await self.all_records(where, (arg,))

    async def all_records(self, where: str = "1", args: tuple = ()) -> list[KeyRecord]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM keys WHERE {where} ORDER BY id", args)
        return [KeyRecord(*row) for row in rows]

    async def revoke(self, rec: KeyRecord) -> None:
        async with self._lock:
            await self._revoke_record(rec)

    async def rotate(self, ip: str) -> tuple[str, KeyRecord]:
        async with self._lock:
            rpm = None
            rec = self._by_ip.get(ip)
            if rec is not None:
                rpm = rec.rpm
                await self._revoke_record(rec)
            return await self._issue(ip, rpm)

    async def set_rpm(self, rec: KeyRecord, rpm: int | None) -> KeyRecord:
        async with self._lock:
            await self._write("UPDATE keys SET rpm = ? WHERE id = ?", (rpm, rec.id))
            new = replace(rec, rpm=rpm)
            if rec.status == "active":
                self._by_hash[rec.key_hash] = new
                self._by_ip[rec.ip] = new
            return new

    async def blocks(self) -> list[tuple[str, int, str]]:
        """The operator's blocks: (cidr, created, note), oldest first."""
        return [tuple(r) for r in await self._db.execute_fetchall(
            "SELECT cidr, created, note FROM blocks ORDER BY created, cidr")]

    async def block(self, cidr: str, note: str = "") -> bool:
        """Block an IP or CIDR (False if it already was)."""
        net = str(parse_network(cidr))
        async with self._lock:
            cur = await self._write("INSERT OR IGNORE INTO blocks (cidr, created, note) "
                                    "VALUES (?, ?, ?)", (net, int(time.time()), note))
            await self._reload_blocks()
            return cur.rowcount > 0

    async def unblock(self, cidr: str) -> bool:
        """Lift a block (False if there was none for exactly that IP or CIDR)."""
        net = str(parse_network(cidr))
        async with self._lock:
            cur = await self._write("DELETE FROM blocks WHERE cidr = ?", (net,))
            await self._reload_blocks()
            return cur.rowcount > 0

    async def _reload_blocks(self) -> None:
        blocks = await self._db.execute_fetchall("SELECT cidr FROM blocks")
        self._blocked = Blocklist(parse_network(c) for (c,) in blocks)
        self._blocked_ips = {}
