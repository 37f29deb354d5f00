"""The homepage's examples tabs, playground and usage panel in a real headless Chromium
(Debian's, launched as tests/test_homepage.py does), against a gateway in front of the fake
OpenAI: every tab shows its panel at 390 and 1280 px with no scrollbar on the strip; a chat
answer streams into the page; an image appears; a 429 and the other errors show their
message; the usage panel matches the requests made.  Every control of these parts is clicked
(tabs, copy buttons, nav links, the playground's model, prompt, Send, Ctrl+Enter and Stop, the
usage panel's Refresh).

Screenshots land in the test's tmp dir.  The browser's address is 127.0.0.1 (Chromium picks no
source address); the other clients here use 127.0.11.x."""
from __future__ import annotations

import contextlib
import json
import re

import pytest

from tests.conftest import openai_models
from tests.support import MASTER_KEY, wait_for

SIZES = {390: 844, 1280: 800}
REPLY = "Bees dance to tell the hive where the flowers are, and how far."
# every change of the answer's text, as the page made it
RECORD_OUTPUT = """() => {
    window.seen = [];
    const out = document.getElementById('pg-output');
    new MutationObserver(() => window.seen.push(out.textContent))
        .observe(out, {childList: true, characterData: true, subtree: true});
}"""
STRIP = """() => { const s = document.querySelector('.tab-list');
    return [s.scrollWidth, s.clientWidth, s.scrollHeight, s.clientHeight]; }"""
LABELS_INSIDE = """() => { const s = document.querySelector('.tab-list').getBoundingClientRect();
    return Array.from(document.querySelectorAll('.tab-list .tab')).filter(t => {
        const r = t.getBoundingClientRect();
        return r.left < s.left || r.right > s.right + 0.5 || r.top < s.top
            || r.bottom > s.bottom + 0.5 || t.scrollWidth > t.clientWidth;
    }).map(t => t.textContent); }"""
CHART = """() => Array.from(document.querySelectorAll('#usage-chart rect.bar')).map(
    r => [r.dataset.date, Number(r.dataset.requests)])"""


@pytest.fixture
def gw(make_gateway, fake_openai):
    """A generous rate limit: the playground's runs are not what these tests limit."""
    return make_gateway(openai_models(fake_openai), rate_limit={"rpm": 1000})


@contextlib.contextmanager
def opened(browser, gw, width: int = 1280, clipboard: bool = False, **options):
    """The homepage in a fresh context, its JS done (the catalog and the usage loaded);
    console errors (a CSP violation among them) and page errors in ``page.problems``."""
    origin = f"http://127.0.0.1:{gw.port}"
    context = browser.new_context(viewport={"width": width, "height": SIZES[width]}, **options)
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    try:
        page.goto(origin + "/")
        if options.get("java_script_enabled", True):
            page.wait_for_selector("#catalog[data-live='true']", state="attached")
            page.wait_for_selector("#usage-panel[data-loaded='true']", state="attached")
        page.origin = origin
        yield page
    finally:
        context.close()


def usage_today(gw, key: str, ip: str = "127.0.0.1") -> tuple[dict, dict]:
    status, _, body = gw.get("/v1/keys/me/usage", key=key, ip=ip)
    assert status == 200, body
    doc = json.loads(body)
    return doc["data"][-1], doc


def only_failed_loads(page, status: int) -> bool:
    """Whether the console's errors are just Chromium's own line for the answer with this
    status (it logs every failed fetch), nothing else (no CSP violation, no script error)."""
    assert page.problems
    return all(f"the server responded with a status of {status}" in p for p in page.problems)


def send(page, model: str, prompt: str) -> None:
    page.select_option("#pg-model", model)
    page.fill("#pg-prompt", prompt)
    page.click("#pg-send")


def finished(page, state: str = "done") -> None:
    page.wait_for_selector(f"#pg[data-state='{state}']", state="attached", timeout=15_000)


# --------------------------------------------------------------------------- the tabs
@pytest.mark.parametrize("width", SIZES)
def test_every_tab_shows_its_panel_and_the_strip_never_scrolls(browser, gw, width, tmp_path):
    with opened(browser, gw, width, clipboard=True) as page:
        key = page.text_content("#api-key").strip()
        tabs = page.eval_on_selector_all(".tab-list .tab", "ts => ts.map(t => t.htmlFor)")
        assert [t.removeprefix("tab-") for t in tabs] == ["curl", "python", "js", "codex",
                                                           "claude"]
        scroll_w, client_w, scroll_h, client_h = page.evaluate(STRIP)
        assert scroll_w <= client_w and scroll_h <= client_h, (width, page.evaluate(STRIP))
        assert page.evaluate(LABELS_INSIDE) == []      # no label cut or outside the strip
        for tab in tabs:
            name = tab.removeprefix("tab-")
            page.click(f"label[for='{tab}']")
            assert page.is_checked(f"#{tab}")
            panel = f"#panel-{name}"
            assert page.is_visible(panel), f"{name}: its panel is not shown at {width} px"
            others = [t for t in tabs if t != tab]
            assert not any(page.is_visible(f"#panel-{t.removeprefix('tab-')}") for t in others)
            text = page.text_content(panel)
            assert page.origin in text and key in text, (name, text)
            box = page.locator(f"#code-{name}").bounding_box()
            assert box is not None and box["height"] > 40 and box["width"] > 200
            label = page.text_content(f"label[for='{tab}']")
            page.click(f"{panel} button.copy")
            page.wait_for_selector(f"#toast:text-is('Copied the {label} example')")
            assert page.evaluate("navigator.clipboard.readText()") == page.text_content(
                f"#code-{name}")
            assert page.evaluate(STRIP)[0] <= page.evaluate(STRIP)[1]
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            page.locator(".tabs").screenshot(path=str(tmp_path / f"tabs-{width}-{name}.png"))
        page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        page.screenshot(path=str(tmp_path / f"homepage-top-{width}.png"))
        page.screenshot(path=str(tmp_path / f"homepage-{width}.png"), full_page=True)
        assert not page.problems, page.problems
    assert (tmp_path / f"homepage-{width}.png").stat().st_size > 10_000


def test_the_tabs_work_without_javascript(browser, gw):
    with opened(browser, gw, 390, java_script_enabled=False) as page:
        for name in ("codex", "claude", "js", "python", "curl"):
            page.click(f"label[for='tab-{name}']")
            assert page.is_visible(f"#code-{name}")
        assert page.is_visible(".nojs-note")              # the playground says it needs JS
        assert not page.is_visible("#pg") and not page.is_visible("#usage-panel")


def test_the_key_and_base_url_copy_buttons_and_the_nav_links(browser, gw):
    with opened(browser, gw, 1280, clipboard=True) as page:
        page.click("button[data-copy='api-key']")
        page.wait_for_selector("#toast:text-is('Copied your API key')")
        assert page.evaluate("navigator.clipboard.readText()") == page.text_content("#api-key")
        page.click("button[data-copy='base-url']")
        page.wait_for_selector("#toast:text-is('Copied the base URL')")
        assert page.evaluate("navigator.clipboard.readText()") == f"{page.origin}/v1"
        links = page.eval_on_selector_all(".nav a", "as => as.map(a => a.hash)")
        assert {"#playground", "#usage", "#examples", "#models"} <= set(links)
        for target in links:
            page.click(f".nav a[href='{target}']")
            assert page.evaluate("location.hash") == target
            assert page.is_visible(target)
        assert not page.problems, page.problems


# --------------------------------------------------------------------------- the playground
def test_a_chat_answer_streams_into_the_page(browser, gw, fake_openai, tmp_path):
    fake_openai.reply_text = REPLY
    fake_openai.stream_events = 8
    fake_openai.stream_delay = 0.3        # far apart enough to arrive one by one under load
    with opened(browser, gw) as page:
        key = page.text_content("#api-key").strip()
        assert page.text_content("#usage-requests") == "0"
        page.evaluate(RECORD_OUTPUT)
        send(page, "gpt-5", "How do bees find flowers?")
        page.wait_for_selector("#pg-stop", state="visible")        # Stop while it runs
        finished(page)
        seen = page.evaluate("window.seen")
        grown = [s for i, s in enumerate(seen) if s and (i == 0 or s != seen[i - 1])]
        assert len(grown) >= 4, seen                    # it grew piece by piece ...
        assert all(REPLY.startswith(s) for s in grown)
        assert grown[-1] == REPLY == page.text_content("#pg-output")   # ... then was whole
        assert not page.is_visible("#pg-stop") and page.is_enabled("#pg-send")
        assert re.search(r"\d+ tokens in, \d+ out", page.text_content("#pg-status"))
        page.locator("#playground").screenshot(path=str(tmp_path / "playground-chat.png"))
        sent = fake_openai.last()
        assert sent.json["stream"] is True and sent.json["model"] == "gpt-5"
        assert sent.json["messages"] == [{"role": "user", "content": "How do bees find flowers?"}]
        # it counted like any other request, and the usage panel followed
        page.wait_for_selector("#usage-requests:text-is('1')")
        today, _ = usage_today(gw, key)
        assert today["requests"] == 1
        tokens = today["prompt_tokens"] + today["completion_tokens"]
        assert page.text_content("#usage-tokens") == f"{tokens:,}"
        assert not page.problems, page.problems


@pytest.mark.parametrize("width", SIZES)
def test_an_image_appears_and_the_page_fits(browser, gw, width, tmp_path):
    with opened(browser, gw, width) as page:
        page.fill("#pg-prompt", "A bee on a sunflower")
        page.select_option("#pg-model", "gpt-image-1")
        page.focus("#pg-prompt")
        page.keyboard.press("Control+Enter")            # the keyboard sends too
        finished(page)
        assert page.is_visible("#pg-image")
        assert page.evaluate("document.getElementById('pg-image').naturalWidth") > 0
        src = page.get_attribute("#pg-image", "src")
        assert src.startswith(f"{page.origin}/media/"), src      # the gateway's copy
        assert page.text_content("#pg-caption") == "A bee on a sunflower"
        assert page.is_hidden("#pg-output")
        assert "1 image" in page.text_content("#pg-status")
        page.wait_for_selector("#usage-requests:text-is('1')")
        assert page.evaluate(CHART)[-1][1] == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for part in ("playground", "usage"):
            page.locator(f"#{part}").screenshot(path=str(tmp_path / f"{part}-{width}.png"))
        page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        page.screenshot(path=str(tmp_path / f"homepage-{width}.png"), full_page=True)
        assert not page.problems, page.problems


def test_stop_ends_a_stream_and_what_came_stays(browser, gw, fake_openai):
    fake_openai.reply_text = REPLY
    fake_openai.stream_events = 12
    fake_openai.stream_delay = 0.5
    with opened(browser, gw) as page:
        send(page, "gpt-5", "Tell me slowly")
        assert wait_for(lambda: page.text_content("#pg-output"), timeout=10)
        page.click("#pg-stop")
        finished(page, "stopped")
        part = page.text_content("#pg-output")
        assert part and REPLY.startswith(part) and part != REPLY
        assert "Stopped" in page.text_content("#pg-status")
        assert page.is_enabled("#pg-send") and not page.is_visible("#pg-stop")

        def counted() -> bool:                          # booked once the gateway saw it go
            page.click("#usage-refresh")
            page.wait_for_selector("#usage-refresh:enabled")
            return page.text_content("#usage-requests") == "1"
        assert wait_for(counted, timeout=10)
        assert not page.problems, page.problems


def test_a_429_shows_its_message_and_the_wait(browser, make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), rate_limit={"rpm": 1})
    with opened(browser, gw) as page:
        send(page, "gpt-5", "One")
        finished(page)
        page.click("#pg-send")
        finished(page, "limited")
        status = page.text_content("#pg-status")
        assert status.startswith("429 · Rate limit reached: 1 requests per minute")
        assert re.search(r"Wait \d+ s", status), status
        assert re.fullmatch(r"Send \(wait \d+ s\)", page.text_content("#pg-send"))
        assert page.is_disabled("#pg-send")
        page.click("#usage-refresh")
        page.wait_for_selector("#usage-refresh:enabled")
        assert page.text_content("#usage-requests") == "1"      # the 429 cost nothing
        assert only_failed_loads(page, 429)


def test_errors_show_the_envelopes_message(browser, gw, fake_openai):
    with opened(browser, gw) as page:
        send(page, "nokey-model", "Hello")             # a provider without its key: 503
        finished(page, "error")
        status, _, body = gw.post("/v1/chat/completions", {
            "model": "nokey-model", "messages": [{"role": "user", "content": "Hello"}]},
            key=page.text_content("#api-key").strip())
        assert status == 503
        assert page.text_content("#pg-status") == "503 · " + json.loads(body)["error"]["message"]
        fake_openai.reply_text = REPLY
        fake_openai.error_mid_stream_next(2)           # a stream that fails after it started
        status, _, raw = gw.post("/v1/chat/completions", {
            "model": "gpt-5", "stream": True,
            "messages": [{"role": "user", "content": "Hello again"}]}, key=MASTER_KEY)
        frames = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and "error" in json.loads(frames[-1])
        fake_openai.error_mid_stream_next(2)
        send(page, "gpt-5", "Hello again")
        finished(page, "error")
        assert page.text_content("#pg-status") == json.loads(frames[-1])["error"]["message"]
        assert page.text_content("#pg-output") and REPLY.startswith(
            page.text_content("#pg-output"))            # what came before the failure stays
        page.fill("#pg-prompt", "   ")                 # nothing to send
        page.click("#pg-send")
        assert page.text_content("#pg-status") == "Type a prompt first."
        assert only_failed_loads(page, 503)


# --------------------------------------------------------------------------- the usage panel
def test_the_usage_panel_matches_the_requests_made(browser, gw, fake_openai):
    key = gw.key_for()                                  # the browser's key (127.0.0.1)
    client = gw.sdk(key)
    fake_openai.reply_text = "Three words back."
    made = [client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": f"Question number {n}"}]).usage
        for n in range(2)]
    client.images.generate(model="gpt-image-1", prompt="a hive")
    with opened(browser, gw) as page:
        today, doc = usage_today(gw, key)
        assert today["requests"] == 3
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in made)
        assert today["prompt_tokens"] + today["completion_tokens"] == tokens
        assert page.text_content("#usage-requests") == "3"
        assert page.text_content("#usage-tokens") == str(tokens)
        prompt = sum(u.prompt_tokens for u in made)
        assert page.text_content("#usage-tokens-split") == f"{prompt} in · {tokens - prompt} out"
        left = doc["credits"]["remaining"]
        assert 0 < left < 200
        shown, _, limit = page.text_content("#usage-credits").partition(" of ")
        assert float(shown.replace(",", "")) == pytest.approx(left, abs=0.006)
        assert limit == "200"
        assert page.evaluate("document.getElementById('usage-meter').value") == \
            pytest.approx(left)
        assert page.evaluate("document.getElementById('usage-meter').max") == 200
        chart = page.evaluate(CHART)
        assert chart == [[d["date"], d["requests"]] for d in doc["data"]]
        assert [n for _, n in chart] == [0] * 6 + [3]
        assert "Today 3" in page.get_attribute("#usage-chart", "aria-label")

        client.chat.completions.create(model="gpt-5",
                                       messages=[{"role": "user", "content": "One more"}])
        page.click("#usage-refresh")                    # the Refresh button
        page.wait_for_selector("#usage-requests:text-is('4')")
        assert page.evaluate(CHART)[-1][1] == 4
        assert not page.problems, page.problems


def test_without_a_credit_limit_the_panel_says_so(browser, make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), rate_limit={"daily_credits": 0})
    with opened(browser, gw) as page:
        assert page.text_content("#usage-credits") == "No daily limit"
        assert not page.is_visible("#usage-meter")
        assert page.evaluate(CHART) and all(n == 0 for _, n in page.evaluate(CHART))
        assert not page.problems, page.problems
