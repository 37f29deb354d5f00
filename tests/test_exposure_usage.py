"""Usage booked whatever happens (issue 13): a client that hangs up mid-stream is charged
for the request and what was relayed until then."""
from __future__ import annotations

import json
import socket

from tests.conftest import openai_models
from tests.support import wait_for


def test_hanging_up_mid_stream_is_still_charged(make_gateway, fake_openai):
    fake_openai.stream_events = 200
    fake_openai.stream_delay = 0.02
    fake_openai.reply_text = " ".join(f"w{i}" for i in range(200))
    gw = make_gateway(openai_models(fake_openai))
    ip = "127.0.0.62"
    key = gw.key_for(ip)
    body = json.dumps({"model": "gpt-5", "stream": True,
                       "messages": [{"role": "user", "content": "count " * 40}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), source_address=(ip, 0))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 20:                   # about a tenth of the answer
        got += sock.recv(65536)
    sock.close()                                       # hang up mid-stream
    started = len(fake_openai.requests)

    def usage() -> dict:
        return json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    assert wait_for(lambda: usage()["requests"] == 1, timeout=5), usage()
    spent = usage()
    assert spent["prompt_tokens"] > 0                  # an estimate: the upstream never said
    assert 10 <= spent["completion_tokens"] < 200      # what was relayed, not the whole answer
    assert spent["credits"] > 0
    # the request has ended (its access-log line): any retry it made has reached the fake
    assert wait_for(lambda: [ln for ln in gw.log if "POST /v1/chat/completions 499 " in ln])
    assert len(fake_openai.requests) == started        # and nothing was retried upstream
