"""``apiarium migrate`` and ``apiarium keys …`` on either engine (apiarium/cli.py opens the
configured storage): a SQLite file, and a PostgreSQL database of the throwaway server that
scripts/test-services starts (skipped, saying why, without it).  No password is ever printed."""
from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from apiarium.cli import main
from apiarium.services.keys import KeyService
from apiarium.storage import describe

MODELS = "providers: {}\nmodels: {}\n"


def write_config(folder: Path, database: str, secret: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.yaml").write_text(MODELS)
    path = folder / "apiarium.yaml"
    path.write_text(textwrap.dedent(f"""\
        database: '{database}'
        rate_limit: {{rpm: 4}}
        """) + (f"secret_file: '{secret}'\n" if secret else ""))
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch):
    monkeypatch.delenv("APIARIUM_CONFIG", raising=False)


def test_migrate_a_sqlite_database(tmp_path, capsys):
    config = write_config(tmp_path / "conf", "data/apiarium.sqlite3")
    db = tmp_path / "conf" / "data" / "apiarium.sqlite3"
    assert cli(capsys, "migrate", "--config", str(config)) == \
        (0, f"{db}: schema version 6 (was 0: migrated)\n", "")
    assert db.with_name("apiarium.sqlite3.secret").exists()      # as the server's start does
    assert cli(capsys, "migrate", "--config", str(config))[1] == \
        f"{db}: schema version 6 (up to date)\n"


def test_migrate_a_postgresql_database(postgres_url, tmp_path, capsys):
    secret = tmp_path / "shared" / "apiarium.secret"
    config = write_config(tmp_path / "conf", postgres_url, secret)
    code, out, err = cli(capsys, "migrate", "--config", str(config))
    assert (code, err) == (0, "")
    assert out == f"{describe(postgres_url)}: schema version 5 (was 0: migrated)\n"
    assert urlsplit(postgres_url).password not in out
    assert not secret.exists()                      # the shared secret is not made up here
    assert cli(capsys, "migrate", "--config", str(config))[1].endswith("(up to date)\n")


def test_migrate_says_when_the_server_cannot_be_reached(tmp_path, capsys):
    config = write_config(tmp_path / "conf", "postgresql://apiarium:s3cret@127.0.0.1:1/apiarium")
    code, out, err = cli(capsys, "migrate", "--config", str(config))
    assert (code, out) == (1, "")
    assert err.startswith("apiarium: postgresql://apiarium@127.0.0.1:1/apiarium: the database "
                          "cannot be reached (")
    assert "s3cret" not in err
    code, out, err = cli(capsys, "keys", "list", "--config", str(config))
    assert code == 1 and "cannot be reached" in err and "s3cret" not in err + out


def test_keys_against_postgresql(postgres_url, tmp_path, capsys):
    """The operator's CLI and a running server (a KeyService of its own) share the database
    and the secret file: what the CLI does, the server picks up at its next refresh."""
    secret = tmp_path / "shared" / "apiarium.secret"
    config = write_config(tmp_path / "conf", postgres_url, secret)
    password = urlsplit(postgres_url).password

    async def server_open() -> tuple[KeyService, str]:
        server = await KeyService(postgres_url, secret).open()
        return server, (await server.key_for_ip("192.0.2.10"))[0]

    async def go():
        server, key = await server_open()
        try:
            seen = []
            for argv in (["keys", "list", "--json"], ["keys", "show", key],
                         ["keys", "rotate", "198.51.100.7"], ["keys", "revoke", key],
                         ["keys", "block", "203.0.113.0/24", "--note", "abuse"],
                         ["keys", "list", "--all", "--json"]):
                code, out, err = await asyncio.to_thread(cli, capsys, *argv, "--config",
                                                         str(config))
                assert code == 0 and err == "" and password not in out, (argv, out, err)
                seen.append(out)
            assert await server.refresh()              # the CLI's writes reach the server
            assert server.verify(key) is None and server.is_blocked("203.0.113.9")
            rotated = seen[2].split("new key ")[1].strip()
            assert server.verify(rotated).ip == "198.51.100.7"
            return key, seen
        finally:
            await server.close()
    key, seen = asyncio.run(go())
    (row,) = [json.loads(line) for line in seen[0].splitlines()]
    assert (row["ip"], row["key_prefix"], row["status"]) == ("192.0.2.10", key[:6], "active")
    assert "192.0.2.10" in seen[1] and "revoked" in seen[3]
    rows = [json.loads(line) for line in seen[5].splitlines()]
    assert [(r["ip"], r["status"]) for r in rows] == [("192.0.2.10", "revoked"),
                                                      ("198.51.100.7", "active")]
