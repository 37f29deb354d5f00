"""The Tornado application in-process (pytest-tornado): the app the server runs, built from a
config on disk, answering over a real loopback socket in the test's own event loop."""
from __future__ import annotations

import json

import pytest
import yaml

from apiarium.app import make_app, make_live, make_session
from apiarium.config import load_config
from apiarium.live import Services
from apiarium.metrics import Metrics
from apiarium.services.keys import KeyService
from apiarium.usage import UsageLedger

MASTER = "m-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def app(io_loop, tmp_path):
    (tmp_path / "apiarium.yaml").write_text(yaml.safe_dump({
        "database": "db.sqlite3", "master_key": MASTER, "rate_limit": {"rpm": 2}}))
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({
        "providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                            "api_key": "k"},
                      "g": {"kind": "gemini", "base_url": "http://127.0.0.1:9", "api_key": "k"}},
        "models": {"m1": {"provider": "p"}, "v1": {"provider": "g", "type": "video"}}}))
    config = load_config(tmp_path / "apiarium.yaml")

    async def build():
        keys = await KeyService(config.settings.database).open()
        usage = await UsageLedger(config.settings.database).open()
        session = make_session()
        return Services(live=make_live(config, session), keys=keys, usage=usage,
                        metrics=Metrics()), session
    services, session = io_loop.run_sync(build)
    yield make_app(services)

    async def close():
        await services.usage.close()
        await services.keys.close()
        await session.close()
    io_loop.run_sync(close)


@pytest.mark.gen_test
async def test_health_and_models(http_client, base_url):
    resp = await http_client.fetch(base_url + "/health")
    body = json.loads(resp.body)
    assert body["status"] == "ok" and body["models"] == 2
    assert resp.headers["x-request-id"].startswith("req_")
    resp = await http_client.fetch(base_url + "/v1/models",
                                   headers={"Authorization": f"Bearer {MASTER}"})
    assert [(m["id"], m["type"]) for m in json.loads(resp.body)["data"]] == \
        [("m1", "chat"), ("v1", "video")]


@pytest.mark.gen_test
async def test_key_issue_and_bucket_in_process(http_client, base_url):
    resp = await http_client.fetch(base_url + "/v1/keys/me")
    me = json.loads(resp.body)
    assert me["rate_limit"] == {"rpm": 2} and me["ip"] == "127.0.0.1"
    assert resp.headers["Cache-Control"] == "no-store"
    again = json.loads((await http_client.fetch(base_url + "/v1/keys/me")).body)
    assert again["key"] == me["key"]
    codes = []
    for _ in range(3):    # a video model on /v1/completions: 400, but the bucket still counts
        resp = await http_client.fetch(base_url + "/v1/completions", method="POST",
                                       body=json.dumps({"model": "v1", "prompt": "x"}),
                                       headers={"Authorization": f"Bearer {me['key']}"},
                                       raise_error=False)
        codes.append(resp.code)
    assert codes == [400, 400, 429]
    assert json.loads(resp.body)["error"]["code"] == "rate_limit_exceeded"
