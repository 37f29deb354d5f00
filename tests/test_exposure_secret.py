"""Exposure (issue 22, "Also"): two hosts on one database with different secret files
silently revoked each other's keys, one IP at a time.  The database now records the
fingerprint of the secret it was first used with; a process whose secret gives another one
refuses to start (the server, the key CLI, migrate), saying what is wrong and the fix (copy
the first host's secret file to the path it names).  On SQLite and on PostgreSQL."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest

from apiarium.keysecret import fingerprint, load_secret
from tests.conftest import openai_models

IP = "127.0.5.20"


def apiarium(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apiarium", *args, "--config", str(gw.config)],
                          capture_output=True, text=True, timeout=60, env=gw.env)


def assert_refused(out: subprocess.CompletedProcess, secret) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.startswith(f"apiarium: {secret}: this key secret is not the one the "
                                 f"database "), out.stderr
    fix = "Copy the secret file of the host that first used this database (its secret_file) to"
    assert f"{fix} {secret}" in out.stderr
    assert "revoke the keys" in out.stderr and "Traceback" not in out.stderr
    assert "listening" not in out.stderr


def second_host(make_gateway, fake_openai, database: str, secret) -> object:
    """A gateway configuration on ``database`` with its own secret file (not started)."""
    return make_gateway(openai_models(fake_openai), start=False, process=True,
                        database=database, secret_file=str(secret))


def test_a_second_secret_on_one_sqlite_database_refuses_to_start(make_gateway, fake_openai,
                                                                 tmp_path):
    db = tmp_path / "shared" / "apiarium.sqlite3"
    first = make_gateway(openai_models(fake_openai), database=str(db))
    key = first.key_for(IP)
    con = sqlite3.connect(db)
    try:
        recorded = con.execute("SELECT fingerprint FROM key_secret").fetchall()
    finally:
        con.close()
    secret = load_secret(db.with_name("apiarium.sqlite3.secret"))
    assert recorded == [(fingerprint(secret),)] and secret.hex() not in str(recorded)

    other = tmp_path / "host2" / "apiarium.secret"
    second = second_host(make_gateway, fake_openai, str(db), other)
    assert_refused(apiarium(second, "serve"), other)
    assert other.exists()                         # made, as a new host does, then refused
    for command in (("keys", "list"), ("keys", "rotate", IP), ("migrate",)):
        assert_refused(apiarium(second, *command), other)
    assert first.key_for(IP) == key                # nothing was revoked
    assert first.get("/v1/models", key=key, ip=IP)[0] == 200

    # the fix the message gives: the first host's file in its place
    shutil.copy(db.with_name("apiarium.sqlite3.secret"), other)
    second.start()
    assert second.key_for(IP) == key and first.key_for(IP) == key


def test_a_second_secret_on_one_postgresql_database_refuses_to_start(
        make_gateway, fake_openai, postgres_url, tmp_path):
    mine, theirs = tmp_path / "host1" / "apiarium.secret", tmp_path / "host2" / "apiarium.secret"
    first = make_gateway(openai_models(fake_openai), database=postgres_url,
                         secret_file=str(mine))
    key = first.key_for(IP)
    second = second_host(make_gateway, fake_openai, postgres_url, theirs)
    out = apiarium(second, "migrate")              # no secret file on this host yet: not made
    assert out.returncode == 0 and "schema version" in out.stdout, out.stderr
    assert not theirs.exists()
    assert_refused(apiarium(second, "serve"), theirs)
    assert_refused(apiarium(second, "migrate"), theirs)   # now it has one: checked
    assert_refused(apiarium(second, "keys", "list"), theirs)
    assert first.key_for(IP) == key
    shutil.copy(mine, theirs)
    assert apiarium(second, "migrate").returncode == 0
    second.start()
    assert second.key_for(IP) == key


@pytest.mark.parametrize("what", ["damaged", "made anew"])
def test_a_lost_secret_is_refused_not_replaced(make_gateway, fake_openai, tmp_path, what):
    """A secret file that is deleted (a new one is made) or damaged: the start is refused,
    and the message of either says to restore the file, not to make a new one."""
    gw = make_gateway(openai_models(fake_openai), start=False, process=True)
    gw.start()
    gw.key_for(IP)
    gw.stop()
    secret = gw.dir.parent / "data" / "apiarium.sqlite3.secret"
    if what == "damaged":
        secret.write_text("zz\n")
    else:
        secret.unlink()
    out = apiarium(gw, "serve")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert ("Restore it from a backup" if what == "damaged" else "Copy the secret file") \
        in out.stderr
    assert "delete it" not in out.stderr
