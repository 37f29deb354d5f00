"""scripts/test-services, the test infrastructure itself: it starts a throwaway PostgreSQL
and Redis on free loopback ports, hands the command their URLs and its exit status back,
and leaves nothing behind (no server, no folder) when the command ends, fails, or the run is
killed.  Also: the Redis that the running suite was given answers (its tests come later)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "test-services"
PROBE = r"""
import asyncio, os, sys
import asyncpg, redis

async def main():
    conn = await asyncpg.connect(os.environ["APIARIUM_TEST_POSTGRES_URL"])
    assert await conn.fetchval("SELECT current_user") == "apiarium"
    assert await conn.fetchval("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'apiarium'")
    await conn.close()
asyncio.run(main())
assert redis.Redis.from_url(os.environ["APIARIUM_TEST_REDIS_URL"]).ping()
print("probed", os.environ["APIARIUM_TEST_POSTGRES_URL"].rsplit(":", 1)[1].split("/")[0],
      os.environ["APIARIUM_TEST_REDIS_URL"].rsplit(":", 1)[1].split("/")[0], flush=True)
"""


def servers_installed() -> bool:
    return bool(shutil.which("redis-server")) and (
        any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or bool(shutil.which("initdb")))


needs_servers = pytest.mark.skipif(not servers_installed(),
                                   reason="Debian's postgresql and redis-server are not "
                                          "installed (scripts/test installs them)")


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def cluster_of(pgctl: str) -> Path:
    """The PostgreSQL folder of one run, from the ``pgctl`` it writes: in its temporary
    folder, or in /tmp when $TMPDIR is closed to the postgres user (pytest's folders), where
    other runs (another suite on the machine) put theirs too."""
    return Path(re.search(r'-D "?([^"\s]+)/data', pgctl).group(1))


@needs_servers
def test_the_command_gets_both_servers_and_its_status_is_kept(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = f'"{sys.executable}" -c "$0"; cat "$APIARIUM_TEST_POSTGRES_CTL"; exit 3'
    out = subprocess.run([str(SCRIPT), "sh", "-c", command, PROBE],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    ports = [int(p) for p in re.search(r"probed (\d+) (\d+)", out.stdout).groups()]
    cluster = cluster_of(out.stdout)
    assert re.search(r"PostgreSQL \d+\.\d+ on 127\.0\.0\.1:\d+ \(initdb and start: [\d.]+ s\)",
                     out.stderr)
    assert re.search(r"Redis on 127\.0\.0\.1:\d+ \(start: [\d.]+ s\)", out.stderr)
    assert list(tmp_path.iterdir()) == [] and not cluster.exists()     # the folders are gone
    assert all(refused(p) for p in ports)                  # and both servers with them


@needs_servers
def test_a_killed_run_cleans_up_too(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(SCRIPT), "sleep", "60"], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Redis on" in line:
                break
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(lines))]
        assert len(ports) == 2, lines
        cluster = cluster_of(next(tmp_path.glob("apiarium-services.*/pgctl")).read_text())
        assert (cluster / "data").is_dir()
        os.killpg(proc.pid, signal.SIGTERM)                # as a CI timeout would
        assert proc.wait(60) == 143
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert list(tmp_path.iterdir()) == [] and not cluster.exists()
    assert all(refused(p) for p in ports)


def test_the_suite_redis_answers():
    url = os.environ.get("APIARIUM_TEST_REDIS_URL")
    if not url:
        pytest.skip("APIARIUM_TEST_REDIS_URL is not set: scripts/test (or scripts/test-services "
                    "COMMAND) starts a throwaway Redis and sets it")
    import redis
    client = redis.Redis.from_url(url)
    try:
        assert client.ping()
        assert client.config_get("save") == {"save": ""}          # no persistence
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()
