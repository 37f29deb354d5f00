"""``apiarium serve --workers N``: N processes on one port under a supervisor, driven over
HTTP from distinct client addresses.  Which worker answers a connection is the kernel's
choice; a keep-alive connection stays with its worker, and ``/health`` names that worker's
pid, so ``by_worker`` opens connections until it holds one to each worker, and the tests ask
each worker in turn: a SIGHUP'd catalog, a revoke and a block made with the CLI reach every
one (timed: under 2 s), a request one worker served is counted in another's ``/metrics``,
``kill -9`` of a worker mid-stream leaves the other workers' streams whole and gets the
worker replaced, workers that keep crashing make the supervisor give up (exit 1), and 200
first visits at once from 50 addresses leave exactly one key per address, the same from
every worker and after a restart: on SQLite (4 workers), and on PostgreSQL (2 gateways of
2 workers on different ports sharing the database)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiarium.accesslog import PIPE_BUF, AccessLog
from apiarium.config import load_config
from apiarium.metrics import Metrics, fold_dead
from apiarium.services.keys import KeyService
from apiarium.supervisor import describe_exit
from apiarium.workers import serve_workers
from tests.conftest import openai_models
from tests.support import MASTER_KEY, wait_for

pytestmark = pytest.mark.subprocess_gateway("workers are processes: signals, kill -9, pids")

CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
LONG = " ".join(f"word{i}" for i in range(100))
PROPAGATION_S = 2.0          # what the README promises for a change made by the CLI


# --------------------------------------------------------------------------- helpers

def children(pid: int) -> set[int]:
    """The pids of ``pid``'s child processes (the workers of a supervisor)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie left to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def call(conn: http.client.HTTPConnection, method: str, path: str, body=None,
         headers: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body)
    h = {"Content-Type": "application/json", **(headers or {})} if data else dict(headers or {})
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    return resp.status, resp.read()


def by_worker(gw, count: int, ip: str = "127.0.0.1",
              tries: int = 400) -> dict[int, http.client.HTTPConnection]:
    """One keep-alive connection from ``ip`` to each of ``count`` workers: pid -> connection."""
    conns: dict[int, http.client.HTTPConnection] = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30,
                                          source_address=(ip, 0))
        status, body = call(conn, "GET", "/health")
        assert status == 200, body
        pid = json.loads(body)["workers"]["pid"]
        if pid in conns:
            conn.close()
        else:
            conns[pid] = conn
            if len(conns) == count:
                return conns
    raise AssertionError(f"{tries} connections reached only workers {sorted(conns)}")


def close_all(conns: dict[int, http.client.HTTPConnection]) -> None:
    for conn in conns.values():
        conn.close()


def until_every_worker(conns: dict[int, http.client.HTTPConnection], path: str,
                       status: int, key: str, timeout: float = 5.0) -> float:
    """Poll each worker until each answers ``status``; the seconds it took the last one."""
    started = time.monotonic()
    waiting = dict(conns)
    while waiting and time.monotonic() - started < timeout:
        for pid, conn in list(waiting.items()):
            if call(conn, "GET", path, headers={"Authorization": f"Bearer {key}"})[0] == status:
                del waiting[pid]
        time.sleep(0.02)
    assert not waiting, f"workers {sorted(waiting)} still do not answer {status}"
    return time.monotonic() - started


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def cli(gw, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "apiarium", "keys", *args, "--config",
                          str(gw.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def requests_counted(conn: http.client.HTTPConnection, endpoint: str) -> float:
    status, body = call(conn, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return sum(s.value for s in families["apiarium_requests"].samples
               if s.name == "apiarium_requests_total" and s.labels["endpoint"] == endpoint)


def stream_on(conn: http.client.HTTPConnection,
              begun: threading.Event | None = None) -> list[bytes]:
    """A streamed chat on this connection: the ``data:`` payloads it got before it ended
    (``begun`` is set at the first)."""
    frames: list[bytes] = []
    try:
        conn.request("POST", "/v1/chat/completions",
                     body=json.dumps({**CHAT, "stream": True}),
                     headers={**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        for line in resp:
            if line.startswith(b"data: "):
                frames.append(line[6:].strip())
                if begun is not None:
                    begun.set()
    except (OSError, http.client.HTTPException):
        pass                                  # the worker died under it
    return frames


def first_visits(ports: list[int], ips: list[str], per_ip: int) -> dict[str, set[str]]:
    """``per_ip`` visits to /v1/keys/me from each address, all at once, each on a new
    connection, spread over ``ports``: address -> the keys it was given."""
    async def visit(ip: str, port: int) -> tuple[str, str]:
        connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.get(f"http://127.0.0.1:{port}/v1/keys/me") as resp:
            assert resp.status == 200, await resp.text()
            return ip, (await resp.json())["key"]

    async def main() -> list[tuple[str, str]]:
        return await asyncio.gather(*(visit(ip, ports[n % len(ports)])
                                      for n in range(per_ip) for ip in ips))
    keys: dict[str, set[str]] = {}
    for ip, key in asyncio.run(main()):
        keys.setdefault(ip, set()).add(key)
    return keys


def keys_from_every_worker(gw, count: int, ips: list[str]) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {}
    for ip in ips:
        conns = by_worker(gw, count, ip)
        for conn in conns.values():
            status, body = call(conn, "GET", "/v1/keys/me")
            assert status == 200, body
            keys.setdefault(ip, set()).add(json.loads(body)["key"])
        close_all(conns)
    return keys


IPS = [f"127.0.1.{n}" for n in range(1, 51)]
# these workers count limits in memory, each its own (what they test is not the limits)
PER_PROCESS = {"per_process": True}


# --------------------------------------------------------------------------- SQLite

def test_four_workers_reload_revoke_block_count_and_drain(make_gateway, fake_openai):
    models = openai_models(fake_openai)
    gw = make_gateway(models, server={"workers": 4}, rate_limit=PER_PROCESS)
    assert any("(4 workers)" in line for line in gw.log)
    workers = children(gw.proc.pid)
    assert len(workers) == 4
    conns = by_worker(gw, 4)
    assert set(conns) == workers                       # requests land on every worker
    health = json.loads(call(next(iter(conns.values())), "GET", "/health")[1])
    assert health["workers"]["count"] == 4
    assert health["backends"]["database"] == {"engine": "sqlite", "state": "ok"}

    # a request served by one worker is counted in every worker's /metrics
    served, other = list(conns.values())[:2]
    before = requests_counted(other, "chat")
    assert call(served, "POST", "/v1/chat/completions", CHAT, AUTH)[0] == 200
    assert wait_for(lambda: requests_counted(other, "chat") == before + 1, timeout=3)
    assert all(requests_counted(c, "chat") == before + 1 for c in conns.values())

    # SIGHUP to the supervisor: every worker serves the new catalog
    models["models"]["gpt-new"] = {"provider": "up", "upstream": "gpt-5"}
    gw.write_models(models)
    gw.proc.send_signal(signal.SIGHUP)
    until_every_worker(conns, "/v1/models/gpt-new", 200, MASTER_KEY)
    close_all(conns)

    # a revoke made with the CLI: every worker refuses the key within 2 s
    key = gw.key_for("127.0.0.5")
    conns = by_worker(gw, 4, "127.0.0.5")
    for conn in conns.values():          # a key one worker just issued works on every one
        assert call(conn, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})[0] \
            == 200
    cli(gw, "revoke", key)
    took = until_every_worker(conns, "/v1/models", 401, key)
    print(f"SQLite: a revoke reached 4 workers in {took:.2f} s")
    assert took < PROPAGATION_S
    close_all(conns)

    # a block made with the CLI: the same
    key = gw.key_for("127.0.0.6")
    conns = by_worker(gw, 4, "127.0.0.6")
    until_every_worker(conns, "/v1/models", 200, key)
    cli(gw, "block", "127.0.0.4/30", "--note", "test")        # .4 to .7
    took = until_every_worker(conns, "/v1/models", 403, key)
    print(f"SQLite: a block reached 4 workers in {took:.2f} s")
    assert took < PROPAGATION_S
    close_all(conns)

    # SIGTERM: every worker drains its streams, then the supervisor exits 0
    fake_openai.stream_events, fake_openai.stream_delay = 10, 0.1      # 1 s per stream
    fake_openai.reply_text = LONG
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        conns = by_worker(gw, 4)
        streams = [pool.submit(stream_on, conn) for conn in conns.values()]
        assert wait_for(lambda: len(fake_openai.requests) >= 5, timeout=5)
        gw.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: refused(gw.port), timeout=2)    # no longer accepting
        results = [s.result(timeout=20) for s in streams]
    assert gw.proc.wait(20) == 0
    for frames in results:
        assert frames[-1] == b"[DONE]" and len(frames) == 10 + 3
    assert not children(gw.proc.pid)
    log = "\n".join(gw.log)
    assert "supervisor: SIGTERM: stopping 4 workers" in log and "supervisor: stopped" in log
    assert "Traceback" not in log


def test_kill_9_mid_stream_replaces_the_worker_and_spares_the_others(make_gateway,
                                                                        fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"workers": 3},
                      rate_limit=PER_PROCESS)
    fake_openai.stream_events, fake_openai.stream_delay = 20, 0.1      # 2 s per stream
    fake_openai.reply_text = LONG
    conns = by_worker(gw, 3)
    victim = next(iter(conns))
    before = requests_counted(conns[victim], "health")
    begun = {pid: threading.Event() for pid in conns}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        streams = {pid: pool.submit(stream_on, conn, begun[pid]) for pid, conn in conns.items()}
        assert wait_for(lambda: all(e.is_set() for e in begun.values()), timeout=10)
        assert len(fake_openai.requests) == 3            # each stream has begun relaying
        os.kill(victim, signal.SIGKILL)
        results = {pid: s.result(timeout=20) for pid, s in streams.items()}
    for pid, frames in results.items():
        if pid == victim:
            assert b"[DONE]" not in frames             # cut off with its worker
        else:
            assert frames[-1] == b"[DONE]" and len(frames) == 20 + 3, pid

    # the supervisor replaces it: a new pid, serving
    workers = wait_for(lambda: (w := children(gw.proc.pid)) and len(w) == 3 and
                       victim not in w and w, timeout=10)
    assert workers and victim not in workers
    close_all(conns)
    conns = by_worker(gw, 3)
    assert set(conns) == workers
    line = [ln for ln in gw.log if f"(pid {victim}) was killed by SIGKILL" in ln]
    assert line and "restarting it in" in line[0]
    # what the dead worker had counted stays in the totals (it shared them each second)
    assert requests_counted(next(iter(conns.values())), "health") >= before
    close_all(conns)

    # systemd's stop (KillMode=control-group, the unit's): SIGTERM to every process at once
    for pid in (gw.proc.pid, *workers):
        os.kill(pid, signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    log = "\n".join(gw.log)
    assert "starting another" not in log and "supervisor: stopped" in log


def test_workers_drain_and_exit_when_their_supervisor_is_killed(make_gateway, fake_openai,
                                                               tmp_path):
    gw = make_gateway(openai_models(fake_openai), server={"workers": 2},
                      rate_limit=PER_PROCESS,
                      env={"TMPDIR": str(tmp_path)})          # its metrics folder: kept here
    workers = children(gw.proc.pid)
    assert len(workers) == 2
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(5)
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10)
    assert wait_for(lambda: sum("apiarium: stopped" in ln for ln in gw.log) == 2), \
        "\n".join(gw.log)                                                          # drained


def test_workers_that_keep_crashing_make_the_supervisor_exit_1(make_gateway, fake_openai,
                                                               tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "crashkind.py").write_text(
        "from apiarium.providers.openai import OpenAIProvider\n\n\n"
        "class Crashing(OpenAIProvider):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        raise RuntimeError('this provider cannot start')\n")
    models = openai_models(fake_openai)
    models["providers"]["up"]["kind"] = "crashkind:Crashing"
    gw = make_gateway(models, start=False, rate_limit=PER_PROCESS,
                      env={"PYTHONPATH": os.pathsep.join([str(plugin),
                                                          os.environ.get("PYTHONPATH", "")])})
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "apiarium", "serve", "--workers", "4",
                          "--config", str(gw.config)], capture_output=True, text=True,
                         timeout=60, env=gw.env)
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - started < 15
    assert "this provider cannot start" in out.stderr
    assert "supervisor: workers crashed 5 times in 60s: giving up" in out.stderr
    assert out.stderr.count("restarting it in") >= 4

    out = subprocess.run([sys.executable, "-m", "apiarium", "serve", "--workers", "0",
                          "--config", str(gw.config)], capture_output=True, text=True,
                         timeout=60, env=gw.env)
    assert (out.returncode, out.stderr) == (2, "apiarium: --workers must be from 1 to 256\n")


def test_200_first_visits_from_50_ips_on_4_workers_give_one_key_each(make_gateway,
                                                                      fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"workers": 4},
                      rate_limit=PER_PROCESS)
    keys = first_visits([gw.port], IPS, per_ip=4)
    assert sorted(keys) == sorted(IPS)
    assert all(len(k) == 1 for k in keys.values()), keys       # one key per address
    assert len({k for ks in keys.values() for k in ks}) == 50
    db = sqlite3.connect(gw.dir.parent / "data" / "apiarium.sqlite3")
    try:
        assert db.execute("SELECT count(*), count(DISTINCT ip) FROM keys").fetchone() == (50, 50)
    finally:
        db.close()
    assert keys_from_every_worker(gw, 4, IPS[:5]) == {ip: keys[ip] for ip in IPS[:5]}
    gw.restart()                                             # everything, on the same file
    assert first_visits([gw.port], IPS, per_ip=1) == keys


# --------------------------------------------------------------------------- PostgreSQL

def test_two_gateways_of_two_workers_on_postgresql(make_gateway, fake_openai, postgres_url,
                                                   tmp_path):
    secret = tmp_path / "shared" / "apiarium.secret"
    gws = [make_gateway(openai_models(fake_openai), database=postgres_url,
                        secret_file=str(secret), server={"workers": 2},
                        rate_limit=PER_PROCESS) for _ in range(2)]
    keys = first_visits([gw.port for gw in gws], IPS, per_ip=4)
    assert sorted(keys) == sorted(IPS) and all(len(k) == 1 for k in keys.values()), keys
    for gw in gws:
        assert keys_from_every_worker(gw, 2, IPS[:3]) == {ip: keys[ip] for ip in IPS[:3]}
        health = json.loads(gw.get("/health")[2])
        assert health["backends"]["database"] == {"engine": "postgresql", "state": "ok"}

    # a revoke and a block made with the CLI reach every worker of both within 2 s
    for action, ip, status in (("revoke", IPS[0], 401), ("block", IPS[1], 403)):
        key = next(iter(keys[ip]))
        conns = [by_worker(gw, 2, ip) for gw in gws]
        every = {(n, pid): conn for n, c in enumerate(conns) for pid, conn in c.items()}
        until_every_worker(every, "/v1/models", 200, key)
        cli(gws[0], action, key if action == "revoke" else ip)
        took = until_every_worker(every, "/v1/models", status, key)
        print(f"PostgreSQL: a {action} reached 4 workers of 2 gateways in {took:.2f} s")
        assert took < PROPAGATION_S
        for c in conns:
            close_all(c)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:    # everything, at once
        list(pool.map(lambda gw: gw.restart(), gws))
    again = first_visits([gw.port for gw in gws], IPS[2:], per_ip=1)
    assert again == {ip: keys[ip] for ip in IPS[2:]}


# --------------------------------------------------------------------------- the parts

def test_metrics_of_exited_workers_are_folded_and_gauges_dropped(tmp_path):
    a, b = Metrics(shared_dir=tmp_path), Metrics(shared_dir=tmp_path)
    b._own = "999999.json"                     # another worker's file, as a worker writes it
    a.observe_request("chat", "openai", "gpt-5", 200, 0.2)
    b.observe_request("chat", "openai", "gpt-5", 200, 0.3)
    b.active_streams.inc(2)
    a.save()
    b.save()
    text = a.render().decode()
    assert ('apiarium_requests_total{dialect="openai",endpoint="chat",model="gpt-5",'
            'status="200"} 2.0') in text
    assert "apiarium_active_streams 2.0" in text
    fold_dead(tmp_path, 999999)               # b exited: its counts stay, its gauge goes
    assert not (tmp_path / "999999.json").exists()
    text = a.render().decode()
    assert ('apiarium_requests_total{dialect="openai",endpoint="chat",model="gpt-5",'
            'status="200"} 2.0') in text
    assert ('apiarium_request_duration_seconds_count{dialect="openai",endpoint="chat"} 2.0'
            in text)
    assert "apiarium_active_streams 0.0" in text


def test_exit_statuses_are_described_in_words():
    assert describe_exit(3 << 8) == "exited with status 3"
    assert describe_exit(signal.SIGKILL) == "was killed by SIGKILL"


@pytest.mark.parametrize("problem", ["port in use", "database unusable"])
def test_what_fails_once_fails_in_the_supervisor_before_any_fork(make_gateway, fake_openai,
                                                                 tmp_path, capsys, problem):
    """Nothing is forked (this runs in the test process) when the port or the database fails."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    database = "postgresql://apiarium@127.0.0.1:9/nowhere"      # nothing listens there
    settings = {"database": database, "secret_file": str(tmp_path / "s")} \
        if problem == "database unusable" else {}
    gw = make_gateway(openai_models(fake_openai), start=False, **settings)
    try:
        code = serve_workers(gw.config, load_config(gw.config).settings, "127.0.0.1",
                             busy.getsockname()[1], 4)
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code == 1
    if problem == "port in use":
        assert err.startswith("apiarium: cannot listen: ") and "in use" in err
    else:
        assert err.startswith(f"apiarium: {database}: the database cannot be reached")


def test_a_key_another_process_just_issued_is_read_once_guesses_never(tmp_path):
    """``unseen``: a key not in this process's memory that is the caller's own next key (one
    another process just issued) is looked up in the database once; anything else is not."""
    async def go():
        db = tmp_path / "keys.sqlite3"
        here = await KeyService(db).open()
        there = await KeyService(db).open()
        try:
            key, _ = await there.key_for_ip("127.0.0.9")
            assert here.verify(key) is None                     # not reloaded yet
            assert not here.unseen(key, "127.0.0.10")           # not that address's key
            assert not here.unseen("api-" + "a" * 16, "127.0.0.9")     # a guess
            assert here.unseen(key, "127.0.0.9")
            await here.load(key)
            assert here.verify(key).ip == "127.0.0.9"
            revoked = await there.find(key)
            await there.revoke(revoked[0])
            gone = here.derive("127.0.0.11", 0)                 # never issued
            assert here.unseen(gone, "127.0.0.11")
            await here.load(gone)
            assert not here.unseen(gone, "127.0.0.11")          # asked once, remembered
        finally:
            await here.close()
            await there.close()
    asyncio.run(go())


def test_a_workers_access_log_goes_out_in_whole_lines_a_pipe_keeps_whole():
    class Writes:
        def __init__(self):
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass
    out = Writes()
    log = AccessLog(out, shared=True)
    for n in range(500):
        log.write(f"req_{n} GET /health 200 0.5ms ip=127.0.0.1 key=- model=- bytes=202")
    log.write("x" * 5000)                       # a line longer than PIPE_BUF: alone
    log.flush()
    assert len(out.writes) > 1
    assert all(w.endswith("\n") for w in out.writes)
    assert all(len(w.encode()) <= PIPE_BUF for w in out.writes if "x" * 5000 not in w)
    lines = "".join(out.writes).splitlines()
    assert len(lines) == 501 and lines[0].endswith("req_0 GET /health 200 0.5ms ip=127.0.0.1 "
                                                   "key=- model=- bytes=202")
