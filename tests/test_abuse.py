"""Abuse controls, seen from outside: blocklisted networks (IPv4 and IPv6, big lists, reload),
proxy headers and who the client is, the `apiarium keys` CLI against a running server, and
the limits on key issuance."""
from __future__ import annotations

import ipaddress
import json
import random
import re
import signal
import subprocess
import sys
import time
from bisect import bisect_right

import pytest

from apiarium.netguard import Blocklist
from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of, request, wait_for

KEY = re.compile(r"^api-[a-z0-9]{16}$")
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
SERVER = {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5}
PROXY = "127.0.0.10"                 # the trusted reverse proxy of these tests
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def cli(gw, *args, config_first: bool = False) -> subprocess.CompletedProcess:
    where = ["--config", str(gw.config)]
    argv = (["keys", *where, *args] if config_first else ["keys", *args, *where])
    return subprocess.run([sys.executable, "-m", "apiarium", *argv], capture_output=True,
                          text=True, timeout=60)


def me(gw, ip: str, **headers) -> tuple[int, dict]:
    status, hdrs, body = gw.get("/v1/keys/me", ip=ip, headers=headers or None)
    return status, {**json.loads(body), "_headers": hdrs}


def assert_vpn_403(status: int, body: bytes, *words: str) -> dict:
    err = error_of(body)
    assert status == 403 and err["code"] == "vpn_detected", (status, err)
    for word in words:
        assert word in err["message"], err["message"]
    return err


# --------------------------------------------------------------------------- blocklists

@pytest.fixture
def listed(make_gateway, fake_openai, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "vpn.txt").write_text("# a VPN provider\n127.0.3.0/24\n203.0.113.0/24  # inline\n"
                                   "2001:db8:bad::/48\n")
    (lists / "tor.txt").write_text("127.0.4.9\n127.0.5.1 - 127.0.5.6\nnot-an-address\n")
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "trusted_proxies": [PROXY]},
                      security={"blocklists": [str(lists / "vpn.txt"), "../../lists/tor.txt"]})
    gw.lists = lists
    return gw


def test_a_blocklisted_cidr_gets_403_on_keys_homepage_and_chat(listed):
    gw = listed
    inside = "127.0.3.7"
    assert_vpn_403(*me_raw(gw, inside), "VPN", inside)
    status, headers, body = gw.get("/", ip=inside)
    assert status == 403 and headers["content-type"].startswith("text/html")
    assert b"without a VPN" in body and b"vpn_detected" in body
    status, _, body = gw.post("/v1/chat/completions", CHAT, key="api-0000000000000000",
                              ip=inside)
    assert_vpn_403(status, body)
    # the master key bypasses the checks
    assert gw.post("/v1/chat/completions", CHAT, key=MASTER_KEY, ip=inside)[0] == 200
    # edges of 127.0.3.0/24, a bare address and a range from the second file
    for ip, blocked in (("127.0.2.255", False), ("127.0.3.0", True), ("127.0.3.255", True),
                        ("127.0.4.0", False), ("127.0.4.9", True), ("127.0.4.10", False),
                        ("127.0.5.1", True), ("127.0.5.6", True), ("127.0.5.7", False)):
        assert (me_raw(gw, ip)[0] == 403) is blocked, ip
    # the unreadable line was skipped, and named with its FILE:LINE
    assert any("tor.txt:3:" in line and "not-an-address" in line for line in gw.log)
    assert any(re.search(r"blocklists: \d+ ranges from 2 files loaded in", line)
               for line in gw.log)


def me_raw(gw, ip: str, headers: dict | None = None) -> tuple[int, bytes]:
    status, _, body = gw.get("/v1/keys/me", ip=ip, headers=headers)
    return status, body


def test_an_ipv6_range_in_the_list_works_too(listed, make_gateway, fake_openai, tmp_path):
    gw = listed
    via = lambda ip: {"X-Forwarded-For": ip}                             # noqa: E731
    assert_vpn_403(*me_raw(gw, PROXY, via("2001:db8:bad::1")), "2001:db8:bad::1")
    assert_vpn_403(*me_raw(gw, PROXY, via("2001:db8:bad:ffff:ffff:ffff:ffff:ffff")))
    assert me_raw(gw, PROXY, via("2001:db8:bac:ffff:ffff:ffff:ffff:ffff"))[0] == 200
    assert me_raw(gw, PROXY, via("2001:db8:bae::"))[0] == 200
    # and a client that really connects over IPv6
    v6list = tmp_path / "v6.txt"
    v6list.write_text("::1/128\n")
    gw6 = make_gateway(openai_models(fake_openai), server={**SERVER, "host": "::1"},
                       security={"blocklists": [str(v6list)]})
    assert gw6.url.startswith("http://[::1]:")
    status, _, body = request(gw6.url + "/v1/keys/me", ip="::1")
    assert_vpn_403(status, body, "::1")
    status, _, body = request(gw6.url + "/v1/chat/completions", "POST", json.dumps(CHAT),
                              {"Authorization": "Bearer api-0000000000000000"}, ip="::1")
    assert_vpn_403(status, body)


@pytest.mark.subprocess_gateway("SIGHUP, the exit code, and a failed start as the CLI prints it")
def test_blocklists_are_reloaded_with_the_catalog_and_a_bad_one_is_refused(listed):
    gw = listed
    assert me_raw(gw, "127.0.3.8")[0] == 403
    (gw.lists / "vpn.txt").write_text("127.0.6.0/24\n")
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: me_raw(gw, "127.0.3.8")[0] == 200, timeout=5)
    assert me_raw(gw, "127.0.6.1")[0] == 403
    # a blocklist that went missing: the reload is refused, the running lists stay
    (gw.lists / "vpn.txt").unlink()
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("reload rejected" in line and "vpn.txt" in line
                                and "does not exist" in line for line in gw.log), timeout=5)
    assert me_raw(gw, "127.0.6.1")[0] == 403
    # ... and it stops a start, as FILE:LINE, in check-config too
    code = gw.stop()
    assert code == 0
    out = subprocess.run([sys.executable, "-m", "apiarium", "check-config", "--config",
                          str(gw.config)], capture_output=True, text=True)
    assert out.returncode == 1
    assert re.search(r"apiarium\.yaml:\d+: security\.blocklists: '.*vpn\.txt' does not exist",
                     out.stdout), out.stdout
    gw.url = ""
    with pytest.raises(RuntimeError, match="does not exist"):
        gw.start()


def _synthetic_list(path, n: int, seed: int = 7) -> list[tuple[int, int, int]]:
    """``n`` random ranges (IPv4 of assorted prefix lengths, one in ten IPv6), written as a
    blocklist file; returns (version, first, last) of each."""
    rnd = random.Random(seed)
    ranges, lines = [], ["# synthetic: VPN and hosting ranges"]
    for i in range(n):
        if i % 10 == 0:
            p = rnd.choice((32, 40, 48, 56, 64, 128))
            net = ipaddress.IPv6Network((rnd.getrandbits(128) >> (128 - p) << (128 - p), p))
        else:
            p = rnd.choice((8, 12, 16, 20, 22, 24, 24, 24, 26, 28, 30, 32))
            net = ipaddress.IPv4Network((rnd.getrandbits(32) >> (32 - p) << (32 - p), p))
            if net.overlaps(LOOPBACK):                       # the tests' own clients
                net = ipaddress.IPv4Network(((int(net.network_address) ^ 1 << 31), p))
        ranges.append((net.version, int(net.network_address), int(net.broadcast_address)))
        lines.append(str(net) if p != net.max_prefixlen or i % 3 else str(net.network_address))
    path.write_text("\n".join(lines) + "\n")
    return ranges


def _reference(ranges):
    """A plain sorted-and-merged model to check the Blocklist against."""
    merged = {4: [], 6: []}
    for version, first, last in sorted(ranges):
        m = merged[version]
        if m and first <= m[-1][1] + 1:
            m[-1][1] = max(m[-1][1], last)
        else:
            m.append([first, last])
    starts = {v: [a for a, _ in m] for v, m in merged.items()}

    def contains(version: int, n: int) -> bool:
        i = bisect_right(starts[version], n) - 1
        return i >= 0 and n <= merged[version][i][1]
    return contains, sum(len(m) for m in merged.values())


def test_a_200k_range_list_loads_fast_and_is_exact_at_the_edges(tmp_path, make_gateway,
                                                                 fake_openai):
    path = tmp_path / "big.txt"
    ranges = _synthetic_list(path, 200_000)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        bl = Blocklist.from_files([path])
        timings.append(time.perf_counter() - started)
    contains, merged = _reference(ranges)
    probes = []
    for version, first, last in random.Random(1).sample(ranges, 5000):
        top = (1 << (32 if version == 4 else 128)) - 1
        probes += [(version, n) for n in (first - 1, first, last, last + 1) if 0 <= n <= top]
    started = time.perf_counter()
    for version, n in probes:
        ip = ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)
        assert (ip in bl) is contains(version, n), ip
    per_lookup = (time.perf_counter() - started) / len(probes)
    print(f"\n200,000 ranges ({path.stat().st_size / 1e6:.1f} MB): loaded in "
          f"{min(timings):.3f} s (best of 3; {', '.join(f'{t:.3f}' for t in timings)}); "
          f"{len(probes)} edge lookups, {per_lookup * 1e6:.1f} us each with the check")
    assert bl.entries == len(set(ranges)) and len(bl) == merged and bl.bad_lines == 0
    # the same list in a running gateway, plus a range with a loopback address in it
    with path.open("a") as fh:
        fh.write("127.0.9.0/24\n")
    gw = make_gateway(openai_models(fake_openai), security={"blocklists": [str(path)]})
    line = next(line for line in gw.log if "blocklists:" in line)
    print("gateway:", line.split("apiarium: ", 1)[-1])
    assert me_raw(gw, "127.0.9.9")[0] == 403 and me_raw(gw, "127.0.8.9")[0] == 200


# --------------------------------------------------------------------------- proxy headers

def test_x_forwarded_for_from_an_untrusted_peer_is_refused_and_never_the_client(
        make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "trusted_proxies": [PROXY]})
    spoof = {"X-Forwarded-For": "1.2.3.4"}
    status, body = me_raw(gw, "127.0.0.11", spoof)
    assert_vpn_403(status, body, "X-Forwarded-For", "without a proxy or VPN")
    for name in ("Via", "Forwarded", "X-Real-IP", "Proxy-Connection", "X-Proxy-ID",
                 "Client-IP"):
        assert_vpn_403(*me_raw(gw, "127.0.0.11", {name: "1.2.3.4"}))
    status, _, body = gw.get("/", ip="127.0.0.11", headers=spoof)
    assert status == 403 and b"vpn_detected" in body
    status, _, body = gw.post("/v1/chat/completions", CHAT, key=gw.key_for("127.0.0.11"),
                              ip="127.0.0.11", headers=spoof)
    assert_vpn_403(status, body)
    # from the trusted proxy, the forwarded address is the client
    status, info = me(gw, PROXY, **spoof)
    assert status == 200 and info["ip"] == "1.2.3.4"
    assert me(gw, PROXY, **{"X-Forwarded-For": "9.9.9.9, 1.2.3.4"})[1]["ip"] == "1.2.3.4"
    assert me(gw, PROXY, **{"X-Real-IP": "5.6.7.8"})[1]["ip"] == "5.6.7.8"
    assert me(gw, PROXY)[1]["ip"] == PROXY
    key = info["key"]
    assert gw.get("/v1/models", key=key, ip=PROXY, headers=spoof)[0] == 200
    assert gw.get("/v1/models", key=key, ip=PROXY)[0] == 401          # not 1.2.3.4's key


def test_with_proxy_header_blocking_off_forwarded_headers_are_still_not_believed(
        make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), security={"block_proxy_headers": False})
    status, info = me(gw, "127.0.0.12", **{"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "5.6.7.8"})
    assert status == 200 and info["ip"] == "127.0.0.12"


# --------------------------------------------------------------------------- the keys CLI

def test_each_keys_subcommand_against_a_running_server(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), security={"key_requests_per_minute": 0})
    a, b = "127.0.0.31", "127.0.0.32"
    key_a, key_b = gw.key_for(a), gw.key_for(b)

    # list / list --json (with when each key was last used, written within seconds)
    assert gw.get("/v1/models", key=key_a, ip=a)[0] == 200
    out = cli(gw, "list")
    assert out.returncode == 0, out.stderr
    assert "LAST USED" in out.stdout and key_a[:6] in out.stdout and key_a not in out.stdout

    def row_of(ip):
        rows = [json.loads(line) for line in cli(gw, "list", "--json").stdout.splitlines()]
        return next(r for r in rows if r["ip"] == ip)
    assert wait_for(lambda: row_of(a)["last_used"], timeout=5)
    row = row_of(a)
    assert row["key_prefix"] == key_a[:6] and row["status"] == "active"
    assert abs(row["last_used"] - time.time()) < 30 and row_of(b)["last_used"] is None
    assert row["rpm"] == 4 and row["rpm_is_default"] and row["created"] <= row["last_used"]

    # show IP | KEY | prefix (--config before the action's arguments, too)
    for target in (a, key_a, key_a[:8], key_a[:6]):
        out = cli(gw, "show", target, config_first=True)
        assert out.returncode == 0 and a in out.stdout and key_a[:6] in out.stdout, out
    assert cli(gw, "show", "127.0.0.99").returncode == 1

    # set-rpm KEY N: the key's own limit, seen over HTTP
    assert cli(gw, "set-rpm", key_a, "2").returncode == 0
    assert wait_for(lambda: me(gw, a)[1]["rate_limit"]["rpm"] == 2, timeout=5)
    status, headers, _ = gw.post("/v1/chat/completions", CHAT, key=key_a, ip=a)
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "2"

    # revoke KEY: refused within seconds; the IP's next visit gets a new, different key
    assert cli(gw, "revoke", key_b).returncode == 0
    assert wait_for(lambda: gw.get("/v1/models", key=key_b, ip=b)[0] == 401, timeout=5)
    new_b = gw.key_for(b)
    assert KEY.match(new_b) and new_b != key_b
    assert gw.get("/v1/models", key=new_b, ip=b)[0] == 200

    # rotate IP: the CLI prints the new key, which the server hands out from then on
    out = cli(gw, "rotate", a)
    assert out.returncode == 0, out.stderr
    rotated = re.search(r"new key (api-[a-z0-9]{16})", out.stdout).group(1)
    assert rotated != key_a
    assert wait_for(lambda: gw.get("/v1/models", key=key_a, ip=a)[0] == 401, timeout=5)
    assert gw.get("/v1/models", key=rotated, ip=a)[0] == 200
    assert gw.key_for(a) == rotated and me(gw, a)[1]["rate_limit"]["rpm"] == 2  # rpm kept

    # block IP: 403 on issuance, on the homepage and for its key; unblock: the same key again
    assert cli(gw, "block", a, "--note", "abuse ticket 12").returncode == 0
    assert wait_for(lambda: me_raw(gw, a)[0] == 403, timeout=5)
    err = assert_vpn_403(*me_raw(gw, a), "operator", a)
    assert "VPN" not in err["message"]
    status, _, body = gw.post("/v1/chat/completions", CHAT, key=rotated, ip=a)
    assert_vpn_403(status, body, "operator")
    status, _, page = gw.get("/", ip=a)
    assert status == 403 and b"operator" in page and b"Turn off your VPN" not in page
    assert me_raw(gw, b)[0] == 200                                       # others unaffected
    listing = cli(gw, "block")
    assert listing.returncode == 0 and a in listing.stdout and "abuse ticket 12" in listing.stdout
    assert f"blocked by {a}/32" in cli(gw, "show", a).stdout
    assert cli(gw, "unblock", a).returncode == 0
    assert wait_for(lambda: me_raw(gw, a)[0] == 200, timeout=5)
    assert gw.key_for(a) == rotated and gw.get("/v1/models", key=rotated, ip=a)[0] == 200

    # block CIDR: every address in it, none outside
    assert cli(gw, "block", "127.0.7.0/24", config_first=True).returncode == 0
    assert wait_for(lambda: me_raw(gw, "127.0.7.200")[0] == 403, timeout=5)
    assert me_raw(gw, "127.0.8.1")[0] == 200
    assert cli(gw, "unblock", "127.0.7.0/24").returncode == 0
    assert wait_for(lambda: me_raw(gw, "127.0.7.200")[0] == 200, timeout=5)
    assert cli(gw, "unblock", "127.0.7.0/24").returncode == 1             # nothing to lift
    assert cli(gw, "block", "not-an-ip").returncode == 2

    # blocks and keys survive a restart
    assert cli(gw, "block", "127.0.7.0/24").returncode == 0
    gw.restart()
    assert me_raw(gw, "127.0.7.1")[0] == 403 and gw.key_for(a) == rotated


def test_cli_and_server_write_at_once(make_gateway, fake_openai):
    """Issuance in the server while the CLI blocks, rotates and sets limits: WAL and the
    busy timeout keep both going, and the server's index follows."""
    gw = make_gateway(openai_models(fake_openai))
    import threading
    errors: list = []

    def visitors():
        for i in range(80):
            status = me_raw(gw, f"127.2.0.{i + 1}")[0]
            if status != 200:
                errors.append(status)
    t = threading.Thread(target=visitors)
    t.start()
    for i in range(4):
        assert cli(gw, "block", f"127.3.{i}.0/24").returncode == 0
        assert cli(gw, "rotate", f"127.2.0.{i + 1}").returncode == 0
    t.join()
    assert errors == []
    assert wait_for(lambda: me_raw(gw, "127.3.3.1")[0] == 403, timeout=5)
    out = cli(gw, "list", "--json")
    ips = [json.loads(line)["ip"] for line in out.stdout.splitlines()]
    assert len(ips) == len(set(ips)) >= 80


# --------------------------------------------------------------------------- issuance limits

def test_key_requests_per_ip_are_limited(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), security={"key_requests_per_minute": 5})
    ip = "127.0.0.41"
    key = gw.key_for(ip)
    for _ in range(3):
        assert me_raw(gw, ip)[0] == 200
    assert gw.get("/", ip=ip)[0] == 200                                  # the homepage counts
    status, headers, body = gw.get("/v1/keys/me", ip=ip)
    err = error_of(body)
    assert status == 429 and err["code"] == "rate_limit_exceeded"
    wait = int(headers["retry-after"])
    assert 1 <= wait <= 12 and f"Wait {wait} s" in err["message"] and "5 a minute" in err["message"]
    status, headers, page = gw.get("/", ip=ip)
    assert status == 429 and headers["retry-after"] and b"5 a minute" in page
    assert me_raw(gw, "127.0.0.42")[0] == 200                           # per address
    assert gw.get("/v1/models", key=key, ip=ip)[0] == 200                # the API is not
    assert gw.post("/v1/chat/completions", CHAT, key=key, ip=ip)[0] == 200


def test_ipv6_key_farming_is_capped_per_64_48_and_32(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "trusted_proxies": [PROXY]},
                      security={"new_keys_per_ipv6_48_per_day": 8,
                                "key_requests_per_minute": 1000})
    via = lambda ip: {"X-Forwarded-For": ip}                             # noqa: E731
    # one /64 is one user: every address in it gets the same key, good from any of them
    first = me(gw, PROXY, **via("2001:db8:1:0::1"))[1]
    assert first["ip"] == "2001:db8:1::/64"
    assert me(gw, PROXY, **via("2001:db8:1:0:abcd::77"))[1]["key"] == first["key"]
    assert gw.get("/v1/models", key=first["key"], ip=PROXY,
                  headers=via("2001:db8:1:0:ffff::1"))[0] == 200
    # 40 /64s of one /48: one key each up to the /48 cap, then 429 naming the /48
    answers = [gw.get("/v1/keys/me", ip=PROXY, headers=via(f"2001:db8:1:{i:x}::1"))
               for i in range(40)]
    statuses = [a[0] for a in answers]
    assert statuses == [200] * 8 + [429] * 32, statuses
    err = error_of(answers[-1][2])
    assert "2001:db8:1::/48" in err["message"] and "8 new" in err["message"]
    assert 23 * 3600 < int(answers[-1][1]["retry-after"]) <= 24 * 3600
    assert len({json.loads(a[2])["key"] for a in answers[:8]}) == 8
    # another /48 is not affected; the count holds across a restart (it comes from the database)
    assert me(gw, PROXY, **via("2001:db8:2::1"))[0] == 200
    gw.restart()
    assert gw.get("/v1/keys/me", ip=PROXY, headers=via("2001:db8:1:ff::1"))[0] == 429
    assert me(gw, PROXY, **via("2001:db8:1:3::9"))[1]["key"] == json.loads(answers[3][2])["key"]


def test_6to4_teredo_and_nat64_clients_are_the_ipv4_user_they_carry(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={**SERVER, "trusted_proxies": [PROXY]},
                      security={"key_requests_per_minute": 1000})
    via = lambda ip: {"X-Forwarded-For": ip}                             # noqa: E731
    v4 = me(gw, PROXY, **via("198.51.100.1"))[1]
    # every /48 of 6to4 is one IPv4 user: no fresh identities from 2002::/16
    for v6 in ("2002:c633:6401::1", "2002:c633:6401:1234::5", "64:ff9b::c633:6401"):
        got = me(gw, PROXY, **via(v6))[1]
        assert (got["ip"], got["key"]) == ("198.51.100.1", v4["key"]), v6


# --------------------------------------------------------------------------- update-blocklists

def test_update_blocklists_writes_good_lists_and_keeps_the_rest(tmp_path):
    """scripts/update-blocklists against lists served on loopback (never the internet)."""
    import http.server
    import threading
    from pathlib import Path
    pages = {"/vpn": b"1.2.3.0/24\n5.6.7.8\n2001:db8:1::/48\n",
             "/portal": b"<html><body>Please log in to the Wi-Fi</body></html>\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "portal.txt").write_text("9.9.9.0/24\n")                   # from an earlier run
    script = Path(__file__).resolve().parents[1] / "scripts" / "update-blocklists"
    try:
        out = subprocess.run([sys.executable, str(script), "--dir", str(folder), "--timeout",
                              "3", "--source", f"vpn={base}/vpn", "--source",
                              f"portal={base}/portal", "--source", f"gone={base}/missing",
                              "--source", "down=http://127.0.0.1:9/list"],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert out.returncode == 1
    assert "vpn: 3 ranges" in out.stdout and "kill -HUP" in out.stdout
    assert "portal: not updated" in out.stderr and "existing file is kept" in out.stderr
    assert "gone: not updated" in out.stderr and "down: not updated" in out.stderr
    written = (folder / "vpn.txt").read_text()
    assert written.startswith("# vpn: downloaded by scripts/update-blocklists")
    assert f"# source: {base}/vpn" in written
    assert (folder / "portal.txt").read_text() == "9.9.9.0/24\n"
    assert sorted(p.name for p in folder.iterdir()) == ["portal.txt", "vpn.txt"]  # no temps
    bl = Blocklist.from_files([folder / "vpn.txt"])
    assert ipaddress.ip_address("1.2.3.99") in bl and ipaddress.ip_address("2001:db8:1::9") in bl
    assert bl.bad_lines == 0


def test_the_shipped_sample_list_loads():
    from pathlib import Path
    sample = Path(__file__).resolve().parents[1] / "config" / "blocklists" / "sample.txt"
    bl = Blocklist.from_files([sample])
    assert bl.entries == 5 and not bl.problems
    assert ipaddress.ip_address("203.0.113.100") in bl
    assert ipaddress.ip_address("203.0.113.128") not in bl
