"""handlers/pages.py in-process: the homepage (GET and HEAD /), its static files, and its
errors as HTML pages."""
from __future__ import annotations

import gzip
import json
import re

import pytest

from apiarium.handlers import pages
from tests.inprocess import InProcess, write_config

VISITS = 3          # security.key_requests_per_minute


@pytest.fixture
def app(io_loop, tmp_path):
    env = InProcess(write_config(
        tmp_path, {"providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:9",
                                       "api_key": "k"}},
                   "models": {"gpt-5": {"provider": "p"}}},
        security={"key_requests_per_minute": VISITS}))
    io_loop.run_sync(env.open)
    yield env.app()
    io_loop.run_sync(env.close)


def key_count(app) -> int:
    return len(app.settings["services"].keys)


def assert_secured(resp) -> None:
    for name, value in pages.SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, name


@pytest.mark.gen_test(timeout=20)
async def test_head_answers_without_issuing_a_key_or_counting_a_visit(app, http_client,
                                                                      base_url):
    for _ in range(VISITS + 2):
        resp = await http_client.fetch(base_url + "/", method="HEAD")
        assert resp.code == 200 and resp.body == b""
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Cache-Control"] == "no-store"
        assert_secured(resp)
    assert key_count(app) == 0
    page = await http_client.fetch(base_url + "/")       # no visit was used up by HEAD
    assert page.code == 200 and key_count(app) == 1


@pytest.mark.gen_test(timeout=20)
async def test_the_page_holds_the_visitors_key_and_is_never_cached(app, http_client,
                                                                   base_url):
    resp = await http_client.fetch(base_url + "/", headers={"Accept-Encoding": "gzip"},
                                   decompress_response=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert_secured(resp)
    html = gzip.decompress(resp.body).decode()
    me = json.loads((await http_client.fetch(base_url + "/v1/keys/me")).body)
    assert f'data-key="{me["key"]}"' in html
    assert f"{base_url}/v1" in html                           # the base URL as reached
    assert 'data-model="gpt-5"' in html
    plain = await http_client.fetch(base_url + "/", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and me["key"] in plain.body.decode()


@pytest.mark.gen_test(timeout=20)
async def test_too_many_visits_get_an_html_429_page(app, http_client, base_url):
    for _ in range(VISITS):
        assert (await http_client.fetch(base_url + "/")).code == 200
    resp = await http_client.fetch(base_url + "/", raise_error=False)
    assert resp.code == 429
    assert resp.headers["Content-Type"].startswith("text/html")
    assert int(resp.headers["Retry-After"]) >= 1
    assert_secured(resp)
    html = resp.body.decode()
    assert "429" in html and "rate_limit_exceeded" in html
    assert "Traceback" not in html


@pytest.mark.gen_test(timeout=20)
async def test_static_files_are_versioned_cached_and_compressed(app, http_client, base_url):
    html = (await http_client.fetch(base_url + "/")).body.decode()
    href = re.search(r'href="(/static/style\.css\?v=[0-9a-f]+)"', html)
    assert href, "the page links its stylesheet with a version"
    versioned = await http_client.fetch(base_url + href.group(1))
    assert versioned.headers["Cache-Control"] == pages.IMMUTABLE
    assert versioned.headers["Content-Type"] == "text/css; charset=utf-8"
    # (tornado's client asks for gzip unless told not to decompress)
    bare = await http_client.fetch(base_url + "/static/style.css", decompress_response=False)
    assert "Content-Encoding" not in bare.headers
    assert bare.headers["Cache-Control"] == "no-cache" and bare.body == versioned.body
    etag = bare.headers["Etag"]
    again = await http_client.fetch(base_url + "/static/style.css", raise_error=False,
                                    headers={"If-None-Match": etag},
                                    decompress_response=False)
    assert again.code == 304 and again.body == b""
    head = await http_client.fetch(base_url + "/static/style.css", method="HEAD",
                                   decompress_response=False)     # no gzip asked for
    assert head.body == b"" and int(head.headers["Content-Length"]) == len(bare.body)
    packed = await http_client.fetch(base_url + "/static/style.css",
                                     headers={"Accept-Encoding": "gzip"},
                                     decompress_response=False)
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.body) == bare.body
    assert packed.headers["Etag"] != etag                      # a different representation


@pytest.mark.gen_test(timeout=20)
async def test_an_unknown_static_file_is_a_json_404(app, http_client, base_url):
    resp = await http_client.fetch(base_url + "/static/nope.css", raise_error=False)
    assert resp.code == 404 and resp.headers["Content-Type"] == "application/json"
    assert json.loads(resp.body)["error"]["code"] == "not_found"


@pytest.mark.gen_test(timeout=20)
async def test_a_wrong_method_on_the_homepage_is_a_405_page_with_allow(app, http_client,
                                                                       base_url):
    resp = await http_client.fetch(base_url + "/", method="POST", body=b"",
                                   raise_error=False)
    assert resp.code == 405
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers.get("Allow") == "GET, HEAD", (
        "RFC 9110 15.5.6: a 405 answer must carry Allow; the JSON handlers send it, the "
        "HTML pages do not")
    assert key_count(app) == 0
