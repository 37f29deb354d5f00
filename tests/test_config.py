"""Both YAML files: defaults, ${VAR} interpolation, relative paths, and FILE:LINE errors
from `apiarium check-config` (the same checks run at start-up)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apiarium.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]

GOOD_MODELS = """\
providers:
  openai: {kind: openai, base_url: "${UP_URL:-http://127.0.0.1:9/v1}", api_key: "${UP_KEY:-}"}
models:
  gpt-5: {provider: openai}
  pic: {provider: openai, upstream: gpt-image-1, type: image}
"""


def write(folder: Path, settings: str, models: str = GOOD_MODELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apiarium.yaml").write_text(textwrap.dedent(settings))
    (folder / "models.yaml").write_text(textwrap.dedent(models))
    return folder / "apiarium.yaml"


def check(path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apiarium", "check-config", "--config", str(path)],
                          capture_output=True, text=True, env=env)


def test_shipped_config_is_valid_and_lists_every_product_model():
    out = check(REPO / "config" / "apiarium.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    catalog = load_config(REPO / "config" / "apiarium.yaml", env={}).catalog
    wanted = {"gpt-5", "gemini-2.5-pro", "gemini-3.1-pro", "gemini-3", "gemini-3-flash",
              "gemini-3-pro", "gpt-image-1", "gpt-image-2", "gemini-3-image",
              "gemini-3-flash-image", "gemini-3.1-flash-image", "gpt-image-1-pro",
              "gpt-image-2-pro", "gemini-3-image-pro", "gemini-3-flash-image-pro",
              "gemini-3.1-flash-image-pro", "veo-3", "veo-3-fast", "veo-3.1-fast",
              "text-embedding-3-small", "text-embedding-3-large", "gemini-embedding-001"}
    assert wanted <= set(catalog.models)
    assert any(a.startswith("claude-") for a in catalog.models)
    assert {m.type for m in catalog.models.values()} == {"chat", "image", "video", "embedding"}
    kinds = {m.alias: m.provider.kind for m in catalog.models.values()}
    assert kinds["gemini-3"] == "rag" and kinds["veo-3"] == "gemini" and \
        kinds["claude-sonnet-4.5"] == "anthropic" and kinds["gpt-5"] == "openai"


def test_defaults_interpolation_and_relative_paths(tmp_path):
    path = write(tmp_path / "conf", """\
        server:
          port: ${TEST_PORT:-8123}
          trusted_proxies: [10.0.0.0/8]
        master_key: ${MASTER}
        database: ../state/db.sqlite3
        """)
    master = "sekrit-" * 5
    cfg = load_config(path, env={"MASTER": master, "UP_KEY": "sk-1"})
    s = cfg.settings
    assert s.port == 8123 and s.host == "127.0.0.1" and s.rpm == 4
    assert s.master_key == master and s.shutdown_grace_s == 30
    assert s.max_body_bytes == 25 * 1024 * 1024
    assert s.database == tmp_path / "conf" / ".." / "state" / "db.sqlite3"
    assert s.media_dir == tmp_path / "conf" / ".." / "data" / "media"
    assert s.catalog_path == tmp_path / "conf" / "models.yaml"
    assert str(s.trusted_proxies[0]) == "10.0.0.0/8"
    provider = cfg.catalog.models["gpt-5"].provider
    assert provider.api_key == "sk-1" and provider.base_url == "http://127.0.0.1:9/v1"
    assert cfg.catalog.models["pic"].upstream == "gpt-image-1"
    assert cfg.catalog.models["gpt-5"].upstream == "gpt-5"
    assert load_config(path, env={"MASTER": master, "TEST_PORT": "9999"}).settings.port == 9999


def test_every_problem_is_reported_with_file_and_line(tmp_path):
    path = write(tmp_path, """\
        server:
          host: 127.0.0.1
          prot: 80
          port: eighty
        rate_limit:
          rpm: -3
        security:
          block_proxy_headers: maybe
        """, models="""\
        providers:
          openai: {kind: openai, base_url: "http://x/v1", api_key: k}
          weird: {kind: carrier-pigeon}
        models:
          gpt-5: {provider: openai}
          claude: {provider: anthropic}
          pic: {provider: openai, type: picture}
        """)
    out = check(path)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    conf, models = str(path), str(tmp_path / "models.yaml")
    expected = [
        (f"{conf}:3:", "unknown key 'server.prot'"),
        (f"{conf}:4:", "server.port: expected a whole number"),
        (f"{conf}:6:", "rate_limit.rpm: -3 is out of range"),
        (f"{conf}:8:", "security.block_proxy_headers: expected true or false"),
        (f"{models}:3:", "'carrier-pigeon' is not one of openai, anthropic, gemini, rag"),
        (f"{models}:6:", "models.claude.provider: no provider named 'anthropic'"),
        (f"{models}:7:", "'picture' is not one of chat, image, video"),
    ]
    for prefix, words in expected:
        assert any(line.startswith(prefix) and words in line for line in lines), \
            (prefix, words, lines)
    assert len(lines) == len(expected), lines


def test_unset_variable_and_bad_yaml(tmp_path):
    path = write(tmp_path / "a", "master_key: ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert "apiarium.yaml:1: environment variable NOT_SET_ANYWHERE is not set" in str(exc.value)
    path = write(tmp_path / "b", "server:\n  host: [unclosed\n")
    out = check(path)
    assert out.returncode == 1 and f"{path}:3: invalid YAML" in out.stdout
    out = check(tmp_path / "missing.yaml")
    assert out.returncode == 1 and "missing.yaml:0: cannot read the file" in out.stdout


def test_serve_refuses_an_invalid_config_with_file_line(tmp_path):
    path = write(tmp_path, "server: {port: 70000}\n")
    out = subprocess.run([sys.executable, "-m", "apiarium", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"{path}:1: server.port: 70000 is out of range" in out.stderr


def test_config_from_environment_variable(tmp_path):
    path = write(tmp_path, "rate_limit: {rpm: 9}\n")
    import os
    env = {**os.environ, "APIARIUM_CONFIG": str(path)}
    out = subprocess.run([sys.executable, "-m", "apiarium", "check-config"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0 and str(path) in out.stdout and "2 models" in out.stdout


def test_embedding_limits(tmp_path):
    """``limits.max_embedding_input_mb`` (default 2) and ``rate_limit.endpoints.embeddings``:
    read, and checked with FILE:LINE like every other key."""
    s = load_config(write(tmp_path / "default", "{}\n")).settings
    assert s.max_embedding_input_bytes == 2 * 1024 * 1024
    assert "embeddings" not in s.endpoint_limits
    s = load_config(write(tmp_path / "set", """\
        rate_limit:
          endpoints: {embeddings: 30/minute}
        limits:
          max_embedding_input_mb: 0.5
        """)).settings
    assert s.max_embedding_input_bytes == 512 * 1024
    assert s.endpoint_limits["embeddings"] == (30, 60.0)
    path = write(tmp_path / "bad", """\
        rate_limit:
          endpoints:
            embeddings: lots
        limits:
          max_embedding_input_mb: 0
        """)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    lines = [str(p) for p in exc.value.problems]
    assert any(line.startswith(f"{path}:3:") and "rate_limit.endpoints.embeddings" in line
               for line in lines), lines
    assert any(line.startswith(f"{path}:5:") and "limits.max_embedding_input_mb: 0 is out of "
               "range" in line for line in lines), lines
