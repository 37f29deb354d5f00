"""KeyService without a server: one key per IP, revocation and rotation, the IPv6 /64 cap,
visit buckets, the operator's blocks, and picking up another process's writes."""
from __future__ import annotations

import asyncio
import re

import pytest

from apiarium.errors import RateLimited
from apiarium.services.keys import AddressBlocked, KeyService

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


def test_ipv6_64_gets_a_limited_number_of_new_keys_a_day(db):
    async def go():
        keys = await KeyService(db).open()
        for i in range(1, 4):
            await keys.key_for_ip(f"2001:db8:1:2::{i}", new_per_64=3)
        with pytest.raises(RateLimited) as exc:
            await keys.key_for_ip("2001:db8:1:2::99", new_per_64=3)
        assert "2001:db8:1:2::/64" in exc.value.message and exc.value.retry_after > 3600
        # keys already issued still come back, another /64 and IPv4 are not affected
        assert (await keys.key_for_ip("2001:db8:1:2::1", new_per_64=3))[1].ip == \
            "2001:db8:1:2::1"
        await keys.key_for_ip("2001:db8:1:3::1", new_per_64=3)
        await keys.key_for_ip("192.0.2.9", new_per_64=1)
        await keys.key_for_ip("192.0.2.10", new_per_64=1)
        await keys.close()
        again = await KeyService(db).open()          # the count is kept in the database
        with pytest.raises(RateLimited):
            await again.key_for_ip("2001:db8:1:2::98", new_per_64=3)
        await again.key_for_ip("2001:db8:1:2::98", new_per_64=0)      # 0: no limit
        await again.close()
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
            key, rec = await server.key_for_ip("192.0.2.1")
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
