"""Shared fixtures: fake upstreams (one per session, cleared per test) and gateways.

Gateways run in-process (``tests.support.InProcessGateway``) unless a test needs a process:
signals, exit codes, what the CLI prints, the process's memory.  Such a test says so, with
the reason, and then every gateway it makes is ``python -m apiarium serve``:

    @pytest.mark.subprocess_gateway("sends SIGTERM mid-stream and checks the exit code")
    def test_...(gateway): ...
"""
from __future__ import annotations

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


@pytest.fixture
def make_gateway(request, tmp_path):
    """make_gateway(models, **settings) -> a started gateway, stopped after the test.

    In-process, unless the test is marked ``subprocess_gateway``, or ``process=True``, or
    ``env=`` is given (environment variables are a process's)."""
    started: list = []
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
    errors = []
    for gw in started:
        try:
            gw.stop()
        except Exception as exc:           # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def gateway(make_gateway, fake_openai) -> Gateway:
    return make_gateway(openai_models(fake_openai))
