"""Exposure (issue 22, M5): workers without a shared limiter.  With ``rate_limit.backend:
memory`` each worker counts its own buckets and daily credits, so N workers gave a key N
times its allowance, silently.  ``server.workers > 1`` (or ``serve --workers N``) on memory is
refused at start and by ``check-config``, unless ``rate_limit.per_process: true`` says the
operator accepts limits x N (then the start warns)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import openai_models

REFUSED = ("rate_limit.backend: memory", "rate_limit.per_process: true", "redis://",
           "a key would get 4 times its allowance")


def apiarium(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apiarium", *args, "--config", str(gw.config)],
                          capture_output=True, text=True, timeout=60, env=gw.env)


def line_of(path, text: str) -> int:
    """The line of ``path`` that holds ``text`` (1-based)."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_workers_on_memory_limits_refuse_to_start(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), start=False, process=True)
    out = apiarium(gw, "serve", "--workers", "4")
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("apiarium: --workers 4 ("), out.stderr
    for words in REFUSED:
        assert words in out.stderr, (words, out.stderr)
    assert "Traceback" not in out.stderr and "listening" not in out.stderr
    assert apiarium(gw, "check-config").returncode == 0      # the file itself is fine


def test_server_workers_on_memory_limits_is_a_file_line_error(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), start=False, process=True,
                      server={"workers": 4})
    where = f"{gw.config}:{line_of(gw.config, 'workers: 4')}: server.workers: 4 workers"
    out = apiarium(gw, "check-config")
    assert out.returncode == 1 and out.stdout.startswith(where), out.stdout
    for words in REFUSED:
        assert words in out.stdout, (words, out.stdout)
    out = apiarium(gw, "serve")
    assert out.returncode == 1 and out.stderr.startswith(where), out.stderr
    assert "Traceback" not in out.stderr


def test_per_process_accepts_limits_times_n_and_starts_with_a_warning(make_gateway,
                                                                       fake_openai):
    gw = make_gateway(openai_models(fake_openai), process=True, server={"workers": 2},
                      rate_limit={"per_process": True})
    warned = [ln for ln in gw.log if "rate_limit.per_process is true" in ln]
    assert warned and "WARNING" in warned[0] and "2 times its allowance" in warned[0], gw.log
    assert any("(2 workers)" in ln for ln in gw.log)
    status, _, body = gw.post("/v1/chat/completions",
                              {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]},
                              key=gw.key_for("127.0.5.10"), ip="127.0.5.10")
    assert status == 200, body
    assert apiarium(gw, "check-config").returncode == 0
