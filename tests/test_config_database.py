"""The ``database`` and ``secret_file`` settings (apiarium/config.py): a path is relative to
the config's folder, a PostgreSQL URL is kept as written (never resolved as a path); the key
secret lives beside a SQLite file, or in the data folder (beside ``media.dir``) for
PostgreSQL, unless ``secret_file`` says where."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apiarium.config import load_config

MODELS = "providers: {}\nmodels: {}\n"


def settings_of(folder: Path, text: str, env: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apiarium.yaml").write_text(textwrap.dedent(text))
    (folder / "models.yaml").write_text(MODELS)
    return load_config(folder / "apiarium.yaml", env=env or {}).settings


def test_a_path_is_relative_to_the_config_and_the_secret_lives_beside_it(tmp_path):
    s = settings_of(tmp_path / "conf", "database: ../data/k.sqlite3\n")
    assert s.database == tmp_path / "conf" / ".." / "data" / "k.sqlite3"
    assert s.secret_file == tmp_path / "conf" / ".." / "data" / "k.sqlite3.secret"
    s = settings_of(tmp_path / "conf", "{}\n")                          # the default
    assert s.database == tmp_path / "conf" / ".." / "data" / "apiarium.sqlite3"
    assert s.secret_file == tmp_path / "conf" / ".." / "data" / "apiarium.sqlite3.secret"


@pytest.mark.parametrize("url", [
    "postgresql://apiarium:pw@db.example:5432/apiarium",
    "postgres://apiarium@10.0.0.5/apiarium?sslmode=require",
    "postgresql:///apiarium",                                  # the local socket
])
def test_a_postgresql_url_is_kept_as_written(tmp_path, url):
    s = settings_of(tmp_path / "conf", f"database: '{url}'\nmedia: {{dir: /srv/ai/media}}\n")
    assert s.database == url and isinstance(s.database, str)
    assert s.secret_file == Path("/srv/ai/apiarium.secret")       # beside the media folder


def test_the_url_may_take_its_password_from_the_environment(tmp_path):
    s = settings_of(tmp_path / "conf", """\
        database: postgresql://apiarium:${DB_PASSWORD}@127.0.0.1:5432/apiarium
        """, env={"DB_PASSWORD": "from-env"})
    assert s.database == "postgresql://apiarium:from-env@127.0.0.1:5432/apiarium"
    assert s.secret_file == tmp_path / "conf" / ".." / "data" / "apiarium.secret"


def test_secret_file_is_a_setting(tmp_path):
    s = settings_of(tmp_path / "conf", """\
        database: postgresql://db.example/apiarium
        secret_file: ${APIARIUM_SECRET_FILE:-secrets/apiarium.secret}
        """)
    assert s.secret_file == tmp_path / "conf" / "secrets" / "apiarium.secret"
    s = settings_of(tmp_path / "conf", """\
        database: data/k.sqlite3
        secret_file: ${APIARIUM_SECRET_FILE:-secrets/apiarium.secret}
        """, env={"APIARIUM_SECRET_FILE": "/etc/apiarium/shared.secret"})
    assert s.secret_file == Path("/etc/apiarium/shared.secret")
