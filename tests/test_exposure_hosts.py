"""Exposure (issue 13.6), Host header injection: with ``server.allowed_hosts`` a request
naming another host gets 421 on the API paths, and no host a client names ever appears in a
media URL or the homepage; listening on every address without ``public_url`` is warned
about at start-up.  DNS rebinding (issue 22, L5): with ``allowed_hosts`` set the homepage,
which shows the visitor's key, answers 421 under another host too; an empty
``allowed_hosts`` beyond loopback is warned about by check-config and at start-up."""
from __future__ import annotations

import json
import socket

import pytest

from apiarium import hosts
from tests.conftest import openai_models
from tests.support import error_of, request, wait_for

MASTER = "exposure-master-key-0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]
EVIL = "evil.example"
EVERYWHERE = "0.0.0.0"


def send(gw, method: str, path: str, host: str, body=None, key: str | None = MASTER,
         headers: dict | None = None, ip: str = "127.0.0.1"):
    h = {"Host": host, "Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body)
    return request(gw.url + path, method, data, h, ip=ip)


@pytest.fixture
def pinned(make_gateway, fake_openai):
    """A gateway that answers to api.example.com (any port) and localhost:<its port>."""
    for _ in range(20):
        with socket.socket() as probe:             # a free port, to name in the config
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        gw = make_gateway(openai_models(fake_openai), master_key=MASTER, start=False,
                          server={"allowed_hosts": ["API.example.com", f"localhost:{port}"],
                                  "port": port})
        try:
            return gw.start()
        except RuntimeError as exc:                # taken meanwhile: another port
            if "Address already in use" not in str(exc):
                raise
    raise RuntimeError("no free port for the pinned gateway in 20 tries")


def test_a_foreign_host_gets_421_on_the_api(pinned):
    gw = pinned
    cases = [("POST", "/v1/chat/completions", {"model": "gpt-5", "messages": MSG}),
             ("POST", "/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"}),
             ("GET", "/v1/models", None), ("GET", "/v1/keys/me", None)]
    for method, path, body in cases:
        for host in (EVIL, f"{EVIL}:{gw.port}", f"localhost:{gw.port + 1}", "127.0.0.1",
                     f"api.example.com.{EVIL}"):
            status, headers, raw = send(gw, method, path, host, body)
            assert status == 421, (path, host, raw)
            err = error_of(raw)
            assert err["code"] == "misdirected_request", err
            assert headers["x-request-id"].startswith("req_")
    # the names it answers to work, the port of a bare name free, case and a final dot aside
    for host in ("api.example.com", f"API.Example.com.:{gw.port}", f"localhost:{gw.port}"):
        status, _, raw = send(gw, "POST", "/v1/chat/completions", host,
                              {"model": "gpt-5", "messages": MSG})
        assert status == 200, (host, raw)
    # an untrusted peer cannot switch the host with X-Forwarded-Host, either way
    status, _, _ = send(gw, "GET", "/v1/models", "api.example.com",
                        headers={"X-Forwarded-Host": EVIL})
    assert status in (200, 403)            # 403: proxy headers from an untrusted peer
    assert send(gw, "GET", "/v1/models", EVIL,
                headers={"X-Forwarded-Host": "api.example.com"})[0] in (421, 403)


def test_foreign_hosts_never_reach_media_urls_or_the_homepage(pinned, fake_openai):
    gw = pinned
    # Host injection on the media endpoints is refused before anything is generated
    made = len(fake_openai.requests)
    status, _, raw = send(gw, "POST", "/v1/images/generations", EVIL,
                          {"model": "gpt-image-1", "prompt": "x"})
    assert status == 421 and EVIL.encode() not in raw
    assert len(fake_openai.requests) == made
    status, _, raw = send(gw, "POST", "/v1/images/generations", "api.example.com",
                          {"model": "gpt-image-1", "prompt": "x"})
    assert status == 200, raw
    assert json.loads(raw)["data"][0]["url"].startswith("http://api.example.com/media/")
    # the homepage renders for an allowed name, with that name in every link
    status, _, page = send(gw, "GET", "/", f"localhost:{gw.port}", key=None)
    assert status == 200 and f'data-origin="http://localhost:{gw.port}"'.encode() in page


def test_the_homepage_shows_no_key_under_a_foreign_host(pinned):
    """DNS rebinding (issue 22, L5): a page on evil.example whose name now points at the
    gateway asks it for / from the visitor's browser; with allowed_hosts set, it gets a 421
    page, never the visitor's key."""
    gw = pinned
    ip = "127.0.5.30"
    for host in (EVIL, f"{EVIL}:{gw.port}", f"api.example.com.{EVIL}", "127.0.0.1"):
        status, headers, page = send(gw, "GET", "/", host, key=None, ip=ip)
        assert status == 421, (host, page[:300])
        assert headers["content-type"].startswith("text/html")
        assert b"misdirected_request" in page and b"data-key" not in page, host
    status, _, page = send(gw, "GET", "/", "api.example.com", key=None, ip=ip)
    assert status == 200, page[:300]
    shown = page.split(b'data-key="')[1].split(b'"')[0].decode()
    status, _, raw = send(gw, "GET", "/v1/keys/me", "api.example.com", key=None, ip=ip)
    assert status == 200 and json.loads(raw)["key"] == shown
    assert send(gw, "GET", "/v1/keys/me", EVIL, key=None, ip=ip)[0] == 421


def test_public_url_wins_over_any_host(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER,
                      server={"public_url": "https://api.example.com/"})
    status, _, raw = send(gw, "POST", "/v1/chat/completions", EVIL,
                          {"model": "gpt-image-1", "messages": MSG})
    assert status == 200, raw
    url = json.loads(raw)["choices"][0]["message"]["content"]
    assert url.startswith("https://api.example.com/media/") and EVIL not in url
    status, _, page = send(gw, "GET", "/", EVIL, key=None)
    assert status == 200 and EVIL.encode() not in page
    assert not [ln for ln in gw.log if "without server.public_url" in ln]


def test_listening_everywhere_without_public_url_is_warned(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER,
                      server={"host": EVERYWHERE})
    line = wait_for(lambda: [ln for ln in gw.log if "without server.public_url" in ln])
    assert line and "WARNING" in line[0] and "server.allowed_hosts" in line[0], gw.log
    rebinding = [ln for ln in gw.log if "DNS rebinding" in ln]       # issue 22, L5
    assert rebinding and "WARNING" in rebinding[0], gw.log
    assert "server.allowed_hosts is empty and server.host (0.0.0.0)" in rebinding[0]
    pinned = make_gateway(openai_models(fake_openai), master_key=MASTER,
                          server={"host": EVERYWHERE, "allowed_hosts": ["api.example.com"]})
    assert not [ln for ln in pinned.log if "without server.public_url" in ln]
    local = make_gateway(openai_models(fake_openai), master_key=MASTER)
    assert not [ln for ln in local.log if "without server.public_url" in ln]
    assert not [ln for ln in pinned.log + local.log if "DNS rebinding" in ln]


@pytest.mark.parametrize(("server", "warned"), [
    ({"host": EVERYWHERE}, True), ({"host": "192.0.2.10"}, True), ({"host": "::"}, True),
    ({"host": "gateway.internal"}, True),
    ({"host": EVERYWHERE, "public_url": "https://api.example.com"}, True),
    ({"host": EVERYWHERE, "allowed_hosts": ["api.example.com"]}, False),
    ({"host": "127.0.0.1"}, False), ({"host": "127.0.5.1"}, False), ({"host": "::1"}, False),
    ({"host": "localhost"}, False)])
def test_check_config_warns_of_an_open_homepage_beyond_loopback(tmp_path, capsys, server,
                                                                warned):
    from apiarium.cli import main
    from tests.inprocess import write_config

    path = write_config(tmp_path, {"providers": {}, "models": {}}, server=server)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: ok")
    warnings = [ln for ln in out if ln.startswith(f"{path}: warning: ")]
    assert bool(warnings) is warned, out
    if warned:
        assert "server.allowed_hosts is empty" in warnings[0]
        assert "DNS rebinding" in warnings[0] and "api.example.com" in warnings[0]


def test_host_matching_rules():
    names = tuple(filter(None, map(hosts.normalize, ["Api.Example.com.", "localhost:8080",
                                                     "[::1]"])))
    assert names == ("api.example.com", "localhost:8080", "[::1]")
    for host, ok in [("api.example.com", True), ("API.EXAMPLE.COM:443", True),
                     ("localhost:8080", True), ("localhost", False), ("localhost:80", False),
                     ("[::1]:8080", True), ("api.example.com.evil.example", False),
                     ("evil.example/api.example.com", False), ("", False),
                     ("api.example.com@evil.example", False)]:
        assert hosts.allowed(host, names) is ok, host
    assert hosts.allowed("anything.at.all", ())
    for bad in ("", "a b", "x/y", "<script>", "host:port"):
        assert hosts.normalize(bad) is None, bad
    assert hosts.base_url("", "javascript", EVIL, names, "127.0.0.1:1") == \
        "http://api.example.com"
    assert hosts.base_url("", "https", "localhost:8080", names, "x") == "https://localhost:8080"
    assert hosts.base_url("", "http", "<bad>", (), "127.0.0.1:9") == "http://127.0.0.1:9"


def test_allowed_hosts_are_checked_at_load(tmp_path):
    from apiarium.config import ConfigError, load_config
    from tests.inprocess import write_config

    path = write_config(tmp_path, {"providers": {}, "models": {}},
                        server={"allowed_hosts": ["ok.example", "not a host", "x/y"]})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    problems = [str(p) for p in exc.value.problems]
    assert len(problems) == 2 and all(p.startswith(f"{path}:") for p in problems), problems
    assert "server.allowed_hosts: 'not a host' is not a host name" in problems[0]
