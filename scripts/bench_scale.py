"""scripts/bench --workers LIST --state LIST: Apiarium past one process.

For each worker count (``--workers 1,2``) and each state backend (``--state
memory,redis+postgres``) one gateway runs; wrk sends non-stream chat requests with an
ordinary key (the master key skips the limiter, so it would measure nothing), rpm set so
high that every request passes but still goes through the limiter (the key bucket and the
chat endpoint's bucket); with ``--credits`` a daily credit allowance too, so that every
request also takes and settles a credit hold.  Rounds are interleaved across the
configurations, so that a neighbour's load lands on all of them alike; a configuration's
CPU is its whole process tree (supervisor and workers), read from /proc, and the Redis
server's CPU is reported beside it.

    memory           SQLite + in-process buckets (the default)
    redis+postgres   rate_limit.backend: redis://..., database: postgresql://...
    redis            Redis limits, SQLite keys

The Redis and PostgreSQL servers come from scripts/test-services (scripts/bench starts it
around this run when --state names them): APIARIUM_TEST_REDIS_URL, APIARIUM_TEST_POSTGRES_URL.
One worker is pinned to core 0 as in the other phases; N > 1 workers get every core (they
then share them with the load and the mock upstream: the requests/s of that row is what a
2-core box gives, the CPU per request is still the gateway's own).
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import bench
from bench import Server, chat_body, cpu_seconds, pct, run_wrk

STATES = ("memory", "redis", "redis+postgres")


@dataclass
class Config:
    workers: int
    state: str
    server: Server = field(init=False)
    key: str = ""
    rounds: list[tuple[int, float, float, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {self.state}"


def redis_pid(url: str) -> int | None:
    """The Redis server's pid, from its own INFO (it runs under scripts/test-services)."""
    try:
        import redis
        info: Any = redis.Redis.from_url(url).info("server")
        return int(info["process_id"])
    except Exception:                       # noqa: BLE001 - reported as unknown
        return None


def get_key(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/keys/me", timeout=30) as r:   # noqa: S310 - loopback
        return str(json.loads(r.read())["key"])


class Scale:
    def __init__(self, bench: Any) -> None:
        self.b = bench
        self.a = bench.a
        self.redis_url = os.environ.get("APIARIUM_TEST_REDIS_URL", "")
        self.pg_url = os.environ.get("APIARIUM_TEST_POSTGRES_URL", "")

    @staticmethod
    def check_states(states: list[str]) -> list[str]:
        """Why these states cannot be measured here (empty: they can)."""
        out = []
        for s in states:
            if s not in STATES:
                out.append(f"unknown state {s!r} (one of {', '.join(STATES)})")
            if "redis" in s and not os.environ.get("APIARIUM_TEST_REDIS_URL"):
                out.append(f"{s}: no Redis (APIARIUM_TEST_REDIS_URL is unset)")
            if "postgres" in s and not os.environ.get("APIARIUM_TEST_POSTGRES_URL"):
                out.append(f"{s}: no PostgreSQL (APIARIUM_TEST_POSTGRES_URL is unset)")
        return out

    def start(self, c: Config, n: int) -> Server:
        d = self.b.tmp / f"scale{n}"
        (d / "data").mkdir(parents=True, exist_ok=True)
        # daily_credits 0: no credit holds, the limiter alone; --credits: a hold per request
        # (reserved before, settled after), shared in Redis by the redis states
        rate: dict[str, Any] = {"rpm": 1_000_000,
                                "daily_credits": 1e12 if self.a.credits else 0,
                                "endpoints": {"chat": "1000000/second"}}
        if "redis" in c.state:
            rate["backend"] = self.redis_url
            rate["instances"] = c.workers
        else:                           # memory: each worker its own limits, knowingly
            rate["per_process"] = True
        database = self.pg_url if "postgres" in c.state else str(d / "data" / "apiarium.sqlite3")
        extra: dict[str, Any] = {}
        if "postgres" in c.state:       # gateways sharing a database share its key secret
            extra["secret_file"] = str(self.b.tmp / "shared" / "apiarium.secret")
        (d / "apiarium.yaml").write_text(json.dumps({**extra,
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 2,
                       "workers": c.workers},
            "database": database, "catalog": "models.yaml",
            "master_key": "bench-master-key-0123456789abcdef",
            "rate_limit": rate, "media": {"dir": str(d / "data" / "media")},
            # one key at every connection: its holds (--credits) are counted, never refused
            "limits": {"max_concurrent_requests": 1_000_000 if self.a.credits else 0}},
            indent=1))
        (d / "models.yaml").write_text(json.dumps({
            "providers": {"mock": {"kind": "openai", "base_url": self.b.mock.url + "/v1",
                                   "api_key": "sk-bench-upstream", "connect_timeout_s": 120}},
            "models": {"bench": {"provider": "mock"}}}, indent=1))
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(APIARIUM_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        core = bench.SERVER_CORE if c.workers == 1 else f"{bench.SERVER_CORE},{bench.LOAD_CORE}"
        return self.b.start(Server(c.name, [bench.PY, "-m", "apiarium", "serve", "--config",
                                            str(d / "apiarium.yaml")], core,
                                   d / "gateway.log", r"apiarium listening on (http://\S+)",
                                   env=env))

    def run(self, workers: list[int], states: list[str]) -> dict:
        a, b = self.a, self.b
        configs = [Config(w, s) for w in workers for s in states]
        for n, c in enumerate(configs):
            c.server = self.start(c, n)
            c.key = get_key(c.server.url)
            b.say(f"scale: {c.name} on {c.server.url}")
        body = [chat_body("bench")]
        for c in configs:
            run_wrk(b.tmp, c.server.url, body, c.key, a.connections, 1)          # warm-up
        rpid = redis_pid(self.redis_url) if self.redis_url else None
        if rpid:            # Redis beside the load, off the core the one-worker gateway has
            os.sched_setaffinity(rpid, {int(bench.LOAD_CORE)})
        slice_s = max(1, round(a.duration / a.rounds))
        for r in range(a.rounds):
            for c in (configs if r % 2 == 0 else configs[::-1]):
                cpu0 = c.server.cpu()
                r0 = cpu_seconds(rpid) if rpid else 0.0
                w = run_wrk(b.tmp, c.server.url, body, c.key, a.connections, slice_s)
                time.sleep(0.3)                 # deferred work (access log) with its requests
                c.rounds.append((w["requests"], c.server.cpu() - cpu0,
                                 (cpu_seconds(rpid) - r0) if rpid else 0.0,
                                 w["errors"]))
                if w["errors"]:
                    b.notes.append(f"scale {c.name}: {w['errors']} wrk errors in a round")
        time.sleep(bench.SETTLE_S)
        out: dict[str, Any] = {}
        for c in configs:
            n = sum(x[0] for x in c.rounds)
            cpu = sum(x[1] for x in c.rounds)
            rcpu = sum(x[2] for x in c.rounds)
            out[c.name] = {
                "workers": c.workers, "state": c.state, "requests": n,
                "rps": n / (slice_s * len(c.rounds)) if c.rounds else 0,
                "cpu_us_per_req": cpu / n * 1e6 if n else None,
                "redis_cpu_us_per_req": rcpu / n * 1e6 if n and rpid else None,
                "rounds_cpu_us": [round(x[1] / x[0] * 1e6, 1) if x[0] else None
                                  for x in c.rounds],
                "errors": sum(x[3] for x in c.rounds)}
            f = out[c.name]
            b.say(f"scale {c.name}: {f['rps']:.0f} req/s, {f['cpu_us_per_req']:.0f} us "
                  f"CPU/req" + (f" (+ Redis {f['redis_cpu_us_per_req']:.0f} us)"
                                if f["redis_cpu_us_per_req"] else ""))
            b.stop(c.server)
        # the limiter's cost: each non-memory state against memory, same worker count, paired
        for c in configs:
            if c.state == "memory":
                continue
            base = next((m for m in configs if m.workers == c.workers and m.state == "memory"),
                        None)
            if base is None:
                continue
            pairs = [x[1] / x[0] * y[0] / y[1] for x, y in zip(c.rounds, base.rounds, strict=True)
                     if x[0] and y[0] and y[1]]
            out[c.name]["cpu_vs_memory"] = pct(pairs, 50) if pairs else None
            out[c.name]["cpu_vs_memory_rounds"] = [round(p, 3) for p in pairs]
        return out


def report(figures: dict) -> list[str]:
    """Markdown rows of the scale table."""
    head = ("| workers, state | req/s | gateway CPU/req (µs) | Redis CPU/req (µs) | "
            "CPU vs memory (median of rounds) |")
    rows = [head, "| --- | ---: | ---: | ---: | ---: |"]
    for name, f in figures.items():
        vs = f.get("cpu_vs_memory")
        shown = "" if vs is None else f"{vs:.2f}x {f['cpu_vs_memory_rounds']}"
        rows.append(f"| {name} | {f['rps']:,.0f} | {f['cpu_us_per_req']:.0f} | "
                    f"{f['redis_cpu_us_per_req'] or 0:.0f} | {shown} |")
    return rows
