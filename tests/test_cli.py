"""The command line in-process (apiarium/cli.py, ``apiarium.cli.main([...])``): check-config on a
good and a bad configuration (``FILE:LINE``), and ``keys list/show/revoke/rotate/set-rpm/
block/unblock`` against a temporary database made through KeyService: exit codes, and what
an operator reads on stdout and stderr.  (tests/test_operations.py runs the real process.)"""
from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path

import pytest

from apiarium.cli import main
from apiarium.services.keys import KeyService

MODELS = """\
providers:
  up: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: "sk-x"}
models:
  gpt-5: {provider: up}
  pic: {provider: up, upstream: gpt-image-1, type: image}
"""
IP_A, IP_B = "192.0.2.10", "198.51.100.7"
ROW = re.compile(r"^(api-\S{2})… +(\S+) +(\S+ \S+|-) +(\S+ \S+|-) +(\S+)  (\w+)$")


def write_config(folder: Path, settings: str = "", models: str = MODELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "apiarium.yaml"
    path.write_text(textwrap.dedent("""\
        database: data/apiarium.sqlite3
        catalog: models.yaml
        rate_limit:
          rpm: 4
        """) + textwrap.dedent(settings))
    (folder / "models.yaml").write_text(textwrap.dedent(models))
    return path


class Keys:
    """A config folder with a database holding a key for IP_A and one for IP_B."""

    def __init__(self, folder: Path) -> None:
        self.config = write_config(folder)
        self.database = folder / "data" / "apiarium.sqlite3"

        async def issue() -> dict[str, str]:
            service = await KeyService(self.database).open()
            try:
                return {ip: (await service.key_for_ip(ip))[0] for ip in (IP_A, IP_B)}
            finally:
                await service.close()
        self.keys = asyncio.run(issue())

    def records(self):
        async def read():
            service = await KeyService(self.database).open()
            try:
                return await service.all_records()
            finally:
                await service.close()
        return asyncio.run(read())


@pytest.fixture
def db(tmp_path, monkeypatch) -> Keys:
    monkeypatch.delenv("APIARIUM_CONFIG", raising=False)
    return Keys(tmp_path / "conf")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(out: str) -> list[tuple[str, ...]]:
    """The table's rows (the header and the footer dropped), each split into its columns."""
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "IP", "CREATED", "LAST", "USED", "RPM", "STATUS"]
    if lines[-1].startswith("* "):
        lines.pop()
    return [ROW.match(line).groups() for line in lines[1:]]


# ---------------------------------------------------------------------------- check-config

def test_check_config_on_a_good_config(tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path / "conf")
    code, out, err = cli(capsys, "check-config", "--config", str(path))
    assert (code, err) == (0, "")
    assert out == f"{path}: ok (2 models, 1 providers)\n"
    # the same with $APIARIUM_CONFIG and no --config (CONTRACT §1)
    monkeypatch.setenv("APIARIUM_CONFIG", str(path))
    assert cli(capsys, "check-config")[:2] == (0, out)


def test_check_config_prints_each_problem_as_file_line(tmp_path, capsys):
    path = write_config(tmp_path / "conf", settings="""\
        server:
          port: http
          hots: 0.0.0.0
        """, models="""\
        providers:
          up: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
        models:
          gpt-5: {provider: nowhere}
        """)
    code, out, err = cli(capsys, "check-config", "--config", str(path))
    assert code == 1 and err == ""
    problems = out.splitlines()
    models = path.parent / "models.yaml"
    assert any(p.startswith(f"{path}:6: ") and "server.port" in p for p in problems)
    assert any(p.startswith(f"{path}:7: ") and "unknown key 'server.hots'" in p
               for p in problems)
    assert any(p.startswith(f"{models}:4: ") and "nowhere" in p for p in problems)
    assert all(re.match(r"^/\S+:\d+: \S", p) for p in problems)


def test_check_config_on_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    code, out, _ = cli(capsys, "check-config", "--config", str(missing))
    assert code == 1 and out.startswith(f"{missing}:0: ")


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# ---------------------------------------------------------------------------- keys list

def test_keys_list_shows_every_active_key_with_the_default_rpm(db, capsys):
    code, out, err = cli(capsys, "keys", "list", "--config", str(db.config))
    assert (code, err) == (0, "")
    got = rows(out)
    assert [(r[0], r[1], r[4], r[5]) for r in got] == [
        (db.keys[IP_A][:6], IP_A, "4*", "active"), (db.keys[IP_B][:6], IP_B, "4*", "active")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", r[2]) for r in got)
    assert all(r[3] == "-" for r in got)                          # never used yet
    # only the stored prefix is shown: a whole key never reaches the terminal
    assert all(key not in out for key in db.keys.values())
    # the footer says what the star means
    assert out.splitlines()[-1] == (
        "* the configured default, rate_limit.rpm (4): the key has no rpm of its own "
        "(apiarium keys set-rpm KEY N gives it one)")


def test_keys_list_json_and_config_given_first(db, capsys):
    code, out, _ = cli(capsys, "--config", str(db.config), "keys", "list", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["ip"], x["key_prefix"], x["rpm"], x["rpm_is_default"], x["status"])
            for x in lines] == [(IP_A, db.keys[IP_A][:6], 4, True, "active"),
                                (IP_B, db.keys[IP_B][:6], 4, True, "active")]
    assert all(isinstance(x["created"], int) and x["last_used"] is None for x in lines)


# ---------------------------------------------------------------------------- show

@pytest.mark.parametrize("target", ["ip", "key", "prefix"])
def test_keys_show_by_ip_key_or_prefix(db, capsys, target):
    key = db.keys[IP_A]
    given = {"ip": IP_A, "key": key, "prefix": key[:10]}[target]
    code, out, err = cli(capsys, "keys", "show", given, "--config", str(db.config))
    assert (code, err) == (0, "")
    assert [(r[0], r[1]) for r in rows(out)] == [(key[:6], IP_A)]


def test_keys_show_of_nothing_is_exit_1(db, capsys):
    code, out, err = cli(capsys, "keys", "show", "203.0.113.99", "--config", str(db.config))
    assert (code, out) == (1, "")
    assert "no key matches '203.0.113.99'" in err
    code, _, err = cli(capsys, "keys", "show", "api-0000000000000000", "--config",
                       str(db.config))
    assert code == 1 and "no key matches" in err


def test_keys_show_says_when_an_ip_is_blocked(db, capsys):
    assert cli(capsys, "keys", "block", "192.0.2.0/24", "--config", str(db.config))[0] == 0
    code, out, _ = cli(capsys, "keys", "show", IP_A, "--config", str(db.config))
    assert code == 0
    assert f"{IP_A} is blocked by 192.0.2.0/24 (apiarium keys unblock 192.0.2.0/24)" in out
    # an address without a key but inside a block is shown too
    code, out, _ = cli(capsys, "keys", "show", "192.0.2.200", "--config", str(db.config))
    assert code == 0
    assert out.splitlines() == [
        "192.0.2.200: no key",
        "192.0.2.200 is blocked by 192.0.2.0/24 (apiarium keys unblock 192.0.2.0/24)"]


# ---------------------------------------------------------------------------- revoke, rotate

def test_keys_revoke(db, capsys):
    key = db.keys[IP_A]
    code, out, err = cli(capsys, "keys", "revoke", key, "--config", str(db.config))
    assert (code, err) == (0, "")
    assert out.startswith(f"revoked {key[:6]}… ({IP_A})")
    assert [(r.ip, r.status) for r in db.records()] == [(IP_A, "revoked"), (IP_B, "active")]
    _, out, _ = cli(capsys, "keys", "list", "--config", str(db.config))
    assert [r[1] for r in rows(out)] == [IP_B]
    _, out, _ = cli(capsys, "keys", "list", "--all", "--config", str(db.config))
    assert [(r[1], r[5]) for r in rows(out)] == [(IP_A, "revoked"), (IP_B, "active")]
    # a revoked key is no active key any more
    code, out, err = cli(capsys, "keys", "revoke", key, "--config", str(db.config))
    assert (code, out) == (1, "") and "no active key matches" in err


def test_keys_revoke_by_ip(db, capsys):
    code, out, _ = cli(capsys, "keys", "revoke", IP_B, "--config", str(db.config))
    assert code == 0 and f"({IP_B})" in out
    assert [r.status for r in db.records()] == ["active", "revoked"]


def test_keys_rotate_gives_the_ip_a_new_key(db, capsys):
    code, out, err = cli(capsys, "keys", "rotate", IP_A, "--config", str(db.config))
    assert (code, err) == (0, "")
    m = re.fullmatch(rf"{re.escape(IP_A)}: new key (api-[a-z0-9]{{16}})\n", out)
    assert m and m.group(1) != db.keys[IP_A]
    assert [(r.ip, r.status) for r in db.records()] == [
        (IP_A, "revoked"), (IP_B, "active"), (IP_A, "active")]
    code, _, err = cli(capsys, "keys", "rotate", "not-an-ip", "--config", str(db.config))
    assert code == 2 and "not an IP address" in err


# ---------------------------------------------------------------------------- set-rpm

def test_keys_set_rpm_and_back_to_the_default(db, capsys):
    key = db.keys[IP_B]
    code, out, _ = cli(capsys, "keys", "set-rpm", key, "30", "--config", str(db.config))
    assert code == 0 and out == f"{key[:6]}…: 30 requests per minute\n"
    _, out, _ = cli(capsys, "keys", "list", "--config", str(db.config))
    assert [(r[1], r[4]) for r in rows(out)] == [(IP_A, "4*"), (IP_B, "30")]
    assert out.splitlines()[-1].startswith("* the configured default")
    code, out, _ = cli(capsys, "keys", "show", key, "--config", str(db.config))
    assert code == 0 and "*" not in out          # no star in the table, no footer
    _, out, _ = cli(capsys, "keys", "list", "--json", "--config", str(db.config))
    assert [(x["rpm"], x["rpm_is_default"]) for x in map(json.loads, out.splitlines())] == [
        (4, True), (30, False)]
    code, out, _ = cli(capsys, "keys", "set-rpm", key, "default", "--config", str(db.config))
    assert code == 0 and out == f"{key[:6]}…: default (4) requests per minute\n"
    assert [r.rpm for r in db.records()] == [None, None]


@pytest.mark.parametrize("value", ["0", "-5", "fast", "2.5"])
def test_keys_set_rpm_refuses_what_is_not_a_positive_number(db, capsys, value):
    code, out, err = cli(capsys, "keys", "set-rpm", db.keys[IP_A], value, "--config",
                         str(db.config))
    assert (code, out) == (2, "") and "at least 1" in err
    assert [r.rpm for r in db.records()] == [None, None]


def test_keys_set_rpm_of_an_unknown_key(db, capsys):
    code, _, err = cli(capsys, "keys", "set-rpm", "203.0.113.1", "9", "--config",
                       str(db.config))
    assert code == 1 and "no active key matches" in err


# ---------------------------------------------------------------------------- block

def test_keys_block_list_and_unblock(db, capsys):
    conf = ("--config", str(db.config))
    code, out, _ = cli(capsys, "keys", "block", "203.0.113.0/24", "--note", "vpn exit", *conf)
    assert code == 0 and out.startswith("blocked 203.0.113.0/24;")
    code, out, _ = cli(capsys, "keys", "block", "203.0.113.0/24", *conf)
    assert code == 0 and out == "203.0.113.0/24 was already blocked\n"
    code, out, _ = cli(capsys, "keys", "block", "2001:db8::1", *conf)   # an address: /128
    assert code == 0 and "2001:db8::1/128" in out
    code, out, _ = cli(capsys, "keys", "block", *conf)                   # no target: the list
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["BLOCKED", "SINCE", "NOTE"]
    # oldest first (both made within the same second here: then by address)
    listed = {line.split()[0]: line for line in lines[1:]}
    assert sorted(listed) == ["2001:db8::1/128", "203.0.113.0/24"]
    assert listed["203.0.113.0/24"].endswith("vpn exit")
    code, out, _ = cli(capsys, "keys", "unblock", "203.0.113.0/24", *conf)
    assert code == 0 and out.startswith("unblocked 203.0.113.0/24;")
    code, out, err = cli(capsys, "keys", "unblock", "203.0.113.0/24", *conf)
    assert (code, out) == (1, "") and "is not blocked" in err


@pytest.mark.parametrize("action", ["block", "unblock"])
def test_keys_block_refuses_what_is_not_an_address(db, capsys, action):
    code, out, err = cli(capsys, "keys", action, "example.com", "--config", str(db.config))
    assert (code, out) == (2, "")
    assert "'example.com' is not an IP address or CIDR" in err


def test_keys_with_a_bad_config_is_exit_1_with_file_line(tmp_path, capsys):
    path = write_config(tmp_path / "conf", settings="rate_limit: {rpm: 0}\n")
    code, out, err = cli(capsys, "keys", "list", "--config", str(path))
    assert (code, out) == (1, "")
    assert re.search(rf"^{re.escape(str(path))}:\d+: .*rate_limit", err, re.M)
