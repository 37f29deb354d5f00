"""Adding a provider kind is one file: a Provider subclass named in models.yaml by its import
path.  Here the file is this test: a toy ``echo`` kind (no network) served by the real
application in-process and driven with the openai SDK.  Also: every built-in kind of
``providers.KINDS`` loads and builds, and a kind that names no Provider is a FILE:LINE problem.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from apiarium import providers, sse
from apiarium.app import make_app, make_live, make_session
from apiarium.catalog import ModelSpec
from apiarium.config import ConfigError, load_config
from apiarium.live import Services
from apiarium.metrics import Metrics
from apiarium.providers import KINDS
from apiarium.providers.base import Provider
from apiarium.providers.shapes import Chunks, completion, text_of, usage, wants_usage
from apiarium.services.keys import KeyService
from apiarium.usage import UsageLedger

MASTER = "m-key-0123456789abcdef0123456789abcdef"


class EchoProvider(Provider):
    """A toy kind: answers with the last turn's text; streams it word by word."""

    kind = "echo"
    owned_by = "echo-lab"

    @staticmethod
    def _answer(body: dict[str, Any]) -> str:
        return "echo: " + text_of(body["messages"][-1].get("content"))

    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        text = self._answer(body)
        return completion(model.alias, text, "stop", usage_=usage(3, len(text.split())))

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncIterator[bytes]:
        text = self._answer(body)
        chunks = Chunks(model.alias, wants_usage(body))
        yield chunks.role()
        for word in re.findall(r"\S+\s*", text):
            yield chunks.content(word)
        yield chunks.finish("stop")
        tail = chunks.usage(usage(3, len(text.split())))
        if tail is not None:
            yield tail
        yield sse.DONE


ECHO_KIND = f"{EchoProvider.__module__}:EchoProvider"


def write_config(folder: Path, models: dict) -> Path:
    (folder / "apiarium.yaml").write_text(yaml.safe_dump({
        "database": "db.sqlite3", "master_key": MASTER, "rate_limit": {"rpm": 100}}))
    (folder / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    return folder / "apiarium.yaml"


# ---------------------------------------------------------------------- a toy kind, in-process

@pytest.fixture
def app(io_loop, tmp_path):
    config = load_config(write_config(tmp_path, {
        "providers": {"toy": {"kind": ECHO_KIND}},
        "models": {"parrot": {"provider": "toy"}}}))

    async def build():
        keys = await KeyService(config.settings.database).open()
        usage_ = await UsageLedger(config.settings.database).open()
        session = make_session()
        return Services(live=make_live(config, session), keys=keys, usage=usage_,
                        metrics=Metrics()), session
    services, session = io_loop.run_sync(build)
    yield make_app(services)

    async def close():
        await services.usage.close()
        await services.keys.close()
        await session.close()
    io_loop.run_sync(close)


@pytest.mark.gen_test(timeout=30)
async def test_a_kind_named_by_import_path_serves_chat_and_streams(http_server, http_port):
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=MASTER,
                                max_retries=0)
    try:
        models = await client.models.list()
        assert [(m.id, m.owned_by) for m in models.data] == [("parrot", "echo-lab")]

        answer = await client.chat.completions.create(
            model="parrot", messages=[{"role": "user", "content": "hello out there"}])
        assert answer.model == "parrot"
        assert answer.choices[0].message.content == "echo: hello out there"
        assert answer.choices[0].finish_reason == "stop"

        stream = await client.chat.completions.create(
            model="parrot", messages=[{"role": "user", "content": "one two three"}],
            stream=True, stream_options={"include_usage": True})
        pieces, finish, used = [], None, None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                used = chunk.usage
        assert pieces[1:5] == ["echo: ", "one ", "two ", "three"]
        assert "".join(pieces) == "echo: one two three" and finish == "stop"
        assert used is not None and used.completion_tokens == 4
    finally:
        await client.close()


# ---------------------------------------------------------------------- the registry

def test_every_built_in_kind_loads_and_builds(tmp_path):
    path = write_config(tmp_path, {
        "providers": {f"p-{kind}": {"kind": kind, "base_url": "http://127.0.0.1:9",
                                    "api_key": "k"} for kind in KINDS},
        "models": {f"m-{kind}": {"provider": f"p-{kind}"} for kind in KINDS}})
    catalog = load_config(path).catalog
    owners = {m["id"]: m["owned_by"] for m in catalog.listing()}
    assert owners == {f"m-{kind}": cls.owned_by for kind, cls in KINDS.items()}
    assert all(cls.owned_by and cls.kind == kind for kind, cls in KINDS.items())

    async def build() -> dict[str, Provider]:
        async with aiohttp.ClientSession() as session:
            return providers.build(catalog, session)
    built = asyncio.run(build())
    assert {name: type(p) for name, p in built.items()} == \
        {f"p-{kind}": cls for kind, cls in KINDS.items()}


def test_a_kind_that_names_no_provider_is_a_file_line_problem(tmp_path):
    path = write_config(tmp_path, {"providers": {
        "a": {"kind": "carrier-pigeon"},
        "b": {"kind": "no_such_module_anywhere:Thing"},
        "c": {"kind": "json:NoSuchThing"},
        "d": {"kind": "apiarium.errors:ApiError"},
        "e": {"kind": ECHO_KIND},
    }, "models": {}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    models = str(tmp_path / "models.yaml")
    expected = [
        (3, "providers.a.kind: 'carrier-pigeon' is not one of openai, anthropic, gemini, rag"),
        (5, ("providers.b.kind: 'no_such_module_anywhere:Thing': cannot import "
            "'no_such_module_anywhere' (ModuleNotFoundError")),
        (7, "providers.c.kind: 'json:NoSuchThing': module 'json' has no 'NoSuchThing'"),
        (9, ("providers.d.kind: 'apiarium.errors:ApiError' is not a subclass of "
            "apiarium.providers.base.Provider")),
    ]
    lines = [str(p) for p in exc.value.problems]
    assert len(lines) == len(expected), lines
    for (line, words), got in zip(expected, lines, strict=False):
        assert got.startswith(f"{models}:{line}: {words}"), got
