"""API keys in SQLite, bound to the IP that asked for them.

* A key is ``api-`` + 16 characters of ``[a-z0-9]``, derived as HMAC(secret, "ip|generation").
  The database stores only its SHA-256, so a copy of the database alone reveals no usable key;
  the secret lives in a separate file (``<database>.secret``, mode 0600).
* The same IP gets the same key back, across restarts, by deriving it again.  Revoking or
  rotating bumps the IP's generation, so its next key is a different one.
* Every lookup on the request path is a dict lookup; SQLite is touched only to issue a key, by
  the admin CLI, and by the periodic ``refresh`` that picks up other processes' writes.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiosqlite

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "api-"

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
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_one_active_per_ip ON keys(ip) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS keys_ip ON keys(ip);
"""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(text: str) -> bool:
    return (len(text) == 20 and text.startswith(KEY_PREFIX)
            and all(c in _ALPHABET for c in text[4:]))


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


class KeyStore:
    def __init__(self, db_path: Path, secret_path: Path | None = None):
        self.db_path = Path(db_path)
        self.secret_path = Path(secret_path or f"{db_path}.secret")
        self._db: aiosqlite.Connection | None = None
        self._secret = b""
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_ip: dict[str, KeyRecord] = {}
        self._ip_locks: dict[str, asyncio.Lock] = {}
        self._data_version = -1

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> "KeyStore":
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = self._load_secret()
        self._db = await aiosqlite.connect(self.db_path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(SCHEMA)
        await self._reload()
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    def _load_secret(self) -> bytes:
        try:
            return bytes.fromhex(self.secret_path.read_text().strip())
        except FileNotFoundError:
            pass
        secret = secrets.token_bytes(32)
        self.secret_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return secret

    async def _reload(self) -> None:
        by_hash, by_ip = {}, {}
        async with self._db.execute(
                "SELECT id, key_hash, key_prefix, ip, generation, created, rpm, status "
                "FROM keys WHERE status = 'active'") as cur:
            async for row in cur:
                rec = KeyRecord(*row)
                by_hash[rec.key_hash] = rec
                by_ip[rec.ip] = rec
        self._by_hash, self._by_ip = by_hash, by_ip
        async with self._db.execute("PRAGMA data_version") as cur:
            self._data_version = (await cur.fetchone())[0]

    async def refresh(self) -> bool:
        """Reload the index if another process (the admin CLI) changed the database."""
        async with self._db.execute("PRAGMA data_version") as cur:
            version = (await cur.fetchone())[0]
        if version == self._data_version:
            return False
        await self._reload()
        return True

    # ------------------------------------------------------------------ the request path
    def verify(self, key: str) -> KeyRecord | None:
        h = hash_key(key)
        rec = self._by_hash.get(h)
        if rec is None or not hmac.compare_digest(rec.key_hash, h):
            return None
        return rec

    def derive(self, ip: str, generation: int) -> str:
        digest = hmac.new(self._secret, f"{ip}|{generation}".encode(), hashlib.sha256).digest()
        n = int.from_bytes(digest, "big")
        chars = []
        for _ in range(16):
            n, r = divmod(n, 36)
            chars.append(_ALPHABET[r])
        return KEY_PREFIX + "".join(chars)

    def __len__(self) -> int:
        return len(self._by_hash)

    def rpm_of(self, key_hash: str, default: int) -> int:
        rec = self._by_hash.get(key_hash)
        return rec.rpm if rec is not None and rec.rpm else default

    # ------------------------------------------------------------------ writes
    async def key_for_ip(self, ip: str) -> tuple[str, KeyRecord]:
        """The IP's active key, issuing one (committed before it is returned) if it has none."""
        rec = self._by_ip.get(ip)
        if rec is not None:
            key = self.derive(ip, rec.generation)
            if hash_key(key) == rec.key_hash:
                return key, rec
        lock = self._ip_locks.setdefault(ip, asyncio.Lock())
        try:
            async with lock:
                rec = self._by_ip.get(ip)
                if rec is not None:
                    key = self.derive(ip, rec.generation)
                    if hash_key(key) == rec.key_hash:
                        return key, rec
                    # the secret file was replaced: the old key cannot be given back
                    await self._revoke_record(rec)
                return await self._issue(ip)
        finally:
            if not lock.locked() and not lock._waiters:
                self._ip_locks.pop(ip, None)

    async def _issue(self, ip: str, rpm: int | None = None) -> tuple[str, KeyRecord]:
        async with self._db.execute("SELECT COALESCE(MAX(generation), -1) + 1 FROM keys "
                                    "WHERE ip = ?", (ip,)) as cur:
            generation = (await cur.fetchone())[0]
        key = self.derive(ip, generation)
        now = int(time.time())
        h = hash_key(key)
        cur = await self._db.execute(
            "INSERT INTO keys (key_hash, key_prefix, ip, generation, created, rpm) "
            "VALUES (?, ?, ?, ?, ?, ?)", (h, key[:8], ip, generation, now, rpm))
        rec = KeyRecord(cur.lastrowid, h, key[:8], ip, generation, now, rpm)
        await cur.close()
        self._by_hash[h] = rec
        self._by_ip[ip] = rec
        return key, rec

    async def _revoke_record(self, rec: KeyRecord) -> None:
        await self._db.execute("UPDATE keys SET status = 'revoked', revoked_at = ? WHERE id = ?",
                               (int(time.time()), rec.id))
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
        return await self.all_records(where, (arg,))

    async def all_records(self, where: str = "1", args: tuple = ()) -> list[KeyRecord]:
        async with self._db.execute(
                f"SELECT id, key_hash, key_prefix, ip, generation, created, rpm, status "
                f"FROM keys WHERE {where} ORDER BY id", args) as cur:
            return [KeyRecord(*row) async for row in cur]

    async def revoke(self, rec: KeyRecord) -> None:
        await self._revoke_record(rec)

    async def rotate(self, ip: str) -> tuple[str, KeyRecord]:
        async with self._ip_locks.setdefault(ip, asyncio.Lock()):
            rpm = None
            rec = self._by_ip.get(ip)
            if rec is not None:
                rpm = rec.rpm
                await self._revoke_record(rec)
            return await self._issue(ip, rpm)

    async def set_rpm(self, rec: KeyRecord, rpm: int | None) -> KeyRecord:
        await self._db.execute("UPDATE keys SET rpm = ? WHERE id = ?", (rpm, rec.id))
        new = replace(rec, rpm=rpm)
        if rec.status == "active":
            self._by_hash[rec.key_hash] = new
            self._by_ip[rec.ip] = new
        return new
