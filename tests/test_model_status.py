"""Each model's status (services/status.py): ready, not_configured (naming the variable to set),
demo, cooling_down (until when), on GET /v1/models, /v1/models/{id}, the homepage's HTML, and
in the 503 ``provider_not_configured`` text; both SDKs still parse the list.

Client addresses: 127.0.10.x."""
from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

try:                      # openai>=3 ships on httpx2, older releases on httpx
    import httpx2 as httpx
except ImportError:       # pragma: no cover
    import httpx

from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.config import CATALOG_SCHEMA, load_config
from apiarium.errors import ServiceUnavailable
from apiarium.providers.base import Provider
from apiarium.services import status
from apiarium.services.fallback import Breakers
from apiarium.yamlschema import parse
from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ROOT / "config" / "models.yaml"
# what the shipped catalog's providers need, as a newcomer without keys must be told
NEEDS = {"openai": "set OPENAI_API_KEY", "anthropic": "set ANTHROPIC_API_KEY",
         "google": "set GEMINI_API_KEY", "hub": "set GEMINI_HUB_URL and GEMINI_HUB_KEY"}
FIELDS = ("status", "status_detail", "available_at")


def shipped_variables() -> set[str]:
    """The environment variables the shipped models.yaml reads (as the loader records them)."""
    problems: list = []
    _, ctx = parse(SHIPPED_MODELS, CATALOG_SCHEMA, {}, problems)
    assert not problems, problems
    return {name for names in ctx.variables.values() for name in names}


@pytest.fixture
def no_provider_env(monkeypatch):
    """This process's environment without any variable the shipped catalog reads (the
    in-process gateway loads its config from it)."""
    for name in shipped_variables():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def shipped(make_gateway, no_provider_env):
    """A gateway on the shipped models.yaml, as written (``${...}`` and all), with no keys."""
    return make_gateway(yaml.safe_load(SHIPPED_MODELS.read_text()))


def provider_of(alias: str) -> str:
    return yaml.safe_load(SHIPPED_MODELS.read_text())["models"][alias]["provider"]


class Tiles(HTMLParser):
    """The homepage's model tiles: data-model -> (data-status, the tile's status text)."""

    def __init__(self, html: str):
        super().__init__()
        self.tiles: dict[str, list] = {}
        self._model: str | None = None
        self._in_status = False
        self.summary_class = ""
        self.summary = ""
        self._in_summary = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "li" and "tile" in (a.get("class") or "").split():
            self._model = a["data-model"]
            self.tiles[self._model] = [a.get("data-status"), ""]
        elif tag == "span" and a.get("class") == "tile-status" and self._model:
            self._in_status = True
        elif a.get("id") == "catalog-status":
            self.summary_class, self._in_summary = a.get("class", ""), True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_status = self._in_summary = False
        if tag == "li":
            self._model = None

    def handle_data(self, data):
        if self._in_status:
            self.tiles[self._model][1] += data
        if self._in_summary:
            self.summary += data


def homepage(gw, ip: str) -> Tiles:
    status_, _, body = gw.get("/", ip=ip)
    assert status_ == 200
    return Tiles(body.decode())


# --------------------------------------------------------------------------- config

def test_the_loader_remembers_which_variables_a_providers_url_and_key_came_from():
    catalog = load_config(ROOT / "config" / "apiarium.yaml", env={}).catalog
    spec = catalog.providers["openai"]
    assert (spec.base_url_vars, spec.api_key_vars) == (("OPENAI_BASE_URL",),
                                                       ("OPENAI_API_KEY",))
    assert spec.base_url == "https://api.openai.com/v1"          # the default, still
    assert {name: p.setup_hint() for name, p in catalog.providers.items()} == NEEDS
    keyed = load_config(ROOT / "config" / "apiarium.yaml",
                        env={"OPENAI_API_KEY": "sk-test"}).catalog.providers["openai"]
    assert keyed.setup_hint() == "" and keyed.api_key_vars == ("OPENAI_API_KEY",)


def test_the_503_names_the_variable_to_set():
    catalog = load_config(ROOT / "config" / "apiarium.yaml", env={}).catalog
    for name, needs in NEEDS.items():
        with pytest.raises(ServiceUnavailable) as exc:
            Provider(catalog.providers[name], None).require_configured()
        message = exc.value.message
        assert exc.value.code == "provider_not_configured"
        assert f"{needs} and restart the gateway, or start the gateway with --demo" in message
        assert "models.yaml" not in message
    literal = ProviderSpec(name="local", kind="openai", base_url="http://127.0.0.1:1/v1",
                           api_key="")
    with pytest.raises(ServiceUnavailable) as exc:   # written in models.yaml: that key
        Provider(literal, None).require_configured()
    assert "set providers.local.api_key in models.yaml and reload" in exc.value.message
    assert "auth: none" in exc.value.message


def test_the_status_of_each_kind_of_provider():
    def model(**provider) -> ModelSpec:
        spec = ProviderSpec(**{"name": "p", "kind": "openai", "base_url": "http://x/v1",
                               "api_key": "k", **provider})
        return ModelSpec(alias="m", provider=spec, upstream="m")
    assert status.status_fields(model()) == {"status": "ready", "status_detail": None,
                                             "available_at": None}
    assert status.status_fields(model(api_key="", api_key_vars=("MY_KEY",))) == {
        "status": "not_configured", "status_detail": "set MY_KEY", "available_at": None}
    assert status.status_fields(model(auth="none", api_key=""))["status"] == "ready"
    demo = status.status_fields(model(kind="demo", base_url="", api_key=""))
    assert demo["status"] == "demo" and "demo" in demo["status_detail"]
    cooling = status.status_fields(model(), until=1_900_000_000.2)
    assert cooling == {"status": "cooling_down", "available_at": 1_900_000_001,
                       "status_detail": "its provider `p` is failing (or rate limiting it) "
                                        "and it is skipped until 17:46:41 UTC"}


def test_the_list_is_built_again_only_while_a_breaker_is_open():
    catalog = load_config(ROOT / "config" / "apiarium.yaml",
                          env={"OPENAI_API_KEY": "sk-test"}).catalog
    built = status.list_body(catalog)
    breakers = Breakers()
    assert status.models_body(catalog, built, breakers) is built     # no breaker open
    breaker = breakers.of(catalog.models["gpt-5"])     # per (provider, upstream model)
    for _ in range(breaker.failures):
        breaker.failure(None)                                        # the operator's own
    before = time.time()
    data = json.loads(status.models_body(catalog, built, breakers))["data"]
    cooling = {m["id"]: m for m in data if m["status"] == "cooling_down"}
    gpt5 = catalog.models["gpt-5"]
    assert set(cooling) == {a for a, m in catalog.models.items()
                            if (m.provider.name, m.upstream) == (gpt5.provider.name,
                                                                 gpt5.upstream)}
    at = cooling["gpt-5"]["available_at"]
    assert before + breaker.cooldown_s - 1 <= at <= time.time() + breaker.cooldown_s + 1
    # the provider's other models are served as before: one model's breaker is its own
    assert {m["status"] for m in data if m["id"] not in cooling} == {"not_configured", "ready"}
    assert next(m for m in data if m["id"] == "gpt-5-mini")["status"] == "ready"
    breaker.success()
    assert status.models_body(catalog, built, breakers) is built


# --------------------------------------------------------------------------- a gateway

def test_with_no_keys_every_model_says_not_configured_and_what_to_set(shipped):
    key = shipped.key_for("127.0.10.1")
    status_, _, body = shipped.get("/v1/models", key=key, ip="127.0.10.1")
    assert status_ == 200
    models = json.loads(body)["data"]
    assert len(models) == len(yaml.safe_load(SHIPPED_MODELS.read_text())["models"])
    for m in models:
        assert {k: m[k] for k in FIELDS} == {
            "status": "not_configured", "status_detail": NEEDS[provider_of(m["id"])],
            "available_at": None}, m
    one = json.loads(shipped.get("/v1/models/gemini-3", key=key, ip="127.0.10.1")[2])
    assert one["status_detail"] == "set GEMINI_HUB_URL and GEMINI_HUB_KEY"

    page = homepage(shipped, "127.0.10.1")                 # the HTML, as served (no JS)
    assert set(page.tiles) == {m["id"] for m in models}
    for alias, (state, text) in page.tiles.items():
        assert state == "not_configured"
        assert text == f"Not configured: {NEEDS[provider_of(alias)]}", (alias, text)
    assert "status-down" in page.summary_class.split() and "status-ok" not in page.summary_class
    assert page.summary.startswith("No model is ready")

    for alias, needs in (("gpt-5", "set OPENAI_API_KEY"),
                         ("gemini-3", "set GEMINI_HUB_URL and GEMINI_HUB_KEY"),
                         ("claude-sonnet-4.5", "set ANTHROPIC_API_KEY")):
        status_, _, body = shipped.post("/v1/chat/completions", {
            "model": alias, "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY)
        err = error_of(body)
        assert (status_, err["code"]) == (503, "provider_not_configured")
        assert f"{needs} and restart the gateway" in err["message"], err
        assert "--demo" in err["message"] and "models.yaml" not in err["message"]


def test_both_sdks_parse_the_list_with_the_status_fields(shipped):
    ip = "127.0.10.2"
    key = shipped.key_for(ip)
    listed = shipped.sdk(key, ip=ip).models.list()
    gpt = next(m for m in listed.data if m.id == "gpt-5")
    assert isinstance(gpt, openai.types.Model) and gpt.owned_by == "openai"
    assert gpt.model_extra["status"] == "not_configured"
    assert gpt.model_extra["status_detail"] == "set OPENAI_API_KEY"
    assert openai.types.Model.model_validate(gpt.model_dump()).id == "gpt-5"
    assert shipped.sdk(key, ip=ip).models.retrieve("gpt-5").model_extra["status"] == \
        "not_configured"

    claude = anthropic.Anthropic(base_url=shipped.url, api_key=key, max_retries=0,
                                 http_client=anthropic.DefaultHttpxClient(
                                     transport=httpx.HTTPTransport(local_address=ip)))
    page = claude.models.list()
    ids = [m.id for m in page.data]
    assert "claude-sonnet-4.5" in ids and len(ids) == len(listed.data)
    sonnet = next(m for m in page.data if m.id == "claude-sonnet-4.5")
    assert isinstance(sonnet, anthropic.types.ModelInfo) and sonnet.type == "model"
    assert sonnet.model_extra["status"] == "not_configured"
    assert sonnet.model_extra["status_detail"] == "set ANTHROPIC_API_KEY"


def test_a_model_with_a_key_is_ready_and_one_whose_breaker_is_open_cools_down(
        make_gateway, fake_openai):
    models = openai_models(fake_openai, providers={
        "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-x",
                 "connect_timeout_s": 2, "breaker_cooldown_s": 600}})
    gw = make_gateway(models)
    ip = "127.0.10.3"
    key = gw.key_for(ip)
    fields = {m["id"]: {k: m[k] for k in FIELDS}
              for m in json.loads(gw.get("/v1/models", key=key, ip=ip)[2])["data"]}
    assert fields["gpt-5"] == {"status": "ready", "status_detail": None, "available_at": None}
    assert fields["dead-model"]["status"] == "ready"      # nothing has failed yet
    assert fields["nokey-model"] == {"status": "not_configured", "available_at": None,
                                     "status_detail": "set providers.nokey.api_key in "
                                                      "models.yaml"}
    page = homepage(gw, ip)
    assert page.tiles["gpt-5"] == ["ready", "Ready"]
    assert "status-ok" in page.summary_class.split()
    assert page.summary.startswith("4 of 5 models ready")

    for _ in range(3):          # the master key's failures count as many keys' (resilience)
        status_, _, _ = gw.post("/v1/chat/completions", {
            "model": "dead-model", "messages": [{"role": "user", "content": "hi"}]},
            key=MASTER_KEY)
        assert status_ == 502
    opened = time.time()
    one = json.loads(gw.get("/v1/models/dead-model", key=key, ip=ip)[2])
    assert one["status"] == "cooling_down"
    assert opened + 590 <= one["available_at"] <= opened + 601
    until = time.strftime("%H:%M:%S", time.gmtime(one["available_at"]))
    assert until in one["status_detail"] and "`dead`" in one["status_detail"]
    listed = {m["id"]: m for m in json.loads(gw.get("/v1/models", key=key, ip=ip)[2])["data"]}
    assert {k: listed["dead-model"][k] for k in FIELDS} == {k: one[k] for k in FIELDS}
    assert listed["gpt-5"]["status"] == "ready"
    page = homepage(gw, ip)
    assert page.tiles["dead-model"] == ["cooling_down", f"Cooling down until {until} UTC"]
    assert page.summary.startswith("3 of 5 models ready")
    assert re.search(r"\b\d\d:\d\d:\d\d UTC$", page.tiles["dead-model"][1])
