#!/usr/bin/env python3
"""The floor for scripts/bench: the least a Tornado + aiohttp relay can do on uvloop.

POST /v1/chat/completions goes upstream on one shared aiohttp session; a JSON answer is read
whole and written, an event stream is relayed chunk by chunk with ``await self.flush()``.
No auth, no checks, no logging.  Any Python gateway of this stack pays at least this much.

    python scripts/bare_relay.py --upstream http://127.0.0.1:9000 --port 0
"""
import argparse
import asyncio
import contextlib
import resource

import aiohttp
import tornado.httpserver
import tornado.netutil
import tornado.web
import uvloop


class Relay(tornado.web.RequestHandler):
    async def post(self) -> None:
        session, url = self.settings["session"], self.settings["url"]
        async with session.post(url, data=self.request.body,
                                headers={"Content-Type": "application/json"}) as resp:
            self.set_status(resp.status)
            self.set_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
            if resp.content_type != "text/event-stream":
                self.write(await resp.read())
                return
            async for chunk in resp.content.iter_any():
                self.write(chunk)
                await self.flush()


async def main() -> None:
    p = argparse.ArgumentParser(description="bare Tornado + aiohttp relay (benchmark floor)")
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=None))
    app = tornado.web.Application([(r"/v1/chat/completions", Relay)], session=session,
                                  url=args.upstream.rstrip("/") + "/v1/chat/completions")
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(args.port, args.host, backlog=4096)
    server.add_sockets(sockets)
    print(f"bare relay listening on http://{args.host}:{sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
