"""Shared fixtures: fake upstreams (one per session, cleared per test) and gateways."""
from __future__ import annotations

import pytest

from tests.fakes import FakeOpenAI
from tests.support import Gateway


@pytest.fixture(scope="session")
def _openai_server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(_openai_server):
    _openai_server.clear()
    _openai_server.stream_events, _openai_server.stream_delay = 5, 0.0
    _openai_server.reply_text = _openai_server.reply_tool_call = None
    return _openai_server


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
def make_gateway(tmp_path):
    """make_gateway(models, **settings) -> a started Gateway, stopped after the test."""
    started: list[Gateway] = []

    def make(models: dict, env: dict | None = None, start: bool = True, **settings) -> Gateway:
        gw = Gateway(tmp_path / f"gw{len(started)}", models, env=env, **settings)
        started.append(gw)
        return gw.start() if start else gw
    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway, fake_openai) -> Gateway:
    return make_gateway(openai_models(fake_openai))
