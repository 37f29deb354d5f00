"""Every route declares its admission (issue 22, item 1), and what it declares holds: the
bucket it takes, its body cap, and that a method it declares nothing for is refused."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import tornado.web

from apiarium import app
from apiarium.handlers import admission
from apiarium.handlers.base import ApiHandler, BaseHandler
from tests.conftest import openai_models, with_claude
from tests.support import MASTER_KEY, error_of, request, wait_for
from tests.test_exposure_compaction import bomb, slowest_health_with_bombs


def served_handlers() -> list[type[tornado.web.RequestHandler]]:
    return [route[1] for route in app.routes()] + [app.NotFoundHandler]


def test_every_route_declares_its_admission_for_every_method_it_answers():
    handlers = served_handlers()
    assert len(handlers) >= 20
    seen = []
    for cls in handlers:
        declared = cls.admission
        assert declared, cls.__name__
        for method in admission.answered_methods(cls):
            adm = declared[method]
            seen.append((cls.__name__, method, adm.bucket))
            # a route that bills credits takes the key's request bucket, and one that reads
            # a body says how much; a public route never reads one
            if adm.charge == admission.CREDITS:
                assert adm.bucket == admission.REQUESTS
            if adm.bucket == admission.ADDRESS:
                assert adm.body == admission.NO_BODY
            if method in ("GET", "HEAD", "DELETE"):
                assert adm.body == admission.NO_BODY, (cls.__name__, method)
    assert admission.undeclared(handlers) == []
    buckets = {b for _, _, b in seen}
    assert buckets == set(admission.BUCKETS)
    # the routes issue 22 found unlimited are limited now
    table = {(c, m): b for c, m, b in seen}
    assert table["CountTokensHandler", "POST"] == admission.LOOKUPS
    assert table["CompactHandler", "POST"] == admission.LOOKUPS
    assert table["VideoJobsHandler", "GET"] == admission.LOOKUPS
    assert table["VideoJobHandler", "DELETE"] == admission.LOOKUPS
    assert table["VideoContentHandler", "GET"] == admission.LOOKUPS
    assert table["HealthHandler", "GET"] == admission.ADDRESS


def test_a_route_that_declares_nothing_stops_the_gateway_from_starting(monkeypatch):
    class Undeclared(ApiHandler):
        async def post(self) -> None:
            self.write_json({})

    @admission.admits(GET=admission.lookup("a read"))
    class HalfDeclared(ApiHandler):
        def get(self) -> None:
            self.write_json({})

        def delete(self) -> None:
            self.write_json({})

    class Inherits(HalfDeclared):          # a subclass declares its own
        pass

    assert admission.undeclared([Undeclared, HalfDeclared, Inherits]) == [
        "Undeclared POST", "HalfDeclared DELETE", "Inherits GET", "Inherits DELETE"]
    real = app.routes
    monkeypatch.setattr(app, "routes", lambda: [*real(), (r"/v1/new", Undeclared)])
    with pytest.raises(RuntimeError, match="Undeclared POST"):
        app.make_app(None)  # type: ignore[arg-type]  # refused before the services are used


def test_an_admission_must_say_what_it_bounds():
    with pytest.raises(ValueError):
        admission.Admission(admission.LOOKUPS, admission.CREDITS, 0, "a read that bills")
    with pytest.raises(ValueError):
        admission.Admission(admission.REQUESTS, admission.CREDITS, -1, "")
    with pytest.raises(ValueError):
        admission.admits(FETCH=admission.lookup("x"))
    assert admission.request("x").body_cap(1000) == 1000
    assert admission.lookup("x", body=10).body_cap(1000) == 10
    assert admission.lookup("x", body=10_000).body_cap(1000) == 1000


# ---------------------------------------------------------------------- against a gateway
@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic):
    models = with_claude(fake_openai, fake_anthropic)
    return make_gateway(models, rate_limit={"rpm": 4, "lookups_per_minute": 3},
                        security={"public_requests_per_minute": 5})


def _count(gw, key: str, ip: str, model: str = "sonnet"):
    return gw.post("/v1/messages/count_tokens", {
        "model": model, "messages": [{"role": "user", "content": "hi"}]}, key, ip=ip)


LOOKUP_CALLS = ("count_tokens", "count_tokens_translated", "compact", "models", "video_list",
                "video_delete")


@pytest.mark.parametrize("call", LOOKUP_CALLS)
def test_lookups_take_their_own_bucket_not_the_requests_one(gw, fake_anthropic, call):
    ip = f"127.0.8.{10 + LOOKUP_CALLS.index(call)}"
    key = gw.key_for(ip)

    def once():
        if call == "count_tokens":
            return _count(gw, key, ip)
        if call == "count_tokens_translated":
            return _count(gw, key, ip, model="gpt-5")
        if call == "compact":
            return gw.post("/v1/responses/compact", {
                "model": "gpt-5", "input": [{"role": "user", "content": "hi"}]}, key, ip=ip)
        if call == "models":
            return gw.get("/v1/models", key, ip=ip)
        if call == "video_list":
            return gw.get("/v1/videos", key, ip=ip)
        return request(gw.url + "/v1/videos/video_nope", "DELETE", None,
                       {"Authorization": f"Bearer {key}"}, ip=ip)
    counted = len(fake_anthropic.requests)
    answers = [once() for _ in range(4)]
    assert [s for s, _, _ in answers[:3]] == ([404] * 3 if call == "video_delete" else [200] * 3)
    status, headers, body = answers[3]
    assert status == 429, body
    err = json.loads(body)["error"]          # Anthropic's envelope on /v1/messages/…
    assert "lookups" in err["message"] and int(headers["retry-after"]) >= 1
    if call == "count_tokens":
        assert len(fake_anthropic.requests) == counted + 3      # the 4th never went upstream
    # the requests bucket is untouched: the key's 4 requests a minute are all there
    status, headers, _ = gw.post("/v1/chat/completions", {
        "model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, key, ip=ip)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "3"
    # and the master key is bound by neither
    assert gw.get("/v1/models", MASTER_KEY, ip=ip)[0] == 200


def test_count_tokens_refuses_a_body_over_its_cap_on_the_head(gw):
    ip = "127.0.8.20"
    key = gw.key_for(ip)
    size = 19 * 1024 * 1024
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", gw.port), source_address=(ip, 0)) as sock:
        sock.sendall(b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: x\r\nx-api-key: "
                     + key.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(size).encode() + b"\r\n\r\n")
        answer = sock.recv(65536)
    assert time.perf_counter() - started < 2
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    err = json.loads(body)["error"]                    # Anthropic's envelope on /v1/messages
    assert "/v1/messages/count_tokens accepts at most 4 MB" in err["message"]


def test_health_stays_fast_while_count_tokens_floods_and_compaction_bombs_arrive(
        make_gateway, fake_openai):
    # a process of its own: the ten senders here must not share the gateway's GIL
    gw = make_gateway(openai_models(fake_openai), process=True)
    ip = "127.0.8.21"
    key = gw.key_for(ip)
    chunk = b'{"model": "gpt-5", "messages": [' + b'{"role": "user", "content": "a"},' * 8000
    stop = threading.Event()
    refused = []

    def flood():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", gw.port),
                                              source_address=(ip, 0)) as sock:
                    sock.sendall(b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: x\r\n"
                                 b"x-api-key: " + key.encode() + b"\r\nContent-Type: "
                                 b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(80):             # ~19 MB, chunked: no length to refuse
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                refused.append(1)                  # the gateway hung up at the 4 MB cap

    threads = [threading.Thread(target=flood) for _ in range(10)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: len(refused) >= 10, timeout=20)
        # and ten forged-compaction bombs at once (the master key's: no bucket stops them
        # before the work); the best of three rounds, as one can meet a busy box's scheduler
        bodies = [bomb("v1" if n % 2 else "v2") for n in range(10)]
        best = min(slowest_health_with_bombs(gw, bodies, MASTER_KEY) for _ in range(3))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert best < 0.05, best


def test_public_routes_take_the_address_bucket(gw):
    ip = "127.0.8.30"
    for _ in range(5):
        assert gw.get("/health", ip=ip)[0] == 200
    status, headers, body = gw.get("/openapi.json", ip=ip)       # one bucket for all of them
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert "at most 5 a minute" in error_of(body)["message"]
    assert gw.get("/no/such/path", ip=ip)[0] == 429
    assert gw.get("/health", ip="127.0.8.31")[0] == 200            # another network's own


def test_a_method_a_route_does_not_declare_is_405_before_anything_else(gw):
    for method, path in (("PUT", "/v1/chat/completions"), ("DELETE", "/v1/models"),
                         ("PATCH", "/v1/videos"), ("POST", "/health")):
        status, headers, body = request(gw.url + path, method, b"{}", ip="127.0.8.40")
        assert status == 405, (method, path, body)
        assert error_of(body)["type"] == "invalid_request_error"
        assert "allow" in headers


def test_a_lookup_takes_no_body(gw):
    ip = "127.0.8.41"
    key = gw.key_for(ip)
    status, _, body = request(gw.url + "/v1/models", "GET", b"x" * 100,
                              {"Authorization": f"Bearer {key}"}, ip=ip)
    assert status == 413
    assert "takes no request body" in error_of(body)["message"]


def test_base_handler_has_no_admission_of_its_own():
    assert BaseHandler.admission == {} and ApiHandler.admission == {}
