"""The image_url fetcher (``apiarium.outbound``) against real loopback servers.

"Internal" servers on 127.0.0.1 and ::1 count every connection they accept and every request
they get: none may ever arrive.  127.0.0.2 stands for a public server (``fetch_allow_cidrs``).
DNS is simulated (``FakeDNS``); every socket connect is recorded, and one off loopback would
be refused by the test itself, so nothing leaves the machine.  Then the same through a real
gateway (``/v1/videos/generations`` and chat with a Veo model) against the Gemini fake.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import errno
import gc
import ipaddress
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from apiarium import outbound
from apiarium.config import ConfigError, load_config
from apiarium.errors import InvalidRequest, RateLimited
from apiarium.outbound import FetchPolicy, ImageFetcher, is_public
from tests.fakes import make_png
from tests.support import MASTER_KEY, error_of, wait_for

PNG = make_png()
MB = 1024 * 1024
FIXED_20MB = ("image_url could not be used: it must lead to an image of at most 20 MB on a "
              "public web server.")
ALLOW = (ipaddress.ip_network("127.0.0.2/32"),)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_V6 = _has_ipv6_loopback()


# ---------------------------------------------------------------------------- servers

def _gzip_bomb() -> bytes:
    """~300 KB of gzip that inflates to 300 MB of zeros (built in pieces)."""
    comp, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(MB)
    return b"".join([*(comp.compress(zeros) for _ in range(300)), comp.flush()])


class _Counted(asyncio.Protocol):
    """One connection's server protocol (aiohttp's, which takes no new attributes), and the
    bytes it received and its end counted on the site."""

    def __init__(self, site: Site, inner: asyncio.Protocol):
        self.site, self.inner = site, inner

    def connection_made(self, transport):
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.site.received += len(data)
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self.inner.connection_lost(exc)
        self.site.ended += 1


class Site:
    """An aiohttp server in its own thread on ``host`` (port 0, or the listening socket
    given) that counts the connections it accepts, the bytes they bring and the ones that
    ended, and records the requests it gets."""

    def __init__(self, host: str, sock: socket.socket | None = None):
        self.host, self.sock = host, sock
        self.port = sock.getsockname()[1] if sock is not None else 0
        self.connections = self.ended = self.received = 0
        self.requests: list[tuple[str, dict]] = []
        self.active = self.max_active = 0
        self.sent = 0                       # body bytes written by /huge
        self.loop = asyncio.new_event_loop()
        self._bomb: bytes | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Site:
        ready = threading.Event()
        failure: list[Exception] = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._serve())
            except Exception as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/cat.png", self._image)
        app.router.add_get("/cookie", self._cookie)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/chain/{n}", self._chain)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_get("/huge", self._huge)
        app.router.add_get("/declared", self._declared)
        app.router.add_get("/page", self._page)
        app.router.add_get("/empty", self._empty)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/hold", self._hold)
        # a handler still holding a connection (/hold, /slow) is cut at once on stop
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        server = self._runner.server

        def counted():
            self.connections += 1
            return _Counted(self, server())
        if self.sock is not None:
            self._server = await self.loop.create_server(counted, sock=self.sock)
        else:
            self._server = await self.loop.create_server(counted, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def down():
            self._server.close()
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def url(self, path: str, host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}{path}"

    def reset(self) -> Site:
        self.connections, self.requests, self.sent = 0, [], 0
        self.ended = self.received = 0
        self.active = self.max_active = 0
        return self

    # ------------------------------------------------------------------ routes
    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.path_qs, dict(request.headers)))
        return await handler(request)

    async def _image(self, request):
        return web.Response(body=PNG, content_type="image/png")

    async def _cookie(self, request):
        resp = web.Response(body=PNG, content_type="image/png")
        resp.set_cookie("session", "tracked")
        return resp

    async def _redirect(self, request):
        raise web.HTTPFound(request.query["to"])

    async def _chain(self, request):
        n = int(request.match_info["n"])
        if n == 0:
            return await self._image(request)
        raise web.HTTPFound(f"/chain/{n - 1}")

    async def _gzip(self, request):
        if self._bomb is None:
            self._bomb = _gzip_bomb()
        return web.Response(body=self._bomb, headers={"Content-Type": "image/png",
                                                      "Content-Encoding": "gzip"})

    async def _huge(self, request):
        """300 MB, chunked, made on the fly from one 64 KB piece."""
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        piece = b"\xab" * (64 * 1024)
        try:
            for _ in range(300 * 16):
                await resp.write(piece)
                self.sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def _declared(self, request):
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 300 * MB
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write(b"x" * 1000)
        return resp

    async def _page(self, request):
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def _empty(self, request):
        return web.Response(body=b"", content_type="image/png")

    async def _slow(self, request):
        await asyncio.sleep(10)
        return await self._image(request)

    async def _hold(self, request):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(float(request.query.get("s", "0.6")))
        finally:
            self.active -= 1
        return await self._image(request)


def same_port(hosts: tuple[str, ...], attempts: int = 50) -> list[socket.socket]:
    """A socket bound on each of ``hosts``, all on one port: the first host's free port, which
    the others bind at once (where one of them has it taken, by a listener or by a client's
    source port, another port is tried).  Bound, not yet listening: the site listens."""
    def bound(host: str, port: int) -> socket.socket:
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as asyncio's own
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    for _ in range(attempts):
        socks = [bound(hosts[0], 0)]
        port = socks[0].getsockname()[1]
        try:
            socks += [bound(host, port) for host in hosts[1:]]
        except OSError as exc:
            for sock in socks:
                sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return socks
    raise RuntimeError(f"no port free on all of {hosts} in {attempts} tries")


@pytest.fixture(scope="module")
def _sites():
    # the same port on both: a name that rebinds from the public address to the internal
    # one lands on the internal server
    on_1, on_2 = same_port(("127.0.0.1", "127.0.0.2"))
    internal = Site("127.0.0.1", on_1).start()
    public = Site("127.0.0.2", on_2).start()
    internal6 = Site("::1").start() if HAS_V6 else None
    yield internal, public, internal6
    for site in (internal, public, internal6):
        if site is not None:
            site.stop()


@pytest.fixture
def internal(_sites) -> Site:
    return _sites[0].reset()


@pytest.fixture
def public(_sites) -> Site:
    return _sites[1].reset()


@pytest.fixture
def internal6(_sites) -> Site | None:
    return _sites[2].reset() if _sites[2] is not None else None


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.2 that refuses connections: bound for the test and never listening
    (a port closed again could be someone's by the time it is dialled)."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        yield s.getsockname()[1]


# ---------------------------------------------------------------------------- client side

class FakeDNS:
    """``Resolver`` for tests: each name answers from its list of answers in turn (the last
    one repeats); any other name fails, as an unknown name does.  Never real DNS."""

    def __init__(self, table: dict[str, list[list[str]]] | None = None):
        self.table = table or {}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host.rstrip(".").lower())
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[min(self.calls.count(host), len(answers)) - 1]


def run(make, *, dns: FakeDNS | None = None, **policy):
    """Run ``make(fetcher)`` (a coroutine function) on a new loop, with a fetcher allowing
    127.0.0.2 (plus ``policy``), and every socket connect recorded: (result, connects)."""
    connects: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        real = loop.sock_connect

        async def sock_connect(sock, address):
            connects.append(address[0])
            ip = ipaddress.ip_address(address[0].split("%")[0])
            local = ip.is_loopback or ip.is_unspecified or getattr(ip, "ipv4_mapped", None)
            if not local:
                raise OSError("test guard: a connect off this machine")
            return await real(sock, address)
        loop.sock_connect = sock_connect
        fetcher = ImageFetcher(FetchPolicy(**{"allow": ALLOW, **policy}),
                               resolver=dns or FakeDNS())
        try:
            return await make(fetcher)
        finally:
            await fetcher.close()
    return asyncio.run(main()), connects


def refusal(url: str, *, dns: FakeDNS | None = None, **policy) -> tuple[InvalidRequest, list]:
    async def go(fetcher):
        with pytest.raises(InvalidRequest) as info:
            await fetcher.fetch(url)
        return info.value
    return run(go, dns=dns, **policy)


# ---------------------------------------------------------------------------- addresses

@pytest.mark.parametrize("text", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "169.254.0.1", "100.64.0.1", "100.127.255.254", "0.0.0.0", "0.1.2.3", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "198.51.100.7", "203.0.113.9", "192.0.0.8",
    "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "fd12:3456::1", "ff02::1", "fec0::1",
    "100::1", "2001:db8::1", "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "::ffff:10.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:a00:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",           # Teredo
    "2001:0:a9fe:a9fe::1",
])
def test_addresses_that_are_not_public(text):
    ip = ipaddress.ip_address(text)
    assert not is_public(ip)
    assert not FetchPolicy().allows(ip)


@pytest.mark.parametrize("text", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::1111",
                                  "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8",
                                  "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses(text):
    assert is_public(ipaddress.ip_address(text))


def test_the_allowlist_admits_its_addresses_only():
    policy = FetchPolicy(allow=(ipaddress.ip_network("127.0.0.2/32"),
                                ipaddress.ip_network("fd00:1::/64")))
    assert policy.allows(ipaddress.ip_address("127.0.0.2"))
    assert policy.allows(ipaddress.ip_address("::ffff:127.0.0.2"))
    assert policy.allows(ipaddress.ip_address("fd00:1::5"))
    assert not policy.allows(ipaddress.ip_address("127.0.0.1"))
    assert not policy.allows(ipaddress.ip_address("fd00:2::5"))


# ---------------------------------------------------------------------------- fetching

def test_a_public_image_is_fetched_with_no_cookies_and_no_provider_headers(public):
    async def go(fetcher):
        first = await fetcher.fetch(public.url("/cookie"))
        second = await fetcher.fetch(public.url("/cat.png"))
        return first, second
    (first, second), _ = run(go)
    assert first.data == PNG == second.data and first.mime == "image/png"
    assert [path for path, _ in public.requests] == ["/cookie", "/cat.png"]
    headers = public.requests[1][1]
    assert "Cookie" not in headers                       # the Set-Cookie was not kept
    assert headers["User-Agent"] == outbound.USER_AGENT
    assert headers["Accept-Encoding"] == "identity"
    assert not {"Authorization", "x-goog-api-key", "X-Goog-Api-Key"} & set(headers)
    assert public.connections == 2                       # a new connection per request


def internal_urls(internal: Site, internal6: Site | None, public: Site) -> list[str]:
    p = internal.port
    urls = [internal.url("/cat.png"), f"http://localhost:{p}/cat.png",
            f"http://0.0.0.0:{p}/cat.png", f"http://[::ffff:127.0.0.1]:{p}/cat.png",
            f"http://[::ffff:7f00:1]:{p}/cat.png", f"http://127.1:{p}/cat.png",
            f"http://2130706433:{p}/cat.png", f"http://0x7f.1:{p}/cat.png",
            f"http://LOCALHOST.:{p}/cat.png",
            public.url("/redirect?to=" + internal.url("/cat.png")),
            public.url(f"/redirect?to=http://localhost:{p}/cat.png")]
    if internal6 is not None:
        urls += [internal6.url("/cat.png"), f"http://[::1]:{internal6.port}/cat.png",
                 public.url("/redirect?to=" + internal6.url("/cat.png"))]
    return urls


def test_internal_addresses_are_never_reached(internal, internal6, public):
    dns = FakeDNS({"localhost": [["127.0.0.1", "::1"]], "0x7f.1": [["127.0.0.1"]]})
    urls = internal_urls(internal, internal6, public)
    for url in urls:
        err, connects = refusal(url, dns=dns)
        assert err.message == FIXED_20MB and err.param == "image_url" and err.status == 400
        assert set(connects) <= {"127.0.0.2"}, (url, connects)
    assert internal.connections == 0 and internal.requests == []
    if internal6 is not None:
        assert internal6.connections == 0 and internal6.requests == []
    assert len(public.requests) == sum("/redirect" in url for url in urls)  # the redirects


def test_the_metadata_address_is_refused_before_any_connection():
    dns = FakeDNS({"metadata.google.internal": [["169.254.169.254"]]})
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/",
                "http://[64:ff9b::a9fe:a9fe]/", "http://metadata.google.internal/x"):
        err, connects = refusal(url, dns=dns)
        assert err.message == FIXED_20MB
        assert connects == []                            # not even a SYN
    assert dns.calls == ["metadata.google.internal"]     # literals never reach the resolver


def test_dns_rebinding_reaches_nothing(internal, public):
    # first answer public (127.0.0.2 here), then internal: the redirect to the same name
    # makes a new connection, whose address is checked again
    dns = FakeDNS({"images.example": [["127.0.0.2"], ["127.0.0.1"]]})
    err, connects = refusal(f"http://images.example:{public.port}/redirect?to=/cat.png",
                            dns=dns)
    assert err.message == FIXED_20MB and connects == ["127.0.0.2"]
    assert dns.calls == ["images.example", "images.example"]
    # one answer holding both: the name is refused as a whole
    dns = FakeDNS({"images.example": [["127.0.0.2", "127.0.0.1"]]})
    err, connects = refusal(f"http://images.example:{public.port}/cat.png", dns=dns)
    assert err.message == FIXED_20MB and connects == []
    assert internal.connections == 0
    assert [path for path, _ in public.requests] == ["/redirect?to=/cat.png"]


def test_each_connection_is_checked_below_the_url_checks(internal, monkeypatch):
    """With the URL's literal check switched off, the socket about to connect is refused;
    with that one off too, the connected peer is, before a byte of the request is sent."""
    monkeypatch.setattr(outbound, "_check_url", lambda url, policy: None)
    err, connects = refusal(internal.url("/cat.png"))
    assert err.message == FIXED_20MB and connects == []
    assert internal.connections == 0

    def any_socket(self, addr_info):
        family, type_, proto, _, _ = addr_info
        return socket.socket(family, type_, proto)
    monkeypatch.setattr(outbound._GuardedConnector, "_socket_for", any_socket)
    err, connects = refusal(internal.url("/cat.png"))
    assert err.message == FIXED_20MB and connects == ["127.0.0.1"]
    # the server saw the connection end (after whatever it carried): with not a byte on it
    assert wait_for(lambda: internal.ended == 1)
    assert internal.connections == 1 and internal.received == 0 and internal.requests == []


def test_redirects_are_followed_three_times_at_most(public):
    result, _ = run(lambda f: f.fetch(public.url("/chain/3")))
    assert result.data == PNG
    assert [p for p, _ in public.requests] == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]
    public.reset()
    err, _ = refusal(public.url("/chain/4"))
    assert err.message == FIXED_20MB
    assert [p for p, _ in public.requests] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


# ---------------------------------------------------------------------------- memory

_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def vm(field: str) -> int:
    """A ``Vm…`` line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def peak_rss_growth(make, warm_url: str, **policy) -> tuple[object, int]:
    """Run ``make`` (see ``run``) after a warm-up fetch of ``warm_url``: (what it returned,
    the peak VmRSS during it minus VmRSS before).  The peak is VmHWM, reset first through
    /proc/self/clear_refs; where that cannot be written, VmRSS sampled every millisecond."""
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], vm("VmRSS"))
            time.sleep(0.001)

    async def measured(fetcher):
        await fetcher.fetch(warm_url)                    # imports, buffers, first connection
        # as in a process that has run a while: once a mapped block of 24 MB has been freed,
        # glibc serves blocks up to that size from the heap, where growing one may copy it
        block = bytearray(24 * MB)
        del block
        _libc.malloc_trim(0)                             # ... and the heap given back
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # noqa: ASYNC240  (a /proc write)
            sampler = None
        except OSError:
            sampler = threading.Thread(target=sample, daemon=True)
        before = peak[0] = vm("VmRSS")
        if sampler is not None:
            sampler.start()
        try:
            return await make(fetcher), before
        finally:
            done.set()
            if sampler is not None:
                sampler.join()
            else:
                peak[0] = vm("VmHWM")
    (outcome, before), _ = run(measured, **policy)
    return outcome, max(peak[0], vm("VmRSS")) - before


def test_a_gzip_bomb_is_refused_unread(public, capsys):
    async def bomb(fetcher):
        with pytest.raises(InvalidRequest) as info:
            await fetcher.fetch(public.url("/gzip"))
        return info.value
    public._bomb = public._bomb or _gzip_bomb()
    err, growth = peak_rss_growth(bomb, public.url("/cat.png"))
    with capsys.disabled():
        print(f"\n  gzip bomb (300 KB -> 300 MB): peak RSS growth {growth / MB:.1f} MB")
    assert err.message == FIXED_20MB
    assert growth < 30 * MB


def test_an_endless_body_is_cut_at_the_limit(public, capsys):
    async def huge(fetcher):
        with pytest.raises(InvalidRequest) as info:
            await fetcher.fetch(public.url("/huge"))
        return info.value
    started = time.monotonic()
    err, growth = peak_rss_growth(huge, public.url("/cat.png"))
    with capsys.disabled():
        print(f"\n  300 MB chunked body, 20 MB limit: peak RSS growth {growth / MB:.1f} MB, "
              f"{public.sent / MB:.0f} MB sent by the server, {time.monotonic() - started:.1f} s")
    assert err.message == FIXED_20MB
    assert growth < 30 * MB
    assert public.sent < 100 * MB                        # the read stopped; the server gave up


# ---------------------------------------------------------------------------- the message

def test_every_failure_says_the_same_and_the_log_says_why(internal, public, closed_port,
                                                          caplog):
    caplog.set_level(logging.INFO, logger="apiarium.outbound")
    dns = FakeDNS({"internal.example": [["10.0.0.7"]]})
    failures = {
        "internal address": internal.url("/cat.png"),
        "internal name": "http://internal.example/x.png",
        "unknown name": "http://no-such-host.example/x.png",
        "nothing listening": f"http://127.0.0.2:{closed_port}/x.png",
        "404": public.url("/missing.png"),
        "not an image": public.url("/page"),
        "compressed": public.url("/gzip"),
        "declared too large": public.url("/declared"),
        "too large": public.url("/huge"),
        "empty": public.url("/empty"),
        "too many redirects": public.url("/chain/9"),
        "redirect to ftp": public.url("/redirect?to=ftp://127.0.0.2/x.png"),
        "redirect inside": public.url("/redirect?to=" + internal.url("/cat.png")),
        "slow": public.url("/slow"),
    }

    async def every(fetcher):
        out = {}
        for kind, url in failures.items():
            try:
                await fetcher.fetch(url)
            except InvalidRequest as exc:
                out[kind] = exc
        oversized = "data:image/png;base64," + "A" * (2 * MB)
        try:
            fetcher.check_data_url(oversized)
        except InvalidRequest as exc:
            out["data: URL too large"] = exc
        return out
    public._bomb = public._bomb or _gzip_bomb()
    errors, _ = run(every, dns=dns, max_bytes=MB, timeout_s=1.0)
    assert set(errors) == {*failures, "data: URL too large"}
    messages = {(e.message, e.param, e.status, e.code) for e in errors.values()}
    fixed_1mb = FIXED_20MB.replace("20 MB", "1 MB")
    assert messages == {(fixed_1mb, "image_url", 400, "invalid_request")}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for why in ("HTTP 404", "text/html", "Content-Encoding 'gzip'", "more than 1048576 bytes",
                "Content-Length 314572800", "more than 3 redirects", "no complete answer",
                "10.0.0.7", "127.0.0.1", "empty body", "data: URL"):
        assert why in logged, why
    assert internal.connections == 0


def test_data_urls_are_size_checked_before_decoding():
    fetcher = ImageFetcher(FetchPolicy(max_bytes=MB))
    fetcher.check_data_url("data:image/png;base64," + base64.b64encode(PNG).decode())
    fetcher.check_data_url("data:image/png;base64," + "A" * (MB * 4 // 3))       # exactly 1 MB
    with pytest.raises(InvalidRequest):              # not valid base64 either: size comes first
        fetcher.check_data_url("data:image/png;base64," + "@" * (MB * 4 // 3 + 8))


def test_fetching_switched_off_names_the_field(public):
    err, connects = refusal(public.url("/cat.png"), enabled=False)
    assert err.param == "image_url" and "`image_url` must be a data: URL" in err.message
    assert connects == [] and public.requests == []


# ---------------------------------------------------------------------------- the cap

def test_the_concurrency_cap_holds(public):
    async def five(fetcher):
        return await asyncio.gather(*(fetcher.fetch(public.url("/hold?s=0.3"))
                                      for _ in range(5)), return_exceptions=True)
    results, _ = run(five, concurrency=2, queue_wait_s=5)
    assert all(r.mime == "image/png" for r in results)      # they waited their turn
    assert public.max_active == 2 and len(public.requests) == 5

    public.reset()

    async def crowd(fetcher):
        return await asyncio.gather(*(fetcher.fetch(public.url("/hold?s=1"))
                                      for _ in range(5)), return_exceptions=True)
    results, _ = run(crowd, concurrency=2, queue_wait_s=0.2)
    busy = [r for r in results if isinstance(r, RateLimited)]
    assert len(busy) == 3 and public.max_active == 2 and len(public.requests) == 2
    assert {(e.status, e.code) for e in busy} == {(429, "image_fetch_busy")}
    assert busy[0].headers["Retry-After"] == "1"


# ---------------------------------------------------------------------------- settings

def test_the_settings_and_their_file_line_errors(tmp_path):
    (tmp_path / "models.yaml").write_text("providers: {}\nmodels: {}\n")
    conf = tmp_path / "apiarium.yaml"
    conf.write_text("media:\n  dir: media\n")
    s = load_config(conf, env={}).settings
    assert (s.fetch_image_urls, s.fetch_allow_cidrs, s.image_url_max_bytes, s.fetch_timeout_s,
            s.fetch_connect_timeout_s, s.fetch_concurrency) == (True, (), 20 * MB, 30, 10, 8)
    assert FetchPolicy.from_settings(s) == FetchPolicy()
    conf.write_text("media:\n"
                    "  fetch_image_urls: false\n"
                    "  fetch_allow_cidrs: [10.1.0.0/16, '2001:db8::/32']\n"
                    "  image_url_max_mb: 5\n")
    policy = FetchPolicy.from_settings(load_config(conf, env={}).settings)
    assert not policy.enabled and policy.max_bytes == 5 * MB
    assert [str(n) for n in policy.allow] == ["10.1.0.0/16", "2001:db8::/32"]
    conf.write_text("media:\n"
                    "  fetch_image_urls: sometimes\n"
                    "  fetch_allow_cidrs:\n"
                    "    - 10.0.0.0/8\n"
                    "    - intranet\n"
                    "  image_url_max_mb: 0\n"
                    "  fetch_timeout_s: forever\n"
                    "  fetch_connect_timeout_s: -1\n"
                    "  fetch_concurrency: 2.5\n"
                    "  fetch_everything: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    got = [str(p) for p in info.value.problems]
    for line, words in ((2, "media.fetch_image_urls: expected true or false"),
                        (5, "media.fetch_allow_cidrs: 'intranet' is not an IP address or CIDR"),
                        (6, "media.image_url_max_mb: 0 is out of range"),
                        (7, "media.fetch_timeout_s: expected a number"),
                        (8, "media.fetch_connect_timeout_s: -1 is out of range"),
                        (9, "media.fetch_concurrency: expected a whole number"),
                        (10, "unknown key 'media.fetch_everything'")):
        assert any(p.startswith(f"{conf}:{line}: ") and words in p for p in got), (line, got)
    assert len(got) == 7, got


# ---------------------------------------------------------------------------- end to end

def veo_models(gm) -> dict:
    return {"providers": {"google": {"kind": "gemini", "base_url": gm.base_url,
                                     "api_key": gm.api_key, "poll_interval_s": 0.05,
                                     "timeout_s": 20}},
            "models": {"veo-3": {"provider": "google", "upstream": "veo-3.0-generate-001",
                                 "type": "video"}}}


def veo_starts(fake) -> list:
    return [r for r in fake.requests if r.path.endswith(":predictLongRunning")]


def test_through_the_gateway(make_gateway, fake_gemini, internal, public):
    gw = make_gateway(veo_models(fake_gemini), media={"fetch_allow_cidrs": ["127.0.0.2/32"]})
    for url in (internal.url("/cat.png"), f"http://localhost:{internal.port}/cat.png",
                f"http://[::ffff:127.0.0.1]:{internal.port}/cat.png",
                public.url("/redirect?to=" + internal.url("/cat.png"))):
        status, _, raw = gw.post("/v1/videos/generations", {
            "model": "veo-3", "prompt": "the cat moves", "image_url": url}, key=MASTER_KEY)
        err = error_of(raw)
        assert status == 400 and err["message"] == FIXED_20MB and err["param"] == "image_url"
    status, _, raw = gw.post("/v1/chat/completions", {
        "model": "veo-3", "messages": [{"role": "user", "content": "the cat moves"}],
        "image_url": internal.url("/cat.png")}, key=MASTER_KEY)
    assert status == 400 and error_of(raw)["message"] == FIXED_20MB
    assert internal.connections == 0 and internal.requests == []
    assert veo_starts(fake_gemini) == []                    # refused before Veo was asked
    assert any("image_url refused" in line and "127.0.0.1" in line for line in gw.log)

    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "the cat moves", "image_url": public.url("/cat.png"),
        "duration_seconds": 4}, key=MASTER_KEY)
    assert status == 200, raw
    frame = veo_starts(fake_gemini)[-1].json["instances"][0]["image"]
    assert base64.b64decode(frame["bytesBase64Encoded"]) == PNG
    assert frame["mimeType"] == "image/png"
    assert json.loads(raw)["data"][0]["url"].endswith(".mp4")


def test_through_a_gateway_that_fetches_nothing_until_a_reload(make_gateway, fake_gemini, public):
    gw = make_gateway(veo_models(fake_gemini), media={"fetch_image_urls": False})
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "image_url": public.url("/cat.png")}, key=MASTER_KEY)
    err = error_of(raw)
    assert status == 400 and err["param"] == "image_url" and "data: URL" in err["message"]
    assert public.requests == [] and veo_starts(fake_gemini) == []
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "image_url": data_url, "duration_seconds": 4},
        key=MASTER_KEY)
    assert status == 200, raw
    frame = veo_starts(fake_gemini)[-1].json["instances"][0]["image"]
    assert frame == {"bytesBase64Encoded": data_url.split(",", 1)[1], "mimeType": "image/png"}
    # switched on by a reload (SIGHUP), with 127.0.0.2 allowed
    settings = yaml.safe_load(gw.config.read_text())
    settings["media"].update(fetch_image_urls=True, fetch_allow_cidrs=["127.0.0.2/32"])
    gw.config.write_text(yaml.safe_dump(settings))
    gw.reload()                              # SIGHUP to a process, the same call in-process
    assert wait_for(lambda: any("configuration reloaded" in line for line in gw.log))
    status, _, raw = gw.post("/v1/videos/generations", {
        "model": "veo-3", "prompt": "x", "image_url": public.url("/cat.png"),
        "duration_seconds": 4}, key=MASTER_KEY)
    assert status == 200, raw
    frame = veo_starts(fake_gemini)[-1].json["instances"][0]["image"]
    assert base64.b64decode(frame["bytesBase64Encoded"]) == PNG
