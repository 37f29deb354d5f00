#!/usr/bin/env python3
"""Deterministic costs of the hot path, for A/B work on a busy machine (scripts/bench needs
a quiet one):

  cpu     instructions per non-stream chat request, counted by valgrind's callgrind in the
          server process only: the gateway (master key, access log on, as scripts/bench
          runs it; ``--key issued`` adds a key's auth, buckets and credit hold) and the bare
          relay (scripts/bare_relay.py), each behind the same mock upstream.  The server
          is warmed up, its counters zeroed, then N requests are sent from a client in
          another process (C connections, keep-alive) and the counters dumped: what the
          server spent on exactly those N requests.  Instruction counts do not depend on
          what else the machine is doing.
  memory  bytes per open slow stream, by tracemalloc, in a server process of its own: the
          gateway (in-process ``Gateway``) or the bare relay, K streams of one event a
          second held open by a client in another process; (traced bytes with all K open -
          traced bytes before) / K, and the lines that allocated the most.

    scripts/cpu_profile.py cpu [--requests 2000] [--connections 8] [--only gateway|bare]
                               [--annotate DIR]
    scripts/cpu_profile.py memory [--streams 500] [--only gateway|bare] [--top 25]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PY = sys.executable
MASTER = "bench-master-key-0123456789abcdef"
SLOW_MODEL = "bench-e3600-i1000"
STREAM_MODEL = "bench-e20-i0"          # 20 content events, sent at once
sys.path.insert(0, str(SCRIPTS))
from bench import Server, chat_body  # noqa: E402


def start_mock(tmp: Path) -> Server:
    return Server("mock", [PY, str(SCRIPTS / "bench_mock.py"), "--events", "20",
                           "--interval", "0.05"], "0-1", tmp / "mock.log",
                  r"bench-mock listening on (http://\S+)").start()


def gateway_config(tmp: Path, mock_url: str) -> Path:
    """The gateway's configuration, as scripts/bench writes it."""
    d = tmp / "gateway"
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "apiarium.yaml").write_text(json.dumps({
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 2},
        "database": str(d / "data" / "apiarium.sqlite3"), "catalog": "models.yaml",
        "master_key": MASTER, "rate_limit": {"rpm": 1_000_000},
        # --key issued: one key at C connections, its holds counted but never refused
        "limits": {"max_concurrent_requests": 1_000_000},
        "media": {"dir": str(d / "data" / "media")}}, indent=1))
    (d / "models.yaml").write_text(json.dumps({
        "providers": {"mock": {"kind": "openai", "base_url": mock_url + "/v1",
                               "api_key": "sk-bench-upstream", "connect_timeout_s": 120}},
        "models": {m: {"provider": "mock"} for m in ("bench", SLOW_MODEL, STREAM_MODEL)}},
        indent=1))
    return d / "apiarium.yaml"


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(APIARIUM_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return env


# ====================================================================== the load client
async def _load(url: str, body: bytes, key: str, n: int, conns: int) -> tuple[int, int]:
    """``n`` POSTs over ``conns`` keep-alive connections: (status 200 count, others)."""
    u = re.match(r"http://([^:/]+):(\d+)", url)
    if u is None:
        raise ValueError(f"not an http://host:port URL: {url}")
    host, port = u.group(1), int(u.group(2))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n").encode()
    left = [n]
    tally = [0, 0]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(head + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            tally[0 if status == 200 else 1] += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return tally[0], tally[1]


def load_client(args: list[str]) -> int:
    """``cpu_profile.py _load URL KEY N CONNS``: print ``OK n BAD m``."""
    url, key, n, conns = args[0], args[1], int(args[2]), int(args[3])
    ok, bad = asyncio.run(_load(url, chat_body("bench").encode(), key, n, conns))
    print(f"OK {ok} BAD {bad}", flush=True)
    return 0 if bad == 0 else 1


def run_load(url: str, key: str, n: int, conns: int, stream: bool = False) -> None:
    if stream:                 # bench.py's stream client: it checks every event
        spec = {"url": url, "key": key, "model": STREAM_MODEL, "n": n, "events": 20,
                "concurrency": conns, "timeout": 3000}
        cmd = [PY, str(SCRIPTS / "bench.py"), "_streams", json.dumps(spec)]
    else:
        cmd = [PY, __file__, "_load", url, key, str(n), str(conns)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if stream and '"failed": 0' not in out.stdout:
        raise RuntimeError(f"stream client failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stdout} {out.stderr[-2000:]}")


def issue_key(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url + "/v1/keys/me", timeout=600) as resp:  # noqa: S310
        return json.loads(resp.read())["key"]


# ====================================================================== cpu
def callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure_cpu(name: str, cmd: list[str], ready: str, tmp: Path, a: argparse.Namespace,
                key: str) -> dict:
    out = tmp / f"callgrind.{name}"
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
          "--dump-instr=no", "--collect-jumps=no", "--separate-threads=no"]
    srv = Server(name, [*vg, *cmd], "0-1", tmp / f"{name}.log", ready, env=server_env())
    srv.start(timeout=900)
    try:
        if key == "issued":
            key = issue_key(srv.url)
        run_load(srv.url, key, a.warmup, a.connections, a.stream)       # warm-up
        time.sleep(3)                  # the gateway's deferred writes (log, usage) happen
        control(srv.pid, "-z")
        time.sleep(a.idle)             # what the server does idle: its timers (log, usage
        control(srv.pid, "-d", "idle")  # and key-store ticks), paid per second of wall time
        t0 = time.monotonic()
        run_load(srv.url, key, a.requests, a.connections, a.stream)
        control(srv.pid, "-d", "measured")
        seconds = time.monotonic() - t0
        time.sleep(1)
    finally:
        srv.stop()
    dumps = sorted(tmp.glob(f"callgrind.{name}.*"), key=lambda p: p.stat().st_mtime)

    def dump(trigger: str) -> Path:
        found = [p for p in dumps if trigger in p.read_text(errors="replace")[:2000]]
        if not found:
            raise RuntimeError(f"no {trigger} callgrind dump for {name}: {dumps}")
        return found[-1]
    total, idle = callgrind_total(dump("measured")), callgrind_total(dump("idle"))
    # Under valgrind a request takes ~50x as long as it does for real, so the timers'
    # idle work would be charged ~50x over: subtract it at the idle rate.
    net = total - idle / a.idle * seconds
    if a.annotate:
        dest = Path(a.annotate)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"{name}.callgrind").write_bytes(dump("measured").read_bytes())
    return {"instructions": total, "idle_per_s": idle / a.idle, "seconds": seconds,
            "per_request": net / a.requests, "gross_per_request": total / a.requests}


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def figures(r: dict) -> str:
    return (f"{r['per_request']:,.0f} instructions/request net of idle timers "
            f"({r['gross_per_request']:,.0f} gross; idle {r['idle_per_s']:,.0f}/s over "
            f"{r['seconds']:.1f} s)")


def cpu(a: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="apiarium-cpu-") as t:
        tmp = Path(t)
        mock = start_mock(tmp)
        res: dict[str, dict] = {}
        try:
            if a.only in (None, "bare"):
                res["bare"] = measure_cpu(
                    "bare", [PY, str(SCRIPTS / "bare_relay.py"), "--upstream", mock.url],
                    r"bare relay listening on (http://\S+)", tmp, a, "")
                print(f"bare relay: {figures(res['bare'])}", flush=True)
            if a.only in (None, "gateway"):
                conf = gateway_config(tmp, mock.url)
                res["gateway"] = measure_cpu(
                    "gateway", [PY, "-m", "apiarium", "serve", "--config", str(conf)],
                    r"apiarium listening on (http://\S+)", tmp, a,
                    "issued" if a.key == "issued" else MASTER)
                print(f"gateway: {figures(res['gateway'])}", flush=True)
        finally:
            mock.stop()
        if "bare" in res and "gateway" in res:
            g, b = res["gateway"]["per_request"], res["bare"]["per_request"]
            print(f"gateway / bare = {g / b:.3f} (efficiency proxy {b / g:.3f}); "
                  f"gateway extra {g - b:,.0f} instructions/request", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


# ====================================================================== memory
async def _hold_streams(url: str, key: str, k: int, hold_s: float,
                        on_open: object) -> dict:
    """Run bench.py's stream client (another process) holding ``k`` slow streams; call
    ``on_open(n)`` on every count it reports."""
    spec = {"url": url, "key": key, "model": SLOW_MODEL, "n": k, "events": 3600,
            "ramp": 0, "max_pending": 100, "hold": hold_s, "open_within": 300,
            "report_open": True, "timeout": 600}
    proc = await asyncio.create_subprocess_exec(
        PY, str(SCRIPTS / "bench.py"), "_streams", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if proc.stdout is None:
        raise RuntimeError("the stream client has no stdout")
    result: dict = {}
    async for line in proc.stdout:
        text = line.decode()
        if text.startswith("OPEN "):
            on_open(int(text.split()[1]))  # type: ignore[operator]
        elif text.startswith("RESULT "):
            result = json.loads(text[7:])
    await proc.wait()
    return result


def memory_server(args: list[str]) -> int:
    """``cpu_profile.py _memory WHICH MOCK_URL K TOP CONFIG``: one server in this process
    under tracemalloc; prints the figures as ``MEMJSON {...}``."""
    import gc
    import tracemalloc

    import uvloop

    which, mock_url, k, top, conf = args[0], args[1], int(args[2]), int(args[3]), args[4]

    async def main() -> dict:
        if which == "gateway":
            from apiarium.app import Gateway
            from apiarium.cli import _setup_logging
            _setup_logging()
            gw = Gateway(conf)
            await gw.start("127.0.0.1", 0)
            url, key = f"http://127.0.0.1:{gw.port}", MASTER
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 20, 50)
        else:
            import aiohttp
            import tornado.httpserver
            import tornado.netutil
            import tornado.web
            from bare_relay import Relay
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                            timeout=aiohttp.ClientTimeout(total=None))
            app = tornado.web.Application([(r"/v1/chat/completions", Relay)], session=session,
                                          url=mock_url + "/v1/chat/completions")
            server = tornado.httpserver.HTTPServer(app)
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=4096)
            server.add_sockets(sockets)
            url, key = f"http://127.0.0.1:{sockets[0].getsockname()[1]}", ""
        # warm-up: connections to the mock, caches, the first of everything
        await _hold_streams(url, key, 20, 1.5, lambda n: None)
        await asyncio.sleep(1)
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.get_traced_memory()[0]
        snap0 = tracemalloc.take_snapshot()
        best = {"open": 0, "traced": before, "live": before}
        snaps: list[tracemalloc.Snapshot] = []

        def on_open(n: int) -> None:
            # the last report with the most open: a steady state, past each stream's start
            if n >= best["open"] and n > 0:
                best["open"], best["traced"] = n, tracemalloc.get_traced_memory()[0]
                gc.collect()            # what is alive, without the garbage not yet collected
                best["live"] = tracemalloc.get_traced_memory()[0]
                if n == k:
                    snaps[:] = [tracemalloc.take_snapshot()]
                    if which == "gateway" and os.environ.get("DEBUG_HANDLER"):
                        for h in list(gw.services.inflight)[:1]:
                            print("HANDLER", len(vars(h)), sys.getsizeof(vars(h)),
                                  sorted(vars(h)), len(vars(h.request)),
                                  sys.getsizeof(vars(h.request)), file=sys.stderr)

        res = await _hold_streams(url, key, k, 3.0, on_open)
        tracemalloc.stop()
        out: dict[str, Any] = {"which": which, "streams": k, "open": best["open"],
                               "ok": res.get("ok"),
               "traced_before": before, "traced_open": best["traced"],
               "bytes_per_stream": (best["traced"] - before) / best["open"]
               if best["open"] else None,
               "live_bytes_per_stream": (best["live"] - before) / best["open"]
               if best["open"] else None, "top": []}
        if snaps:
            stats = snaps[0].compare_to(snap0, "lineno")
            for st in stats[:top]:
                f = st.traceback[0]
                out["top"].append([f"{f.filename.replace(str(ROOT), '.')}:{f.lineno}",
                                   st.size_diff // k, st.count_diff / k])
        return out

    out = uvloop.run(main())
    print("MEMJSON " + json.dumps(out), flush=True)
    os._exit(0)


def memory(a: argparse.Namespace) -> int:
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="apiarium-mem-") as t:
        tmp = Path(t)
        mock = start_mock(tmp)
        try:
            conf = gateway_config(tmp, mock.url)
            for which in ("bare", "gateway"):
                if a.only not in (None, which):
                    continue
                out = subprocess.run([PY, __file__, "_memory", which, mock.url,
                                      str(a.streams), "400", str(conf)],
                                     capture_output=True, text=True, timeout=1200,
                                     env=server_env())
                if os.environ.get("DEBUG_HANDLER"):
                    print("".join(x for x in out.stderr.splitlines(True) if "HANDLER" in x))
                m = re.search(r"MEMJSON (\{.*\})", out.stdout)
                if not m:
                    raise RuntimeError(f"{which} failed: {out.stdout[-2000:]}"
                                       f"{out.stderr[-3000:]}")
                r = res[which] = json.loads(m.group(1))
                print(f"{which}: {r['open']}/{r['streams']} open, "
                      f"{r['bytes_per_stream']:,.0f} traced bytes per open stream "
                      f"({r['live_bytes_per_stream']:,.0f} after a gc.collect())", flush=True)
                for where, size, count in r["top"][:a.top]:
                    print(f"   {size:8,d} B {count:6.2f} blocks  {where}")
        finally:
            mock.stop()
    if len(res) == 2:
        g, b = res["gateway"], res["bare"]
        print(f"gateway / bare = {g['bytes_per_stream'] / b['bytes_per_stream']:.3f} "
              f"({g['live_bytes_per_stream'] / b['live_bytes_per_stream']:.3f} after a "
              f"gc.collect()); where the gateway holds more than the bare relay, after a "
              f"gc.collect() (per stream):")
        bare = {where: size for where, size, _ in b["top"]}
        extra = sorted(((size - bare.get(where, 0), where) for where, size, _ in g["top"]),
                       reverse=True)
        for size, where in extra[:a.top]:
            print(f"   {size:+8,d} B  {where}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return load_client(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_memory":
        return memory_server(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cpu", help="callgrind instructions per request")
    c.add_argument("--requests", type=int, default=2000)
    c.add_argument("--warmup", type=int, default=300)
    c.add_argument("--connections", type=int, default=8)
    c.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    c.add_argument("--stream", action="store_true",
                   help="streamed requests of 20 content events each (per request: /20 "
                        "for per event)")
    c.add_argument("--only", choices=("gateway", "bare"))
    c.add_argument("--key", choices=("master", "issued"), default="master")
    c.add_argument("--annotate", help="keep the callgrind dumps in this folder")
    c.add_argument("--json", help="write the figures to this file")
    m = sub.add_parser("memory", help="tracemalloc bytes per open slow stream")
    m.add_argument("--streams", type=int, default=500)
    m.add_argument("--only", choices=("gateway", "bare"))
    m.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    return cpu(a) if a.cmd == "cpu" else memory(a)


if __name__ == "__main__":
    sys.exit(main())
