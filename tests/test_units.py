"""The pure pieces, without a server: token buckets, SSE framing, client-IP rules, blocklists."""
from __future__ import annotations

import ipaddress

import pytest

from apiarium import sse
from apiarium.errors import Forbidden
from apiarium.netguard import Blocklist, NetGuard
from apiarium.ratelimit import TokenBuckets


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_token_bucket_capacity_refill_and_wait():
    clock = Clock()
    buckets = TokenBuckets(clock)
    decisions = [buckets.take("k", 4) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions[:4]] == [3, 2, 1, 0]
    assert decisions[4].retry_after == pytest.approx(15.0)
    assert decisions[4].headers()["Retry-After"] == "15"
    clock.now += 10                       # 10 s refill 2/3 of a token: still 5 s to wait
    d = buckets.take("k", 4)
    assert not d.allowed and d.retry_after == pytest.approx(5.0)
    clock.now += 5
    assert buckets.take("k", 4).allowed
    clock.now += 3600                     # never more than capacity
    assert [buckets.take("k", 4).allowed for _ in range(5)] == [True] * 4 + [False]
    assert buckets.take("other", 4).allowed     # buckets are per key


def test_token_bucket_prune_drops_only_full_buckets():
    clock = Clock()
    buckets = TokenBuckets(clock)
    buckets.take("a", 60)
    clock.now += 0.5
    buckets.take("b", 60)
    clock.now += 0.6                       # a has refilled, b has not
    assert buckets.prune(lambda k: 60) == 1 and len(buckets) == 1


def test_sse_decoder_handles_any_split_and_crlf():
    stream = b"data: one\n\nevent: x\r\ndata: two\r\n\r\n: comment\n\ndata: {\"a\":\ndata: 1}\n\n"
    for cut in range(1, len(stream)):
        dec = sse.SSEDecoder()
        events = dec.feed(stream[:cut]) + dec.feed(stream[cut:]) + dec.close()
        parsed = [sse.parse(e) for e in events]
        assert parsed == [(None, b"one"), ("x", b"two"), (None, None),
                          (None, b'{"a":\n1}')], cut


def test_sse_close_returns_an_unterminated_last_event():
    dec = sse.SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: b") == [b"data: a"]
    assert dec.close() == [b"data: b"]
    assert sse.encode({"x": 1}) == b'data: {"x":1}\n\n'


def net(*cidrs):
    return [ipaddress.ip_network(c) for c in cidrs]


def test_client_ip_is_the_peer_unless_the_peer_is_a_trusted_proxy():
    guard = NetGuard(net("10.0.0.0/8"))
    spoof = {"X-Forwarded-For": "1.2.3.4"}
    assert guard.visitor("203.0.113.9", spoof).ip == "203.0.113.9"      # never believed
    v = guard.visitor("10.1.1.1", {"X-Forwarded-For": "1.2.3.4, 198.51.100.7, 10.2.2.2"})
    assert v.ip == "198.51.100.7" and v.peer_trusted                     # first untrusted hop
    assert guard.visitor("10.1.1.1", {"X-Real-IP": "198.51.100.8"}).ip == "198.51.100.8"
    assert guard.visitor("10.1.1.1", {}).ip == "10.1.1.1"
    assert guard.visitor("::ffff:127.0.0.2", {}).ip == "127.0.0.2"


def test_proxy_headers_from_untrusted_peers_are_refused():
    guard = NetGuard(net("10.0.0.0/8"))
    for header in ("Via", "Forwarded", "X-Forwarded-For", "X-Real-IP", "Proxy-Connection"):
        with pytest.raises(Forbidden) as exc:
            guard.check(guard.visitor("203.0.113.9", {header: "x"}), {header: "x"})
        assert exc.value.code == "vpn_detected" and "without a proxy or VPN" in exc.value.message
    headers = {"X-Forwarded-For": "198.51.100.7"}
    guard.check(guard.visitor("10.0.0.1", headers), headers)             # a trusted proxy: fine
    NetGuard(block_proxy_headers=False).check(guard.visitor("203.0.113.9", headers), headers)


def test_blocklist_edges_and_ipv6():
    bl = Blocklist(net("192.0.2.0/24", "192.0.2.128/25", "198.51.100.0/31", "2001:db8::/32"))
    ip = ipaddress.ip_address
    assert ip("192.0.2.0") in bl and ip("192.0.2.255") in bl
    assert ip("192.0.1.255") not in bl and ip("192.0.3.0") not in bl
    assert ip("198.51.100.1") in bl and ip("198.51.100.2") not in bl
    assert ip("2001:db8:ffff::1") in bl and ip("2001:db9::") not in bl
    assert len(bl) == 3                                                    # merged
    guard = NetGuard(blocklist=bl)
    with pytest.raises(Forbidden):
        guard.check(guard.visitor("2001:db8::5", {}), {})
