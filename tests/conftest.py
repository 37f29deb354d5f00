"""Shared fixtures: fake upstreams (one per session, cleared per test), gateways, and a
database of its own per test on the throwaway PostgreSQL that scripts/test-services starts.

Gateways run in-process (``tests.support.InProcessGateway``) unless a test needs a process:
signals, exit codes, what the CLI prints, the process's memory.  Such a test says so, with
the reason, and then every gateway it makes is ``python -m apiarium serve``:

    @pytest.mark.subprocess_gateway("sends SIGTERM mid-stream and checks the exit code")
    def test_...(gateway): ...
"""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.fakes import FakeAnthropic, FakeGemini, FakeOpenAI, FakeRag
from tests.support import Gateway, InProcessGateway


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "subprocess_gateway(reason): this test's gateways run as "
        "`python -m apiarium serve` subprocesses (the default is in-process); say why")


def _shared_fake(cls, name: str):
    """Fixture ``name``: a fake upstream started once per session, reset (requests, scripts,
    knobs) for each test."""
    @pytest.fixture(scope="session", name=f"_{name}_server")
    def server():
        with cls() as fake:
            yield fake

    @pytest.fixture(name=name)
    def fake(request):
        return request.getfixturevalue(f"_{name}_server").reset()
    return server, fake


_openai_server, fake_openai = _shared_fake(FakeOpenAI, "fake_openai")
_anthropic_server, fake_anthropic = _shared_fake(FakeAnthropic, "fake_anthropic")
_gemini_server, fake_gemini = _shared_fake(FakeGemini, "fake_gemini")
_rag_server, fake_rag = _shared_fake(FakeRag, "fake_rag")


def openai_models(fake: FakeOpenAI, **extra) -> dict:
    """A catalog with one healthy OpenAI-compatible provider and the broken ones tests need."""
    return {
        "providers": {
            "up": {"kind": "openai", "base_url": fake.base_url, "api_key": fake.api_key,
                   "timeout_s": 1.5},
            "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-x",
                     "connect_timeout_s": 2},
            "nokey": {"kind": "openai", "base_url": fake.base_url, "api_key": ""},
            **extra.pop("providers", {}),
        },
        "models": {
            "gpt-5": {"provider": "up"},
            "gpt-renamed": {"provider": "up", "upstream": "gpt-upstream-id"},
            "dead-model": {"provider": "dead"},
            "nokey-model": {"provider": "nokey"},
            "gpt-image-1": {"provider": "up", "type": "image"},
            **extra.pop("models", {}),
        },
    }


def with_claude(fake: FakeOpenAI, fake_anthropic: FakeAnthropic) -> dict:
    """``openai_models`` and a model ``sonnet`` on an Anthropic provider ``claude``."""
    return openai_models(fake, providers={
        "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key}},
        models={"sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5"}})


def kinds_providers(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
                    fake_gemini: FakeGemini) -> dict:
    """One provider of each kind on its fake: ``oa`` (openai), ``an`` (anthropic), ``go``
    (gemini)."""
    return {"oa": {"kind": "openai", "base_url": fake_openai.base_url,
                   "api_key": fake_openai.api_key, "timeout_s": 10},
            "an": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key, "timeout_s": 10},
            "go": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key, "timeout_s": 10}}


@pytest.fixture
def make_gateway(request, tmp_path):
    """make_gateway(models, **settings) -> a started gateway, stopped after the test.

    In-process, unless the test is marked ``subprocess_gateway``, or ``process=True``, or
    ``env=`` is given (environment variables are a process's)."""
    started: list = []
    # a fixture torn down before this one (a test's PostgreSQL database) stops these first
    request.node.stash[GATEWAYS] = started
    marked = request.node.get_closest_marker("subprocess_gateway") is not None

    def make(models: dict, env: dict | None = None, start: bool = True,
             process: bool | None = None, **settings):
        if process is None:
            process = marked or env is not None
        cls = Gateway if process else InProcessGateway
        gw = cls(tmp_path / f"gw{len(started)}", models, env=env, **settings)
        started.append(gw)
        return gw.start() if start else gw
    yield make
    stop_all(started)


GATEWAYS = pytest.StashKey[list]()


def stop_all(gateways: list) -> None:
    """Stop each gateway still running (the others all the same if one fails to)."""
    errors = []
    while gateways:
        gw = gateways.pop()
        try:
            gw.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through playwright, one per test module (``tests.browser``)."""
    from tests.browser import launch
    yield from launch()


@pytest.fixture
def gateway(make_gateway, fake_openai) -> Gateway:
    return make_gateway(openai_models(fake_openai))


# --------------------------------------------------------------------------- PostgreSQL

NO_POSTGRES = ("APIARIUM_TEST_POSTGRES_URL is not set: scripts/test (or scripts/test-services "
               "COMMAND) starts a throwaway PostgreSQL and sets it")


def _postgres_admin(url: str, sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(go())


@pytest.fixture
def postgres_url(request) -> Iterator[str]:
    """The URL of a new, empty database on the test PostgreSQL, dropped after the test (and
    after the test's gateways stopped, whichever fixture was asked for first)."""
    base = os.environ.get("APIARIUM_TEST_POSTGRES_URL")
    if not base:
        pytest.skip(NO_POSTGRES)
    name = f"t_{secrets.token_hex(6)}"
    _postgres_admin(base, f"CREATE DATABASE {name}")
    yield urlsplit(base)._replace(path=f"/{name}").geturl()
    stop_all(request.node.stash.get(GATEWAYS, []))
    # the cluster is thrown away at the end anyway: a drop that a backend still holds up
    # (FORCE may not end another role's process, e.g. autovacuum's) is tried again, then left
    for attempt in range(5):
        try:
            _postgres_admin(base, f"DROP DATABASE {name} WITH (FORCE)")
            return
        except Exception:                  # asyncpg's errors: InsufficientPrivilege, in use
            time.sleep(0.2 * (attempt + 1))


@pytest.fixture
def postgres_ctl(postgres_url: str) -> Iterator[Callable[[str], None]]:
    """``ctl("stop")`` / ``ctl("start")``: the test PostgreSQL itself (started again after
    the test, whatever happened)."""
    command = os.environ.get("APIARIUM_TEST_POSTGRES_CTL")
    if not command:
        pytest.skip("APIARIUM_TEST_POSTGRES_CTL is not set: scripts/test-services sets it")

    def ctl(action: str) -> None:
        subprocess.run([command, action], check=True, capture_output=True, timeout=90)
    yield ctl
    if subprocess.run([command, "status"], capture_output=True, timeout=30).returncode != 0:
        ctl("start")
