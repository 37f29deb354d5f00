"""The homepage's model tiles say what works (services/status.py), in a real headless
Chromium (Debian's, launched as tests/test_homepage.py does) after the live refresh from
GET /v1/models: not configured (naming the variable), ready, cooling down (until when), and
the line above the tiles shows a green dot only while some model is ready.

Screenshots land in ``test-output/`` at the repository root (gitignored).  Client addresses:
127.0.10.x (the browser's is 127.0.0.1: Chromium picks no source address)."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.browser import OUT
from tests.conftest import openai_models
from tests.support import MASTER_KEY
from tests.test_model_status import NEEDS, SHIPPED_MODELS, provider_of, shipped_variables

TILES_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('#catalog .tile')).map(
    t => [t.dataset.model, [t.dataset.status, t.querySelector('.tile-status').textContent]]))"""


def open_live(browser, gw, **options):
    """A new context and page on the homepage, once the JS refresh has redrawn the tiles;
    console errors and page errors collect in ``page.problems``."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.goto(f"http://127.0.0.1:{gw.port}/")
    page.wait_for_selector("#catalog[data-live='true']", state="attached", timeout=10_000)
    return context, page


@pytest.mark.parametrize("width", [390, 1280])
def test_with_no_keys_every_tile_says_not_configured_and_names_its_variable(
        browser, make_gateway, monkeypatch, width):
    for name in shipped_variables():
        monkeypatch.delenv(name, raising=False)
    gw = make_gateway(yaml.safe_load(SHIPPED_MODELS.read_text()))
    context, page = open_live(browser, gw, viewport={"width": width, "height": 900})
    try:
        tiles = page.evaluate(TILES_JS)
        assert len(tiles) == len(yaml.safe_load(SHIPPED_MODELS.read_text())["models"])
        for alias, (state, text) in tiles.items():
            assert state == "not_configured", alias
            assert text == f"Not configured: {NEEDS[provider_of(alias)]}", (alias, text)
            assert page.is_visible(f".tile[data-model='{alias}'] .tile-status")
        line = page.locator("#catalog-status")
        assert line.get_attribute("class").split() == ["status", "status-down"]
        assert line.text_content().startswith("No model is ready: each one below says why")
        # the dot is red, not the green of a working gateway
        dot = page.evaluate("getComputedStyle(document.getElementById('catalog-status'), "
                            "'::before').backgroundColor")
        ok = page.evaluate("getComputedStyle(document.documentElement)"
                           ".getPropertyValue('--ok').trim()")
        assert dot and dot != "rgba(0, 0, 0, 0)" and ok and dot != ok
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        # the playground's model list says the same of each model it offers
        labels = page.evaluate("Array.from(document.querySelectorAll('#pg-model option'))"
                               ".map(o => o.textContent)")
        assert labels and all(label.endswith(" (not configured)") for label in labels), labels
        page.screenshot(path=str(OUT / f"homepage-status-{width}.png"), full_page=True)
        assert not page.problems, page.problems
    finally:
        context.close()


def test_ready_and_cooling_down_tiles_after_the_live_refresh(browser, make_gateway,
                                                              fake_openai):
    models = openai_models(fake_openai, providers={
        "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "sk-x",
                 "connect_timeout_s": 2, "breaker_cooldown_s": 600}})
    gw = make_gateway(models)
    for _ in range(3):          # the master key's failures count as many keys' (resilience)
        status, _, _ = gw.post("/v1/chat/completions", {
            "model": "dead-model", "messages": [{"role": "user", "content": "hi"}]},
            key=MASTER_KEY, ip="127.0.10.4")
        assert status == 502
    available_at = json.loads(gw.get("/v1/models/dead-model", key=MASTER_KEY)[2])["available_at"]
    until = time.strftime("%H:%M:%S", time.gmtime(available_at))
    context, page = open_live(browser, gw, timezone_id="UTC")
    try:
        tiles = page.evaluate(TILES_JS)
        assert tiles["dead-model"] == ["cooling_down", f"Cooling down until {until}"]
        assert tiles["gpt-5"] == ["ready", "Ready"]
        assert page.get_attribute(".tile[data-model='dead-model']", "aria-label") == \
            f"Copy model id dead-model (Cooling down until {until})"
        assert tiles["nokey-model"] == [
            "not_configured", "Not configured: set providers.nokey.api_key in models.yaml"]
        line = page.locator("#catalog-status")
        assert line.get_attribute("class").split() == ["status", "status-ok"]
        assert line.text_content().startswith("3 of 5 models ready · updated ")
        assert not page.problems, page.problems
    finally:
        context.close()
