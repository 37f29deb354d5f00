"""KeyService without a server: one key per IP, revocation and rotation, the IPv6 /64 cap,
visit buckets, the operator's blocks, picking up another process's writes; and what is at
rest: file modes, HMAC hashes, two-character prefixes, the rehash of older databases."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import sqlite3
import stat
import subprocess
import sys

import pytest

from apiarium.errors import RateLimited
from apiarium.keysecret import derive
from apiarium.services.keys import AddressBlocked, IssuanceCaps, KeyService
from apiarium.usage import UsageLedger, today

KEY = re.compile(r"^api-[a-z0-9]{16}$")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "apiarium.sqlite3"


def test_same_ip_same_key_also_after_a_restart(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("192.0.2.1")
        assert KEY.match(key) and rec.ip == "192.0.2.1" and rec.generation == 0
        assert (await keys.key_for_ip("192.0.2.1"))[0] == key
        other, _ = await keys.key_for_ip("192.0.2.2")
        assert other != key and len(keys) == 2
        assert keys.verify(key) == rec and keys.verify(other).ip == "192.0.2.2"
        assert keys.verify("api-0000000000000000") is None
        await keys.close()
        again = await KeyService(db).open()
        assert (await again.key_for_ip("192.0.2.1"))[0] == key
        assert again.verify(key).id == rec.id
        await again.close()
    run(go())


def test_revoke_gives_a_new_different_key_and_rotate_keeps_the_rpm(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("192.0.2.1")
        rec = await keys.set_rpm(rec, 9)
        assert keys.rpm_of(rec.key_hash, 4) == 9 and keys.rpm_of("unknown", 4) == 4
        await keys.revoke(rec)
        assert keys.verify(key) is None and len(keys) == 0
        new, new_rec = await keys.key_for_ip("192.0.2.1")
        assert KEY.match(new) and new != key and new_rec.generation == 1
        assert new_rec.rpm is None                      # a new key starts at the default
        new_rec = await keys.set_rpm(new_rec, 3)
        rotated, rot_rec = await keys.rotate("192.0.2.1")
        assert rotated not in (key, new) and rot_rec.rpm == 3
        assert keys.verify(new) is None and keys.verify(rotated) == rot_rec
        statuses = [r.status for r in await keys.find("192.0.2.1")]
        assert statuses == ["revoked", "revoked", "active"]
        assert [r.ip for r in await keys.all_records("active")] == ["192.0.2.1"]
        assert len(await keys.all_records()) == 3
        await keys.close()
    run(go())


def test_find_by_key_prefix_or_ip(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("2001:db8::1")
        assert await keys.find(key) == [rec]
        assert rec in await keys.find(key[:8])
        assert await keys.find("2001:0db8:0000::1") == [rec]     # any spelling of the IP
        assert await keys.find("api-zzzzzzzzzzzzzzzz") == []
        await keys.close()
    run(go())


def test_an_ipv6_64_is_one_identity_with_one_key(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("2001:db8:1:2::1")
        assert rec.ip == "2001:db8:1:2::/64"
        for other in ("2001:db8:1:2::99", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
            assert await keys.key_for_ip(other) == (key, rec)     # privacy addresses too
        assert (await keys.key_for_ip("2001:db8:1:3::1"))[0] != key
        assert await keys.find("2001:db8:1:2::5") == [rec]        # the CLI finds it by address
        await keys.close()
    run(go())


def test_ipv6_48_and_32_get_a_limited_number_of_new_keys_a_day(db):
    async def go():
        keys = await KeyService(db).open()
        caps = IssuanceCaps(per_48=5, per_32=8)
        for i in range(5):                                          # five /64s of one /48
            await keys.key_for_ip(f"2001:db8:1:{i}::1", caps=caps)
        with pytest.raises(RateLimited) as exc:
            await keys.key_for_ip("2001:db8:1:99::1", caps=caps)
        assert "2001:db8:1::/48" in exc.value.message and "/48" in exc.value.message
        assert 23 * 3600 < exc.value.retry_after <= 24 * 3600
        for i in range(3):                                          # the /32 fills up next
            await keys.key_for_ip(f"2001:db8:{i + 2}::1", caps=caps)
        with pytest.raises(RateLimited) as exc:
            await keys.key_for_ip("2001:db8:7::1", caps=caps)
        assert "2001:db8::/32" in exc.value.message
        # keys already issued still come back; another /32 and IPv4 are not affected
        assert (await keys.key_for_ip("2001:db8:1:3::7", caps=caps))[1].ip == "2001:db8:1:3::/64"
        await keys.key_for_ip("2001:db9::1", caps=caps)
        await keys.key_for_ip("192.0.2.9", caps=caps)
        await keys.close()
        again = await KeyService(db).open()          # the counts are kept in the database
        with pytest.raises(RateLimited):
            await again.key_for_ip("2001:db8:1:98::1", caps=caps)
        await again.key_for_ip("2001:db8:1:98::1")                   # no caps: no limit
        await again.close()
    run(go())


def test_new_keys_per_hour_cap_the_whole_gateway(db):
    async def go():
        keys = await KeyService(db).open()
        caps = IssuanceCaps(per_hour=3)
        for i in range(3):
            await keys.key_for_ip(f"192.0.2.{i}", caps=caps)
        with pytest.raises(RateLimited) as exc:
            await keys.key_for_ip("198.51.100.1", caps=caps)
        assert "last hour" in exc.value.message and 3500 < exc.value.retry_after <= 3600
        assert (await keys.key_for_ip("192.0.2.1", caps=caps))[1].ip == "192.0.2.1"
        await keys.close()
    run(go())


def test_admit_counts_visits_per_network(db):
    async def go():
        keys = await KeyService(db).open()
        keys.admit("192.0.2.1", 2)
        keys.admit("192.0.2.1", 2)
        with pytest.raises(RateLimited) as exc:
            keys.admit("192.0.2.1", 2)
        assert "at most 2 a minute" in exc.value.message
        keys.admit("192.0.2.2", 2)                     # another IPv4 address
        keys.admit("2001:db8::1", 1)
        with pytest.raises(RateLimited):
            keys.admit("2001:db8::2", 1)               # the same /64
        for _ in range(10):
            keys.admit("192.0.2.1", 0)                 # 0: no limit
        await keys.close()
    run(go())


def test_blocks_refuse_issuance_and_the_network_keys(db):
    async def go():
        keys = await KeyService(db).open()
        key, _ = await keys.key_for_ip("198.51.100.7")
        assert await keys.block("198.51.100.0/24", "abuse")
        assert not await keys.block("198.51.100.0/24")
        assert keys.is_blocked("198.51.100.7") and not keys.is_blocked("192.0.2.1")
        with pytest.raises(AddressBlocked) as exc:
            keys.verify(key)
        assert exc.value.code == "vpn_detected" and "blocked your address" in exc.value.message
        with pytest.raises(AddressBlocked):
            await keys.key_for_ip("198.51.100.8")
        assert [(b.cidr, b.note) for b in await keys.blocks()] == [("198.51.100.0/24", "abuse")]
        assert await keys.unblock("198.51.100.0/24")
        assert not await keys.unblock("198.51.100.0/24")
        assert keys.verify(key) is not None
        await keys.close()
    run(go())


def test_refresh_sees_another_connections_writes(db):
    async def go():
        server = await KeyService(db).open()
        cli = await KeyService(db).open()
        try:
            key, _ = await server.key_for_ip("192.0.2.1")
            assert not await server.refresh()               # nothing new
            assert await cli.refresh()                      # the server's new key
            (found,) = await cli.find(key)
            await cli.revoke(found)
            assert server.verify(key) is not None            # not seen yet...
            assert await server.refresh()                    # ...until the refresh
            assert server.verify(key) is None and len(server) == 0
            assert not await server.refresh()
            await cli.block("192.0.2.0/24")
            assert await server.refresh() and server.is_blocked("192.0.2.1")
            await cli.unblock("192.0.2.0/24")
            assert await server.refresh() and not server.is_blocked("192.0.2.1")
            # another process issued the IP a key since: it is that one the IP gets
            new, _ = await cli.key_for_ip("192.0.2.1")
            assert (await server.key_for_ip("192.0.2.1"))[0] == new
            await cli.set_rpm((await cli.find(new))[0], 7)
            assert await server.refresh()
            assert server.verify(new).rpm == 7
        finally:
            await server.close()
            await cli.close()
    run(go())


def test_flush_writes_when_each_key_was_last_used(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("192.0.2.1")
        assert rec.last_used is None and await keys.flush() == 0
        keys.verify(key)
        assert await keys.flush() == 1 and await keys.flush() == 0
        (stored,) = await keys.find(key)
        assert stored.last_used is not None
        other = await KeyService(db).open()
        assert not await other.refresh()                # last-used times are not a change
        keys.verify(key)
        await keys.close()                              # close flushes too
        await other.close()
    run(go())


# --------------------------------------------------------------------------- at rest

def test_files_are_private_to_the_owner(tmp_path):
    db = tmp_path / "fresh" / "apiarium.sqlite3"
    old_umask = os.umask(0o022)                      # what most shells give
    try:
        async def go():
            keys = await KeyService(db).open()
            await keys.key_for_ip("192.0.2.1")
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
            await keys.close()
            return modes
        modes = run(go())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert modes == {"apiarium.sqlite3": 0o600, "apiarium.sqlite3-wal": 0o600,
                     "apiarium.sqlite3-shm": 0o600, "apiarium.sqlite3.secret": 0o600}


def test_files_left_readable_by_older_versions_are_tightened(tmp_path):
    db = tmp_path / "apiarium.sqlite3"
    secret = tmp_path / "apiarium.sqlite3.secret"
    sqlite3.connect(db).close()
    secret.write_text("ab" * 32 + "\n")
    for path in (db, secret):
        path.chmod(0o644)

    async def go():
        await (await KeyService(db).open()).close()
    run(go())
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_database_keeps_an_hmac_and_a_two_character_prefix(db):
    async def go():
        keys = await KeyService(db).open()
        key, rec = await keys.key_for_ip("192.0.2.1")
        await keys.close()
        return key, rec
    key, rec = run(go())
    secret = bytes.fromhex((db.parent / "apiarium.sqlite3.secret").read_text().strip())
    assert rec.key_hash == hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()
    assert rec.key_prefix == key[:6] and len(rec.key_prefix) == len("api-") + 2
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert hashlib.sha256(key.encode()).hexdigest() not in dump
    assert key[:6] in dump and key[:7] not in dump


def test_find_by_prefix_may_match_several_keys(db):
    async def go():
        keys = await KeyService(db).open()
        seen: dict[str, str] = {}
        for i in range(1, 1000):                      # two keys sharing "api-" + 2 chars
            key, _ = await keys.key_for_ip(f"10.0.{i // 250}.{i % 250}")
            if key[:6] in seen:
                break
            seen[key[:6]] = key
        first = seen[key[:6]]
        both = await keys.find(key[:6])
        assert len(both) >= 2
        assert {r.id for r in await keys.find(first)} < {r.id for r in both}
        # a longer prefix is checked against each candidate's key
        assert await keys.find(key[:12]) == await keys.find(key)
        assert await keys.find(first[:12]) == await keys.find(first)
        await keys.close()
    run(go())


OLD_KEYS = """
CREATE TABLE keys (id INTEGER PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL, ip TEXT NOT NULL, generation INTEGER NOT NULL,
    created INTEGER NOT NULL, rpm INTEGER, status TEXT NOT NULL DEFAULT 'active',
    revoked_at INTEGER, last_used INTEGER);
CREATE UNIQUE INDEX keys_one_active_per_ip ON keys(ip) WHERE status = 'active';
CREATE TABLE usage (key_hash TEXT NOT NULL, day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, images INTEGER NOT NULL DEFAULT 0,
    video_seconds INTEGER NOT NULL DEFAULT 0, credits REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_hash, day));
"""


def test_sha256_database_is_rehashed_on_open(db):
    """A database of the versions that kept a key's bare SHA-256 and 8-character prefix:
    keys still work and come back the same, usage follows them, and nothing in the file
    matches a key without the secret any more."""
    secret = bytes(range(32))
    db.parent.mkdir()
    (db.parent / "apiarium.sqlite3.secret").write_text(secret.hex() + "\n")
    key = derive(secret, "192.0.2.1", 1)
    lost = derive(b"another secret, since replaced!!", "192.0.2.2", 0)
    con = sqlite3.connect(db)
    con.executescript(OLD_KEYS)
    sha = lambda k: hashlib.sha256(k.encode()).hexdigest()           # noqa: E731
    con.executemany("INSERT INTO keys (key_hash, key_prefix, ip, generation, created, status) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(sha(derive(secret, "192.0.2.1", 0)), "api-xxxx", "192.0.2.1", 0, 1,
                      "revoked"),
                     (sha(key), key[:8], "192.0.2.1", 1, 2, "active"),
                     (sha(lost), lost[:8], "192.0.2.2", 0, 3, "active")])
    con.execute("INSERT INTO usage (key_hash, day, requests, credits) VALUES (?, ?, 3, 1.5)",
                (sha(key), today()))
    con.commit()
    con.close()

    async def go():
        keys = await KeyService(db).open()
        ledger = await UsageLedger(db).open()
        try:
            rec = keys.verify(key)
            assert rec is not None and rec.key_prefix == key[:6]
            assert (await keys.key_for_ip("192.0.2.1"))[0] == key
            assert ledger.spent_today(rec.key_hash).requests == 3
            assert [r.key_prefix for r in await keys.all_records()] == \
                ["api-xx", key[:6], lost[:6]]
            # made with a secret since replaced: it cannot be checked; its IP gets a new key
            assert keys.verify(lost) is None
            new, _ = await keys.key_for_ip("192.0.2.2")
            assert new != lost and keys.verify(new) is not None
        finally:
            await ledger.close()
            await keys.close()
    run(go())
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert sha(key) not in dump and key[:7] not in dump


def test_another_process_writes_are_seen_with_two_connections_open(db):
    """The gateway holds two connections to the file (keys, usage); opening the second must
    not disturb the first (closing any descriptor of the file drops the process's locks on
    it, after which another process's writes went unseen)."""
    def other_process(sql: str) -> None:
        code = (f"import sqlite3; c = sqlite3.connect({str(db)!r}, timeout=5); "
                f"c.executescript({sql!r}); c.close()")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    async def go():
        keys = await KeyService(db).open()
        key, _ = await keys.key_for_ip("192.0.2.1")
        ledger = await UsageLedger(db).open()
        try:
            keys.verify(key)
            assert await keys.flush() == 1
            other_process("SELECT last_used FROM keys")          # as `apiarium keys list`
            other_process("INSERT INTO blocks (cidr, created, note) VALUES ('192.0.2.0/24', 1, '')")
            assert await keys.refresh() and keys.is_blocked("192.0.2.1")
        finally:
            await ledger.close()
            await keys.close()
    run(go())
