"""The wiring check (issue 12, item 3): every row of ``modeltypes.MODEL_TYPES`` and every
kind of ``providers.KINDS`` is wired everywhere it must be.

Adding a type is meant to be one row plus the service that serves it, and a kind one
Provider subclass; these tests list what a new row or kind still lacks, each failure naming
the type or kind and the place.  For types: its endpoints are routes of the application, the
gateway serves a model of the type on each of them (calling the row's ``provider_method``)
and refuses it everywhere else, the homepage shows its group (server-rendered and in the
live refresh of app.js, with its colour), its default credits are valid ``Credits``, the
config accepts ``type: <name>``, and /openapi.json lists it.  For kinds: the config accepts
it, ``build`` makes it, /v1/models shows its ``owned_by``, and it implements chat.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from apiarium import providers
from apiarium.app import routes
from apiarium.catalog import Credits, ModelSpec
from apiarium.config import ConfigError, load_config
from apiarium.generation import Media
from apiarium.modeltypes import MODEL_TYPES, ModelType, serves
from apiarium.providers import KINDS
from apiarium.providers.base import Provider
from apiarium.providers.shapes import completion, usage
from tests.fakes import make_mp4, make_png
from tests.inprocess import MASTER, InProcess, write_config

WEB = Path(__file__).resolve().parent.parent / "apiarium" / "web"
TYPES = list(MODEL_TYPES.values())
TYPE_IDS = [t.name for t in TYPES]
ALL_ENDPOINTS = sorted({e for t in TYPES for e in t.endpoints})
AUTH = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}

# A valid request body for each endpoint a type may name ({model} is filled in).
BODIES: dict[str, dict] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "a bee at dawn"}]},
    "/v1/completions": {"prompt": "a bee at dawn"},
    "/v1/responses": {"input": "a bee at dawn"},
    "/v1/messages": {"max_tokens": 32, "messages": [{"role": "user", "content": "a bee"}]},
    "/v1/images/generations": {"prompt": "a bee at dawn"},
    "/v1/videos/generations": {"prompt": "a bee at dawn"},
    "/v1/embeddings": {"input": "a bee at dawn"},
}


# ---------------------------------------------------------------------- a kind that does all

_ANSWERS = {
    "chat": lambda m: completion(m.alias, "buzz", "stop", usage_=usage(1, 1)),
    "image": lambda m: [Media(make_png(), "image/png")],
    "video": lambda m: Media(make_mp4(), "video/mp4"),
    "embed": lambda m: {"object": "list", "model": m.alias, "usage": {"prompt_tokens": 1},
                        "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]},
}


class Recorder(Provider):
    """Implements every ``provider_method`` of the table (whatever rows it has) and records
    which one each request reached."""

    kind = "recorder"
    owned_by = "recorder-lab"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[str] = []


def _recording(name: str):
    async def method(self: Recorder, model: ModelSpec, *args: Any) -> Any:
        self.calls.append(name)
        return _ANSWERS[name](model) if name in _ANSWERS else None
    method.__name__ = name
    return method


for _t in TYPES:
    setattr(Recorder, _t.provider_method, _recording(_t.provider_method))

RECORDER = f"{Recorder.__module__}:Recorder"


def overrides(cls: type[Provider], method: str) -> bool:
    return getattr(cls, method, None) is not getattr(Provider, method, None)


def serving_kinds(t: ModelType) -> list[str]:
    return [kind for kind, cls in KINDS.items() if overrides(cls, t.provider_method)]


def catalog() -> dict:
    """One Recorder model per type, and one chat model per built-in kind."""
    return {
        "providers": {
            "rec": {"kind": RECORDER, "base_url": "http://rec.invalid", "api_key": "k"},
            **{f"p-{kind}": {"kind": kind, "base_url": "http://127.0.0.1:9", "api_key": "k"}
               for kind in KINDS},
        },
        "models": {
            **{f"rec-{t.name}": {"provider": "rec", "type": t.name} for t in TYPES},
            **{f"m-{kind}": {"provider": f"p-{kind}"} for kind in KINDS},
        },
    }


@pytest.fixture
def app(io_loop, tmp_path):
    env = InProcess(write_config(tmp_path, catalog()))
    io_loop.run_sync(env.open)
    yield env.app()
    io_loop.run_sync(env.close)


# ---------------------------------------------------------------------- types: static wiring

def test_the_table_is_not_empty_and_names_are_its_keys():
    assert TYPES, "MODEL_TYPES has no rows"
    for name, t in MODEL_TYPES.items():
        assert t.name == name and t.endpoints and t.label and t.blurb, t


@pytest.mark.parametrize("t", TYPES, ids=TYPE_IDS)
def test_its_endpoints_are_post_routes_of_the_application(t):
    table = routes()
    for endpoint in t.endpoints:
        handlers = [r[1] for r in table if re.fullmatch(r[0], endpoint)]
        assert handlers, (f"type {t.name!r}: endpoint {endpoint} is not a route of "
                          f"apiarium.app.routes()")
        handler = handlers[0]
        assert handler.post is not tornado.web.RequestHandler.post, (
            f"type {t.name!r}: {endpoint} is routed to {handler.__name__}, which takes no POST")


@pytest.mark.parametrize("t", TYPES, ids=TYPE_IDS)
def test_its_provider_method_is_part_of_the_provider_interface(t):
    method = getattr(Provider, t.provider_method, None)
    assert method is not None and inspect.iscoroutinefunction(method), (
        f"type {t.name!r}: Provider has no async method {t.provider_method!r} (its "
        f"provider_method); add it to providers/base.py, refusing by default")
    assert serving_kinds(t), (f"type {t.name!r}: no built-in kind of providers.KINDS "
                              f"implements {t.provider_method}()")


@pytest.mark.parametrize("t", TYPES, ids=TYPE_IDS)
def test_its_default_credits_are_valid_credits(t):
    names = {f.name for f in dataclasses.fields(Credits)}
    assert set(t.credits) <= names, (f"type {t.name!r}: credits {sorted(set(t.credits) - names)}"
                                     f" are not fields of catalog.Credits")
    plain = Credits.for_model("some-model", t.name)
    for field, value in t.credits.items():
        assert getattr(plain, field) == value, (t.name, field)
    assert any(getattr(plain, f) for f in names), f"type {t.name!r} costs nothing by default"
    pro = Credits.for_model("some-model-pro", t.name)
    for field, value in t.credits.items():
        if isinstance(value, float):
            assert getattr(pro, field) == 2 * value, (t.name, field)
    given = Credits.for_model("some-model", t.name, {"request": 7.0})
    assert given.request == 7.0


@pytest.mark.parametrize("t", TYPES, ids=TYPE_IDS)
def test_the_config_accepts_the_type(t, tmp_path):
    kind = (serving_kinds(t) or ["openai"])[0]
    path = write_config(tmp_path, {
        "providers": {"p": {"kind": kind, "base_url": "http://127.0.0.1:9", "api_key": "k"}},
        "models": {"x": {"provider": "p", "type": t.name}}})
    spec = load_config(path).catalog.resolve("x")
    assert spec.type == t.name
    assert spec.credits == Credits.for_model("x", t.name)


@pytest.mark.parametrize("t", TYPES, ids=TYPE_IDS)
def test_the_catalog_serves_it_exactly_on_its_endpoints(t, tmp_path):
    path = write_config(tmp_path, {
        "providers": {"p": {"kind": RECORDER, "base_url": "http://x.invalid", "api_key": "k"}},
        "models": {"x": {"provider": "p", "type": t.name}}})
    cat = load_config(path).catalog
    for endpoint in ALL_ENDPOINTS:
        if endpoint in t.endpoints:
            assert serves(t.name, endpoint)
            assert cat.resolve_for("x", endpoint).type == t.name
        else:
            assert not serves(t.name, endpoint)
            with pytest.raises(Exception, match=re.escape(t.home)):
                cat.resolve_for("x", endpoint)


def test_app_js_and_the_stylesheet_know_every_type():
    """The homepage's live refresh (app.js) regroups /v1/models by type from its own list,
    and each group's dot has a colour per type."""
    js = (WEB / "app.js").read_text(encoding="utf-8")
    m = re.search(r"var TYPES = \[([^\]]*)\]", js)
    assert m, "app.js no longer declares `var TYPES = [...]`: update this test"
    in_js = re.findall(r'"([^"]+)"', m.group(1))
    css = (WEB / "style.css").read_text(encoding="utf-8")
    missing = [f"{t.name}: not in app.js TYPES" for t in TYPES if t.name not in in_js]
    missing += [f"{t.name}: no .dot-{t.name} colour in style.css" for t in TYPES
                if f".dot-{t.name}" not in css]
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------------- types: over HTTP

@pytest.mark.gen_test(timeout=30)
async def test_each_type_is_served_on_its_endpoints_by_its_provider_method(
        app, http_client, base_url):
    recorder = app.settings["services"].live.providers["rec"]
    assert isinstance(recorder, Recorder)
    for t in TYPES:
        for endpoint in t.endpoints:
            assert endpoint in BODIES, (f"type {t.name!r}: this test has no example body for "
                                        f"{endpoint}; add one to BODIES")
            recorder.calls.clear()
            resp = await http_client.fetch(
                base_url + endpoint, method="POST", headers=AUTH, raise_error=False,
                body=json.dumps({**BODIES[endpoint], "model": f"rec-{t.name}"}))
            assert recorder.calls == [t.provider_method], (
                f"type {t.name!r} on {endpoint}: the provider's {t.provider_method}() should "
                f"have been called; calls were {recorder.calls} (HTTP {resp.code} "
                f"{resp.body[:300]!r})")
            assert resp.code == 200, (t.name, endpoint, resp.body[:300])


@pytest.mark.gen_test(timeout=30)
async def test_each_type_is_refused_on_the_other_endpoints_naming_its_own(
        app, http_client, base_url):
    recorder = app.settings["services"].live.providers["rec"]
    for t in TYPES:
        for endpoint in (e for e in ALL_ENDPOINTS if e not in t.endpoints):
            resp = await http_client.fetch(
                base_url + endpoint, method="POST", headers=AUTH, raise_error=False,
                body=json.dumps({**BODIES.get(endpoint, {"prompt": "a bee"}),
                                 "model": f"rec-{t.name}"}))
            body = resp.body.decode()
            assert resp.code == 400 and t.home in body, (
                f"type {t.name!r} on {endpoint}: expected a 400 pointing to {t.home}, got "
                f"HTTP {resp.code} {body[:300]}")
    assert recorder.calls == []


class _Groups(HTMLParser):
    """The homepage's catalog: heading text per group id, tile ids per ``ul[data-type]``."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: dict[str, str] = {}
        self.tiles: dict[str, list[str]] = {}
        self._heading: str | None = None
        self._list: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "h3" and (a.get("id") or "").startswith("group-"):
            self._heading = a["id"][len("group-"):]
            self.headings[self._heading] = ""
        elif tag == "ul" and "data-type" in a:
            self._list = a["data-type"]
            self.tiles[self._list] = []
        elif tag == "li" and self._list and "data-model" in a:
            self.tiles[self._list].append(a["data-model"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._heading = None
        elif tag == "ul":
            self._list = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self.headings[self._heading] += data


@pytest.mark.gen_test(timeout=30)
async def test_the_homepage_shows_a_group_per_type_with_its_models(app, http_client, base_url):
    resp = await http_client.fetch(base_url + "/")
    html = resp.body.decode()
    page = _Groups()
    page.feed(html)
    for t in TYPES:
        assert t.name in page.headings, f"type {t.name!r}: no group on the homepage"
        assert t.label in page.headings[t.name], (t.name, page.headings[t.name])
        assert t.blurb in html, f"type {t.name!r}: its blurb is not on the homepage"
        assert f"rec-{t.name}" in page.tiles.get(t.name, []), (
            f"type {t.name!r}: its model is not in the group's tiles {page.tiles}")


@pytest.mark.gen_test(timeout=30)
async def test_openapi_lists_every_type(http_client, base_url):
    doc = json.loads((await http_client.fetch(base_url + "/openapi.json")).body)
    enum = doc["components"]["schemas"]["Model"]["properties"]["type"]["enum"]
    assert sorted(enum) == sorted(MODEL_TYPES), "openapi.json's Model.type enum is stale"
    paths = set(doc["paths"])
    missing = [f"{t.name}: {e}" for t in TYPES for e in t.endpoints if e not in paths]
    assert not missing, "endpoints of types missing from openapi.json:\n" + "\n".join(missing)


# ---------------------------------------------------------------------- kinds

@pytest.mark.parametrize("kind", list(KINDS))
def test_the_kind_is_a_complete_provider_class(kind):
    cls = KINDS[kind]
    assert issubclass(cls, Provider) and cls.kind == kind, (
        f"KINDS[{kind!r}] is {cls}, whose kind is {getattr(cls, 'kind', None)!r}")
    assert cls.owned_by, f"kind {kind!r}: owned_by is empty (what /v1/models shows)"
    missing = [m for m in ("chat", "chat_stream") if not overrides(cls, m)]
    assert not missing, f"kind {kind!r} does not implement {', '.join(missing)}"
    assert providers.provider_class(kind) is cls


@pytest.mark.gen_test(timeout=30)
async def test_every_kind_is_accepted_built_and_listed_with_its_owned_by(
        app, http_client, base_url):
    live = app.settings["services"].live
    for kind, cls in KINDS.items():
        spec = live.config.catalog.providers[f"p-{kind}"]
        assert (spec.kind, spec.owned_by) == (kind, cls.owned_by), spec
        assert type(live.providers[f"p-{kind}"]) is cls, f"build() did not make a {cls}"
    resp = await http_client.fetch(base_url + "/v1/models", headers=AUTH)
    owners = {m["id"]: m["owned_by"] for m in json.loads(resp.body)["data"]}
    for kind, cls in KINDS.items():
        assert owners.get(f"m-{kind}") == cls.owned_by, (kind, owners)
    assert {owners[f"rec-{t.name}"] for t in TYPES} == {Recorder.owned_by}


def test_a_model_whose_kind_cannot_serve_its_type_is_refused_by_the_config(tmp_path):
    """modeltypes.py: ``provider_method`` is "the Provider method a kind must implement to
    serve the type (the config loader refuses a model whose provider kind lacks it)"."""
    pairs = [(t, kind) for t in TYPES for kind, cls in KINDS.items()
             if not overrides(cls, t.provider_method)]
    assert pairs, "every kind serves every type: nothing to refuse"
    accepted = []
    for i, (t, kind) in enumerate(pairs):
        path = write_config(tmp_path / str(i), {
            "providers": {"p": {"kind": kind, "base_url": "http://127.0.0.1:9",
                                "api_key": "k"}},
            "models": {"x": {"provider": "p", "type": t.name}}})
        try:
            load_config(path)
        except ConfigError as exc:
            assert "models.x" in str(exc), str(exc)
            continue
        accepted.append(f"type: {t.name} on kind: {kind} (no {t.provider_method}())")
    assert not accepted, ("the config accepts models their provider kind cannot serve:\n"
                          + "\n".join(accepted))
