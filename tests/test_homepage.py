"""The homepage (GET /) in a real headless Chromium against a running gateway with a fake
OpenAI upstream: the key, the base URL as the browser reached us, examples that run as
copied, click-to-copy model tiles, the live catalog, escaping, CSP, JS off, phone layout.

Screenshots land in ``test-output/`` at the repository root (gitignored)."""
from __future__ import annotations

import contextlib
import gzip
import json
import re
import subprocess
import sys

import pytest

from apiarium.modeltypes import MODEL_TYPES
from tests.browser import OUT
from tests.conftest import openai_models
from tests.support import MASTER_KEY, request, wait_for

KEY = re.compile(r"^api-[a-z0-9]{16}$")
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_HOST = "<script>alert(1)</script>"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TILES_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('ul.tiles')).map(
    ul => [ul.dataset.type, Array.from(ul.querySelectorAll('.tile')).map(
        t => [t.dataset.model, t.querySelector('.tile-id').textContent])]))"""


@contextlib.contextmanager
def opened(browser, origin: str, clipboard: bool = False, **options):
    """A fresh context + page; collects console errors, page errors, dialogs, request URLs."""
    context = browser.new_context(**options)
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = context.new_page()
    page.problems, page.dialogs, page.urls = [], [], []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: page.urls.append(r.url))
    try:
        yield page
    finally:
        context.close()


def origin_of(gateway, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{gateway.port}"


def live(page) -> None:
    page.wait_for_selector("#catalog[data-live='true']", state="attached", timeout=10_000)


def tiles_by_type(page) -> dict:
    return page.evaluate(TILES_JS)


def expected_tiles(gateway) -> dict:
    status, _, body = gateway.get("/v1/models", key=MASTER_KEY)
    assert status == 200, body
    groups = {t: [] for t in MODEL_TYPES}
    for model in json.loads(body)["data"]:
        groups[model["type"]].append([model["id"], model["id"]])
    return groups


def clipboard(page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


# --------------------------------------------------------------------------- acceptance 1
def test_key_is_shown_stays_the_same_and_the_copied_curl_example_runs(
        browser, gateway, fake_openai):
    fake_openai.reply_text = "Hello from the fake upstream."
    origin = origin_of(gateway)
    with opened(browser, origin, clipboard=True) as page:
        page.goto(origin + "/")
        key = page.text_content("#api-key").strip()
        assert KEY.match(key), key
        assert page.get_attribute("#api-key", "data-key") == key
        page.reload()
        assert page.text_content("#api-key").strip() == key
        assert gateway.key_for() == key                  # issued exactly as /v1/keys/me does

        page.click("label[for='tab-curl']")
        page.click("button[data-copy='code-curl']")
        page.wait_for_selector("#toast.show")
        copied = clipboard(page)
        assert copied == page.text_content("#code-curl")
        assert f"Authorization: Bearer {key}" in copied
        assert f"{origin}/v1/chat/completions" in copied
        run = subprocess.run(["bash", "-c", copied], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert answer["choices"][0]["message"]["content"] == "Hello from the fake upstream."
        assert fake_openai.last().json["model"] == "gpt-5"

        # the key travels in the page body and in headers, never in a URL
        assert page.urls and not [u for u in page.urls if key in u]
        assert not page.problems, page.problems

    gateway.restart()                                    # also the same key after a restart
    origin = origin_of(gateway)
    with opened(browser, origin) as page:
        page.goto(origin + "/")
        assert page.text_content("#api-key").strip() == key


def test_the_python_and_javascript_examples_carry_base_url_and_key(browser, gateway):
    origin = origin_of(gateway)
    with opened(browser, origin) as page:
        page.goto(origin + "/")
        key = page.text_content("#api-key").strip()
        page.click("label[for='tab-python']")
        assert page.is_visible("#code-python") and not page.is_visible("#code-curl")
        python = page.text_content("#code-python")
        assert f'client = OpenAI(base_url="{origin}/v1", api_key="{key}")' in python
        assert 'model="gpt-5"' in python
        compile(python, "example.py", "exec")            # valid Python as printed
        page.click("label[for='tab-js']")
        js = page.text_content("#code-js")
        assert 'import OpenAI from "openai";' in js
        assert f'baseURL: "{origin}/v1"' in js and f'apiKey: "{key}"' in js


def test_limits_show_the_configured_rate_and_body_size(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), rate_limit={"rpm": 7},
                      server={"max_body_mb": 3})
    status, _, body = request(gw.url + "/")
    text = body.decode()
    assert status == 200
    assert "<strong>7</strong> requests / min" in text
    assert "<strong>7 requests per minute</strong>" in text
    assert "up to <strong>3 MB</strong>" in text
    assert "4 requests" not in text


# --------------------------------------------------------------------------- acceptance 2
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_base_url_is_the_url_the_browser_used(browser, gateway, host):
    origin = origin_of(gateway, host)
    with opened(browser, origin) as page:
        page.goto(origin + "/")
        assert page.text_content("#base-url").strip() == f"{origin}/v1"
        assert f"{origin}/v1/chat/completions" in page.text_content("#code-curl")


def test_base_url_honours_a_trusted_proxy(browser, make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), server={"trusted_proxies": ["127.0.0.1/32"]})
    origin = origin_of(gw)
    with opened(browser, origin, extra_http_headers={"X-Forwarded-Proto": "https"}) as page:
        page.goto(origin + "/")
        assert page.text_content("#base-url").strip() == f"https://127.0.0.1:{gw.port}/v1"
    status, _, body = request(origin + "/", headers={"X-Forwarded-Proto": "https",
                                                     "X-Forwarded-Host": "api.example.com"})
    assert status == 200 and b'data-origin="https://api.example.com"' in body
    # a forwarded host is believed from a trusted proxy, but still never rendered raw
    status, _, body = request(origin + "/", headers={"X-Forwarded-Host": HOSTILE_HOST})
    assert status == 200 and b"<script>alert" not in body
    assert f'data-origin="http://127.0.0.1:{gw.port}"'.encode() in body


def test_forwarding_headers_from_an_untrusted_peer_are_ignored(gateway):
    status, _, body = request(gateway.url + "/", headers={"X-Forwarded-Proto": "https"})
    assert status == 200
    assert f'data-origin="http://127.0.0.1:{gateway.port}"'.encode() in body


# --------------------------------------------------------------------------- acceptance 3
def test_clicking_a_model_tile_copies_its_id_and_confirms(browser, gateway):
    origin = origin_of(gateway)
    with opened(browser, origin, clipboard=True) as page:
        page.goto(origin + "/")
        live(page)
        page.click(".tile[data-model='gpt-5']")
        page.wait_for_selector("#toast.show")
        assert clipboard(page) == "gpt-5"
        assert page.text_content("#toast") == "Copied gpt-5"
        assert page.is_visible("#toast")
        page.focus(".tile[data-model='gpt-image-1']")    # keyboard works too
        page.keyboard.press("Enter")
        # a selector, not wait_for_function: Playwright's polling of a JS string needs eval,
        # which the page's CSP (rightly) forbids
        page.wait_for_selector("#toast:text-is('Copied gpt-image-1')")
        assert clipboard(page) == "gpt-image-1"


# --------------------------------------------------------------------------- acceptance 4
def test_catalog_follows_the_catalog_file_after_a_reload(browser, make_gateway, fake_openai):
    models = openai_models(fake_openai)
    gw = make_gateway(models)
    origin = origin_of(gw)
    with opened(browser, origin) as page:
        page.goto(origin + "/")
        live(page)
        assert tiles_by_type(page) == expected_tiles(gw)

        models["models"]["claude-fresh"] = {"provider": "up"}
        # a video model needs a provider kind that makes videos (the config checks it)
        models["providers"]["veo-host"] = {"kind": "gemini", "base_url": "http://127.0.0.1:9",
                                           "api_key": "k"}
        models["models"]["veo-fresh"] = {"provider": "veo-host", "type": "video"}
        del models["models"]["dead-model"]
        gw.write_models(models)
        gw.reload()
        assert wait_for(lambda: "veo-fresh" in json.dumps(expected_tiles(gw)), timeout=10)
        want = expected_tiles(gw)
        assert "dead-model" not in json.dumps(want)

        page.click("#catalog-refresh")                   # live, without reloading the page
        page.wait_for_selector(".tile[data-model='veo-fresh']")
        assert tiles_by_type(page) == want
        assert page.text_content("[data-count='video']") == "1"
        assert not page.is_visible("[data-empty='video']")

        page.reload()                                    # and as rendered by the server
        assert tiles_by_type(page) == want
    with opened(browser, origin, java_script_enabled=False) as page:
        page.goto(origin + "/")
        assert tiles_by_type(page) == want


def test_embedding_models_are_a_group_with_an_example_that_runs(browser, make_gateway,
                                                               fake_openai):
    gw = make_gateway(openai_models(fake_openai, models={
        "text-embedding-3-small": {"provider": "up", "type": "embedding"}}))
    origin = origin_of(gw)
    with opened(browser, origin, clipboard=True) as page:
        page.goto(origin + "/")
        live(page)
        tiles = tiles_by_type(page)
        assert tiles == expected_tiles(gw)
        assert tiles["embedding"] == [["text-embedding-3-small"] * 2]
        assert "Embedding" in page.text_content("#group-embedding")
        assert page.locator("#code-group-chat").count() == 0     # only rows with an example
        page.click("button[data-copy='code-group-embedding']")
        page.wait_for_selector("#toast:text-is('Copied the embedding example')")
        code = clipboard(page)
        assert code == page.text_content("#code-group-embedding")
        key = page.text_content("#api-key").strip()
        assert f'OpenAI(base_url="{origin}/v1", api_key="{key}")' in code
        assert 'model="text-embedding-3-small"' in code
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "2 vectors of 256 numbers"
        assert fake_openai.last().path == "/v1/embeddings"
        assert not page.problems, page.problems
    with opened(browser, origin, viewport={"width": 390, "height": 844}) as page:
        page.goto(origin + "/")                           # the code scrolls, not the page
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    status, _, body = request(gw.url + "/")                   # and without JavaScript
    assert status == 200 and b'id="code-group-embedding"' in body


# --------------------------------------------------------------------------- acceptance 5
def test_a_hostile_model_alias_renders_as_text(browser, make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai, models={HOSTILE: {"provider": "up"}}))
    origin = origin_of(gw)
    with opened(browser, origin, clipboard=True) as page:
        page.goto(origin + "/")
        live(page)                                       # after the JS refresh too
        tile = page.locator(".tile", has_text="onerror")
        assert tile.locator(".tile-id").text_content() == HOSTILE
        assert page.locator("#catalog img").count() == 0
        tile.click()
        page.wait_for_selector("#toast.show")
        assert clipboard(page) == HOSTILE
        page.wait_for_timeout(300)
        assert page.dialogs == []
        assert not page.problems, page.problems
    status, _, body = request(origin + "/")
    assert status == 200 and HOSTILE.encode() not in body
    assert b"&lt;img src=x onerror=alert(1)&gt;" in body


@pytest.mark.parametrize("host", ["<script>alert(1)</script>", "a.example'onmouseover=alert(1)",
                                  "%3Cscript%3Ealert(1)"])
def test_a_hostile_host_header_is_never_reflected(gateway, host):
    status, _, body = request(gateway.url + "/", headers={"Host": host})
    assert status in (200, 400)            # Tornado itself refuses a Host with < or >
    assert b"<script>alert" not in body and b"onmouseover" not in body
    assert b"%3Cscript" not in body
    if status == 200:                      # the socket address is shown instead
        assert f'data-origin="http://127.0.0.1:{gateway.port}"'.encode() in body


# --------------------------------------------------------------------------- 403, CSP, JS off
def test_a_vpn_visitor_gets_an_html_403_page(browser, gateway):
    status, headers, body = request(gateway.url + "/", headers={"Via": "1.1 proxy"})
    assert status == 403
    assert headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"] == CSP
    text = body.decode()
    assert "VPN" in text and "vpn_detected" in text and "Via" in text
    assert not re.search(r"api-[a-z0-9]{16}", text)         # no key for a proxy
    origin = origin_of(gateway)
    with opened(browser, origin, extra_http_headers={"Via": "1.1 proxy"}) as page:
        response = page.goto(origin + "/")
        assert response.status == 403
        assert "VPN" in page.text_content("h1")
        page.screenshot(path=str(OUT / "homepage-403.png"), full_page=True)
        assert not [p for p in page.problems if "Content Security Policy" in p]


def test_security_headers_and_no_inline_script_or_style(browser, gateway):
    status, headers, body = request(gateway.url + "/")
    assert status == 200
    assert headers["content-security-policy"] == CSP
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    html = body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)       # no inline script
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"(href|src)=\"(https?:)?//", html)      # no external resources
    origin = origin_of(gateway)
    with opened(browser, origin) as page:
        page.goto(origin + "/")
        live(page)
        assert not page.problems, page.problems               # e.g. CSP violations


def test_without_javascript_the_key_and_catalog_are_there(browser, gateway):
    origin = origin_of(gateway)
    with opened(browser, origin, java_script_enabled=False) as page:
        page.goto(origin + "/")
        assert page.is_visible("#api-key")
        assert KEY.match(page.text_content("#api-key").strip())
        assert page.text_content("#base-url").strip() == f"{origin}/v1"
        assert tiles_by_type(page) == expected_tiles(gateway)
        assert page.is_visible(".tile[data-model='gpt-5']")
        assert page.is_visible("#code-curl")
        page.click("label[for='tab-python']")                  # CSS-only tabs
        assert page.is_visible("#code-python") and not page.is_visible("#code-curl")
        assert not page.is_visible("button.copy")            # they need JS: hidden


def test_static_assets_are_cached_and_compressed(gateway):
    _, _, body = request(gateway.url + "/")
    urls = re.findall(r'(?:href|src)="(/static/[^"]+)"', body.decode())
    assert {u.split("?")[0] for u in urls} >= {"/static/style.css", "/static/app.js"}
    for url in urls:
        url = url.replace("&amp;", "&")
        status, plain_h, plain = request(gateway.url + url)
        assert status == 200 and plain_h["cache-control"] == "public, max-age=31536000, immutable"
        assert plain_h["x-content-type-options"] == "nosniff"
        status, h, packed = request(gateway.url + url, headers={"Accept-Encoding": "gzip"})
        if url.startswith(("/static/style.css", "/static/app.js")):
            assert h["content-encoding"] == "gzip" and len(packed) < len(plain)
            assert gzip.decompress(packed) == plain
        status, _, _ = request(gateway.url + url, headers={"If-None-Match": h["etag"]})
        assert status == 304
    status, h, _ = request(gateway.url + "/static/style.css")
    assert status == 200 and h["cache-control"] == "no-cache" and h["etag"]
    status, _, body = request(gateway.url + "/static/../apiarium.yaml")
    assert status == 404
    status, _, _ = request(gateway.url + "/static/index.html")   # templates are not served
    assert status == 404


# --------------------------------------------------------------------------- acceptance 6
@pytest.mark.parametrize("width", [390, 1280])
def test_screenshots_and_no_horizontal_overflow(browser, gateway, width):
    origin = origin_of(gateway)
    height = 844 if width == 390 else 800
    with opened(browser, origin, viewport={"width": width, "height": height}) as page:
        page.goto(origin + "/")
        live(page)
        for tab in ("curl", "python", "js"):                # the widest code block included
            page.click(f"label[for='tab-{tab}']")
            assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.click("label[for='tab-curl']")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.evaluate("document.body.scrollWidth") <= width
        page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        page.screenshot(path=str(OUT / f"homepage-{width}.png"), full_page=True)
    assert (OUT / f"homepage-{width}.png").stat().st_size > 10_000
