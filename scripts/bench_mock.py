#!/usr/bin/env python3
"""A fast mock upstream for scripts/bench: OpenAI chat completions and Anthropic messages.

A raw asyncio protocol on uvloop (no framework), so that it is never the bottleneck:

  POST /v1/chat/completions   non-stream JSON, or an SSE stream of N content chunks, a finish
                              chunk (plus a usage chunk when asked) and ``data: [DONE]``
  POST /v1/messages           Anthropic Messages: JSON, or named events (message_start,
                              content_block_start, ping, N content_block_delta, content_block_stop,
                              message_delta, message_stop)
  GET  /health                200

Defaults come from the command line (--events, --interval, --latency); a request whose model
is named ``<anything>-e<EVENTS>-i<INTERVAL_MS>[-l<LATENCY_MS>]`` overrides them, so one mock
serves every phase of the benchmark.  Content event i carries the text ``"tok<i> "``, which lets
the load client check that every event arrives, in order, as its own event.

    python scripts/bench_mock.py --port 0 --events 20 --interval 0.05 --latency 0
"""
from __future__ import annotations

import argparse
import asyncio
import re
import resource
import signal
import sys
import time
from typing import ClassVar, cast

OVERRIDE = re.compile(rb'-e(\d+)-i(\d+(?:\.\d+)?)(?:-l(\d+(?:\.\d+)?))?$')
MODEL = re.compile(rb'"model"\s*:\s*"([^"]{0,200})"')
STREAM = re.compile(rb'"stream"\s*:\s*true')
USAGE = re.compile(rb'"include_usage"\s*:\s*true')
CREATED = b"1767225600"
ANSWER = b"Hello from the bench mock: a short answer of about a dozen words, as a chat does."
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
             b"Content-Length: 2\r\n\r\n{}")


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# ---------------------------------------------------------------------- OpenAI shapes
def oa_json(model: bytes) -> bytes:
    return (b'{"id":"chatcmpl-bench","object":"chat.completion","created":' + CREATED
            + b',"model":"' + model + b'","choices":[{"index":0,"message":{"role":"assistant",'
            b'"content":"' + ANSWER + b'","refusal":null},"logprobs":null,"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":12,"completion_tokens":17,"total_tokens":29},'
            b'"system_fingerprint":"fp_bench"}')


def oa_chunk(model: bytes, delta: bytes, finish: bytes = b"null", usage: bytes = b"") -> bytes:
    return (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":' + CREATED
            + b',"model":"' + model + b'","choices":[{"index":0,"delta":' + delta
            + b',"logprobs":null,"finish_reason":' + finish + b'}]' + usage + b'}\n\n')


def oa_frame(model: bytes, i: int, usage: bool) -> bytes:
    u = b',"usage":null' if usage else b""
    if i == 0:
        return oa_chunk(model, b'{"role":"assistant","content":"tok0 "}', usage=u)
    return oa_chunk(model, b'{"content":"tok%d "}' % i, usage=u)


def oa_tail(model: bytes, events: int, usage: bool) -> bytes:
    tail = oa_chunk(model, b"{}", b'"stop"', b',"usage":null' if usage else b"")
    if usage:
        tail += (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
                 + CREATED + b',"model":"' + model + b'","choices":[],"usage":{"prompt_tokens":12,'
                 b'"completion_tokens":%d,"total_tokens":%d}}\n\n' % (events, events + 12))
    return tail + b"data: [DONE]\n\n"


# ---------------------------------------------------------------------- Anthropic shapes
def an_json(model: bytes) -> bytes:
    return (b'{"id":"msg_bench","type":"message","role":"assistant","model":"' + model
            + b'","content":[{"type":"text","text":"' + ANSWER + b'"}],"stop_reason":"end_turn",'
            b'"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":17}}')


def an_event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def an_head(model: bytes) -> bytes:
    return (an_event(b"message_start", b'{"type":"message_start","message":{"id":"msg_bench",'
                     b'"type":"message","role":"assistant","model":"' + model + b'","content":[],'
                     b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,'
                     b'"output_tokens":1}}}')
            + an_event(b"content_block_start", b'{"type":"content_block_start","index":0,'
                       b'"content_block":{"type":"text","text":""}}')
            + an_event(b"ping", b'{"type":"ping"}'))


def an_frame(i: int) -> bytes:
    return an_event(b"content_block_delta", b'{"type":"content_block_delta","index":0,'
                    b'"delta":{"type":"text_delta","text":"tok%d "}}' % i)


def an_tail(events: int) -> bytes:
    return (an_event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
            + an_event(b"message_delta", b'{"type":"message_delta","delta":{"stop_reason":'
                       b'"end_turn","stop_sequence":null},"usage":{"output_tokens":%d}}' % events)
            + an_event(b"message_stop", b'{"type":"message_stop"}'))


# ---------------------------------------------------------------------- the server
class Mock(asyncio.Protocol):
    defaults: tuple[int, float, float] = (20, 0.05, 0.0)   # events, interval s, latency s
    tasks: ClassVar[set[asyncio.Future]] = set()    # streams in progress, shared by all
    cache: ClassVar[dict[tuple[bytes, bool], bytes]] = {}   # (model, anthropic) -> reply
    served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)         # a TCP server's: a Transport
        self.buf = b""
        self.busy = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.busy = True            # nothing more to do on this connection

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while self.buf and not self.t.is_closing():
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.t.close()
                return
            head = buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r", i + 16)
                length = int(lower[i + 16:j if j >= 0 else None])
            elif b"\ntransfer-encoding:" in lower:
                self.t.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                self.t.close()
                return
            if len(buf) < end + 4 + length:
                return
            body = buf[end + 4:end + 4 + length]
            self.buf = buf[end + 4 + length:]
            line_end = head.find(b"\r\n")
            line_end = len(head) if line_end < 0 else line_end
            method, path = head[:line_end].split(b" ", 2)[:2]
            Mock.served += 1
            if not self.answer(method, path.split(b"?", 1)[0], body):
                return          # busy: a stream or a delayed answer resumes processing

    def params(self, model: bytes) -> tuple[int, float, float]:
        m = OVERRIDE.search(model)
        if not m:
            return self.defaults
        latency = float(m.group(3)) / 1000 if m.group(3) else self.defaults[2]
        return int(m.group(1)), float(m.group(2)) / 1000, latency

    def answer(self, method: bytes, path: bytes, body: bytes) -> bool:
        """Write the answer (or start it); False when the connection is now busy."""
        if method == b"GET":
            self.t.write(OK_HEAD % (b"application/json", 15) + b'{"status":"ok"}'
                         if path in (b"/health", b"/v1/models") else NOT_FOUND)
            return True
        anthropic = path == b"/v1/messages"
        if not anthropic and not path.endswith(b"/chat/completions"):
            self.t.write(NOT_FOUND)
            return True
        m = MODEL.search(body)
        model = m.group(1) if m else b"bench"
        events, interval, latency = self.params(model)
        if STREAM.search(body):
            usage = bool(USAGE.search(body))
            self.busy = True
            task = asyncio.ensure_future(self.stream(model, anthropic, events, interval,
                                                     latency, usage))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return False
        key = (model, anthropic)
        reply = self.cache.get(key)
        if reply is None:
            data = an_json(model) if anthropic else oa_json(model)
            reply = self.cache[key] = OK_HEAD % (b"application/json", len(data)) + data
            if len(self.cache) > 1000:
                self.cache.clear()
        if latency <= 0:
            self.t.write(reply)
            return True
        self.busy = True
        asyncio.get_running_loop().call_later(latency, self.delayed, reply)
        return False

    def delayed(self, reply: bytes) -> None:
        if self.t.is_closing():
            return
        self.t.write(reply)
        self.resume()

    def resume(self) -> None:
        self.busy = False
        if self.buf:
            self.process()

    async def stream(self, model: bytes, anthropic: bool, events: int, interval: float,
                     latency: float, usage: bool) -> None:
        """Frames are made one at a time: a slow stream may be told to last an hour."""
        t = self.t
        if latency > 0:
            await asyncio.sleep(latency)
        if anthropic:
            head, tail = an_head(model), an_tail(events)
            frame = an_frame
        else:
            head, tail = b"", oa_tail(model, events, usage)
            frame = lambda i: oa_frame(model, i, usage)       # noqa: E731
        if interval <= 0:      # everything at once: the relay still has to split it
            body = head + b"".join(frame(i) for i in range(events)) + tail
            t.write(SSE_HEAD + chunked(body) + b"0\r\n\r\n")
            self.resume()
            return
        t.write(SSE_HEAD + chunked(head + frame(0)) if events else SSE_HEAD)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(1, events):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if t.is_closing():
                return
            t.write(chunked(frame(i)))
        if events:
            await asyncio.sleep(max(0.0, start + events * interval - loop.time()))
        if t.is_closing():
            return
        t.write(chunked(tail) + b"0\r\n\r\n")
        self.resume()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--events", type=int, default=20, help="content events per stream")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between events")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before the answer")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Mock.defaults = (args.events, args.interval, args.latency)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:                                    # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        Mock, args.host, args.port, backlog=4096, reuse_address=True))
    port = server.sockets[0].getsockname()[1]
    print(f"bench-mock listening on http://{args.host}:{port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    started = time.monotonic()
    loop.run_forever()
    server.close()
    print(f"bench-mock: {Mock.served} requests in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
