"""Who the client is: the trusted proxy's header, garbage hops, IPv6 transition addresses."""
from __future__ import annotations

import ipaddress

from apiarium.netguard import NetGuard, embedded_ipv4, network_of


def trusted(header: str = "X-Forwarded-For") -> NetGuard:
    return NetGuard([ipaddress.ip_network("10.0.0.0/8")], client_ip_header=header)


def test_behind_a_proxy_that_sets_only_x_real_ip_a_clients_own_xff_is_ignored():
    guard = trusted("X-Real-IP")
    # nginx with `proxy_set_header X-Real-IP $remote_addr;` passes the client's XFF on as is
    headers = {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "198.51.100.9"}
    assert guard.visitor("10.0.0.2", headers).ip == "198.51.100.9"
    assert guard.visitor("10.0.0.2", {"X-Forwarded-For": "1.2.3.4"}).ip == "10.0.0.2"


def test_an_unparseable_hop_stops_the_walk_at_the_address_that_added_it():
    guard = trusted()
    v = guard.visitor("10.0.0.2", {"X-Forwarded-For": "1.2.3.4, not-an-ip, 10.0.0.7"})
    assert v.ip == "10.0.0.7"                  # never 1.2.3.4, which the client chose
    v = guard.visitor("10.0.0.2", {"X-Forwarded-For": "1.2.3.4, unknown"})
    assert v.ip == "10.0.0.2"                  # the peer itself
    v = guard.visitor("10.0.0.2", {"X-Forwarded-For": "1.2.3.4, 198.51.100.1"})
    assert v.ip == "198.51.100.1"              # an ordinary chain still works


def test_ipv6_transition_addresses_are_the_ipv4_user_they_carry():
    cases = {
        "2002:c633:6401::1": "198.51.100.1",                     # 6to4: 2002:V4ADDR::/48
        "2002:c633:6401:ffff:1:2:3:4": "198.51.100.1",           # any address of that /48
        "64:ff9b::c633:6402": "198.51.100.2",                    # NAT64
        "::ffff:198.51.100.3": "198.51.100.3",                   # IPv4-mapped
    }
    guard = NetGuard()
    for v6, v4 in cases.items():
        assert str(embedded_ipv4(ipaddress.ip_address(v6))) == v4
        assert guard.visitor(v6, {}).ip == v4
    # Teredo: 2001:0::/32, the client's IPv4 stored inverted in the last 32 bits
    teredo = ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert str(embedded_ipv4(teredo)) == "192.0.2.45"
    assert guard.visitor(str(teredo), {}).ip == "192.0.2.45"
    # an ordinary IPv6 address stays itself, and its unit is the /64
    assert embedded_ipv4(ipaddress.ip_address("2001:db8::1")) is None
    assert guard.visitor("2001:db8::1", {}).ip == "2001:db8::1"
    assert network_of("2001:db8::1") == "2001:db8::/64"
