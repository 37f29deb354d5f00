"""Exposure (issue 13.6), the upstream side: an upstream's error texts (org ids, masked key
tails, account names) never reach a client, only the gateway's own words, or for a 4xx
about the request its message scrubbed of anything key-shaped; and the provider key goes
only to its base_url's origin, never along a redirect to another host."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from apiarium.logcontext import REQUEST_ID
from apiarium.redact import scrub
from tests.conftest import openai_models
from tests.fakes import FakeOpenAI, anthropic_error, google_error, openai_error
from tests.fakes.base import sse_event
from tests.support import error_of, request, wait_for

MASTER = "exposure-master-key-0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]
ORG = "org-Zx8Qm2LkP4vT"
TAIL = "sk-proj-********************kQ3w"
ACCOUNT = "acme-research-team"
LEAKS = (ORG, TAIL, "kQ3w", ACCOUNT, "sk-", "org-", "AIza", "key-")
# what upstreams say, with the account details they really put in
SAYS = {
    401: f"Incorrect API key provided: {TAIL}. You can find your API key at "
         f"https://platform.openai.com/account/api-keys.",
    403: f"Project `{ACCOUNT}` in organization {ORG} does not have access to model gpt-5",
    429: f"Rate limit reached for gpt-5 in organization {ORG} on tokens per min (TPM): "
         f"Limit 30000, Used 29950. Account: {ACCOUNT}.",
    500: f"The server had an error processing your request ({ORG}, {ACCOUNT}).",
    503: f"Engine overloaded for organization {ORG}.",
}
ABOUT_REQUEST = {
    400: f"Invalid value for 'temperature' (org {ORG}, key {TAIL}, "
         f"AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv, key-3ax6xnjp29jd6fds4gc3): 7 is above 2.",
    404: f"The model `gpt-x` does not exist or your organization {ORG} has no access to it.",
}


def post(gw, path: str, body: dict, **kw):
    return gw.post(path, body, key=MASTER, **kw)


def assert_clean(raw: bytes, *extra: str) -> None:
    text = raw.decode()
    for leak in (*LEAKS, *extra):
        assert leak not in text, (leak, text)


def catalog(fake_openai, **extra) -> dict:
    """The test catalog, its breakers off: these tests fail the upstream on purpose."""
    up = {"kind": "openai", "base_url": fake_openai.base_url, "api_key": fake_openai.api_key,
          "breaker_failures": 0}
    return openai_models(fake_openai, providers={"up": up, **extra.pop("providers", {})},
                         **extra)


@pytest.fixture
def gw(make_gateway, fake_openai):
    return make_gateway(catalog(fake_openai), master_key=MASTER)


@pytest.mark.parametrize("status", sorted(SAYS))
def test_account_details_of_upstream_errors_never_reach_the_client(gw, fake_openai, status):
    for stream in (False, True):
        fake_openai.fail_next(status, openai_error(SAYS[status], "server_error"))
        got, _, raw = post(gw, "/v1/chat/completions",
                           {"model": "gpt-5", "messages": MSG, "stream": stream})
        assert got in (429, 502, 503), raw
        err = error_of(raw)
        assert "`up`" in err["message"]
        assert_clean(raw)
    fake_openai.fail_next(status, openai_error(SAYS[status], "server_error"))
    got, _, raw = post(gw, "/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"})
    assert got in (429, 502, 503)
    assert_clean(raw)
    # the operator still learns what the upstream said: logged, with the request id
    line = wait_for(lambda: [ln for ln in gw.log if f"answered HTTP {status}:" in ln])
    assert line and " INFO " in line[0] and re.search(r"req_[0-9a-f]+ upstream `up`", line[0])
    assert ORG in line[0] or TAIL in line[0]
    assert fake_openai.api_key not in "\n".join(gw.log)


@pytest.mark.parametrize("status", sorted(ABOUT_REQUEST))
def test_errors_about_the_request_keep_their_message_scrubbed(gw, fake_openai, status):
    for path, body in (("/v1/chat/completions", {"model": "gpt-5", "messages": MSG}),
                       ("/v1/chat/completions", {"model": "gpt-5", "messages": MSG,
                                                 "stream": True}),
                       ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"})):
        fake_openai.fail_next(status, openai_error(ABOUT_REQUEST[status]))
        got, _, raw = post(gw, path, body)
        assert got == status, raw
        err = error_of(raw)
        assert_clean(raw)
        kept = "7 is above 2" if status == 400 else "does not exist or your organization"
        assert kept in err["message"] and "[redacted]" in err["message"], err


PROJECT, USER = "proj_Q7tXw2mB9cLk4Rz", "user-4fKq9ZmT2wXy7BnL1cVd8HsJ"
DOCS = {"openai": "https://platform.openai.com/docs/guides/error-codes",
        "anthropic": "https://docs.claude.com/en/api/errors",
        "gemini": "https://ai.google.dev/gemini-api/docs/troubleshooting"}


def test_account_ids_and_internal_urls_leave_an_upstream_400(make_gateway, fake_openai,
                                                             fake_anthropic, fake_gemini):
    """Issue 22, L6: OpenAI's org, project and user ids, the upstream's own (configured,
    internal) base_url, any other URL that is not the vendor's public site, and the query of
    one that is (a project number), never reach the client; the rest of the text does."""
    models = catalog(fake_openai, providers={
        "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key, "breaker_failures": 0},
        "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key, "breaker_failures": 0}},
        models={"claude-x": {"provider": "claude"}, "gem": {"provider": "google"}})
    gw = make_gateway(models, master_key=MASTER)

    def says(fake, kind: str) -> str:
        return (f"temperature: 7 is above 2 (organization {ORG}, project {PROJECT}, user "
                f"{USER}; from {fake.base_url}/chat/completions via "
                f"http://10.20.0.7:8000/v1/models and https://gw.corp.internal/ops, see "
                f"{DOCS[kind]}?project=5550123#limits).")
    cases = [("gpt-5", fake_openai, "openai", lambda t: openai_error(t)),
             ("claude-x", fake_anthropic, "anthropic",
              lambda t: anthropic_error("invalid_request_error", t)),
             ("gem", fake_gemini, "gemini", lambda t: google_error(400, "INVALID_ARGUMENT", t))]
    for model, fake, kind, envelope in cases:
        for stream in (False, True):
            fake.fail_next(400, envelope(says(fake, kind)))
            got, _, raw = post(gw, "/v1/chat/completions", {"model": model, "messages": MSG,
                                                            "stream": stream})
            message = error_of(raw)["message"]
            assert got == 400, raw
            assert_clean(raw, PROJECT, USER, "proj_", "user-4f", f":{fake.port}", "10.20.0.7",
                         "corp.internal", "5550123", "#limits")
            assert "temperature: 7 is above 2" in message, message
            assert f"see {DOCS[kind]})" in message, message    # the vendor's docs stay
            assert message.count("[redacted]") == 6, message


def test_scrub_keeps_only_the_vendors_public_urls():
    from apiarium.providers.openai import OpenAIProvider
    public = OpenAIProvider.public_hosts
    text = ("see https://api.openai.com/v1/models?x=1, https://platform.openai.com/docs. "
            "Not http://api.openai.com/v1, https://api.openai.com:8443/v1, "
            "https://me:pw@api.openai.com/v1, https://api.openai.com.evil.example/v1, "
            "http://localhost:8000/v1 nor vllm://x; user-provided values and user_ids stay")
    out = scrub(text, public_hosts=public)
    assert out == ("see https://api.openai.com/v1/models, https://platform.openai.com/docs. "
                   "Not [redacted], [redacted], [redacted], [redacted], [redacted] nor "
                   "[redacted]; user-provided values and user_ids stay"), out
    # a self-hosted upstream's texts: every URL is internal, its own base_url too
    assert scrub("at https://api.openai.com/v1", public_hosts=()) == "at [redacted]"


def test_other_dialects_and_providers_get_the_same_treatment(make_gateway, fake_openai,
                                                             fake_anthropic, fake_gemini):
    models = catalog(fake_openai, providers={
        "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key, "breaker_failures": 0},
        "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                   "api_key": fake_gemini.api_key, "breaker_failures": 0}},
        models={"claude-x": {"provider": "claude"}, "gem": {"provider": "google"},
                "gem-image": {"provider": "google", "type": "image"}})
    gw = make_gateway(models, master_key=MASTER)
    # Anthropic: a rate limit naming the org, before the stream and as its first event
    fake_anthropic.fail_next(429, anthropic_error("rate_limit_error", SAYS[429]))
    got, _, raw = post(gw, "/v1/messages", {"model": "claude-x", "max_tokens": 10,
                                            "messages": MSG})
    assert got == 429 and json.loads(raw)["type"] == "error"
    assert_clean(raw)
    fake_anthropic._push(None, kind="error", after=0, frame=sse_event("error", {
        "type": "error", "error": {"type": "overloaded_error", "message": SAYS[503]}}))
    got, _, raw = post(gw, "/v1/chat/completions", {"model": "claude-x", "messages": MSG,
                                                    "stream": True})
    assert got in (200, 503) and (b"error" in raw), raw
    assert_clean(raw)
    # Gemini: chat, a stream, and an image
    for body, path in (({"model": "gem", "messages": MSG}, "/v1/chat/completions"),
                       ({"model": "gem", "messages": MSG, "stream": True},
                        "/v1/chat/completions"),
                       ({"model": "gem", "input": "hi"}, "/v1/responses"),
                       ({"model": "gem-image", "prompt": "x"}, "/v1/images/generations")):
        fake_gemini.fail_next(403, google_error(403, "PERMISSION_DENIED", SAYS[403]))
        got, _, raw = post(gw, path, body)
        assert got == 502, raw
        assert_clean(raw)


def test_the_request_id_reaches_log_lines_of_each_request_only():
    async def one(rid: str) -> str:
        REQUEST_ID.set(rid)                  # as ApiHandler.prepare does, in its own task
        await asyncio.sleep(0.01)
        return REQUEST_ID.get()

    async def both() -> list[str]:
        return await asyncio.gather(one("req_a"), one("req_b"))
    assert asyncio.run(both()) == ["req_a", "req_b"]
    assert REQUEST_ID.get() == "-"           # outside any request


def test_scrub_removes_every_key_shape():
    text = (f"{ABOUT_REQUEST[400]} sk-ant-api03-AbC_dEf-123 Bearer abcdefghijklmnop "
            f"sk-...wxyz 'org-abc' the provider-key-rotation docs")
    out = scrub(text, "my-own-provider-secret")
    for leak in ("sk-", "org-", "AIza", "key-3ax", "abcdefghijklmnop", "wxyz"):
        assert leak not in out, (leak, out)
    assert "7 is above 2" in out and "provider-key-rotation" in out
    assert scrub("x my-own-provider-secret y", "my-own-provider-secret") == "x [redacted] y"


# ---------------------------------------------------------------------------- redirects

@pytest.fixture
def elsewhere():
    """A second upstream on another port: another origin, which must never see a key."""
    with FakeOpenAI(api_key="not-this-one") as other:
        yield other


def test_a_redirect_to_another_host_never_carries_the_key(gw, fake_openai, elsewhere):
    for path, body in (("/v1/chat/completions", {"model": "gpt-5", "messages": MSG}),
                       ("/v1/chat/completions", {"model": "gpt-5", "messages": MSG,
                                                 "stream": True}),
                       ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"})):
        for code in (301, 302, 303, 307, 308):
            fake_openai.fail_next(code, b"", headers={
                "Location": f"{elsewhere.root}/v1/chat/completions"})
            got, _, raw = post(gw, path, body)
            assert got == 502, raw
            assert error_of(raw)["code"] == "upstream_error"
            assert elsewhere.root.encode() not in raw
    # a POST is never replayed elsewhere (neither the key nor the client's prompt travel)
    assert elsewhere.requests == []


def test_a_video_download_follows_redirects_without_the_key_off_origin(make_gateway,
                                                                       fake_gemini,
                                                                       elsewhere):
    fake_gemini.veo_polls_until_done = 0
    gw = make_gateway({
        "providers": {"google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                                 "api_key": fake_gemini.api_key, "poll_interval_s": 0.05}},
        "models": {"veo-3": {"provider": "google", "type": "video"}}}, master_key=MASTER)
    # the download answers 302 to another origin (a CDN, or an attacker's host)
    elsewhere.fail_next(200, fake_gemini.video_bytes, headers={"Content-Type": "video/mp4"})
    fake_gemini.fail_next(302, b"", headers={"Location": f"{elsewhere.root}/cdn/video.mp4"},
                          path_contains=":download")
    got, _, raw = post(gw, "/v1/videos/generations", {"model": "veo-3", "prompt": "a boat",
                                                       "duration_seconds": 4})
    assert got == 200, raw
    status, _, data = request(json.loads(raw)["data"][0]["url"])
    assert status == 200 and data == fake_gemini.video_bytes
    (fetched,) = elsewhere.requests
    assert fetched.path == "/cdn/video.mp4"
    assert fake_gemini.api_key not in json.dumps(fetched.headers)
    assert not {"x-goog-api-key", "authorization"} & set(fetched.headers)
    # on its own origin the key is still sent (the fake's download needs it, and 302s to
    # its own /blob, which the ordinary video path goes through)
    got, _, raw = post(gw, "/v1/videos/generations", {"model": "veo-3", "prompt": "again",
                                                       "duration_seconds": 4})
    assert got == 200, raw
    download = [r for r in fake_gemini.requests if ":download" in r.path][-1]
    assert download.headers.get("x-goog-api-key") == fake_gemini.api_key
