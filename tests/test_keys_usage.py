"""GET /v1/keys/me/usage (apiarium/handlers/usage.py): the caller's key's usage per UTC day,
every day of the range present, matching the requests made (pending and stored alike), its
credits left; ``days`` checked; the master key's own usage; the lookups bucket."""
from __future__ import annotations

import asyncio
import datetime
import json

import pytest

from apiarium.errors import InvalidRequest
from apiarium.handlers.usage import DEFAULT_DAYS, MAX_DAYS, dates_until, parse_days
from apiarium.storage import UsageRow, open_storage
from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of

PATH = "/v1/keys/me/usage"
DAY_FIELDS = {"date", "requests", "prompt_tokens", "completion_tokens", "images",
              "video_seconds", "credits"}


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def usage_of(gw, key: str, ip: str, query: str = "") -> dict:
    status, headers, body = gw.get(PATH + query, key=key, ip=ip)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    return json.loads(body)


@pytest.fixture
def gw(make_gateway, fake_openai):
    return make_gateway(openai_models(fake_openai), rate_limit={"rpm": 100})


def test_the_days_are_counted_back_from_today_and_checked():
    assert dates_until("2026-03-01", 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert dates_until("2024-01-01", 1) == ["2024-01-01"]
    assert parse_days("1") == 1 and parse_days(str(MAX_DAYS)) == MAX_DAYS
    for bad in ("0", "91", "-1", "1.5", "seven", "", "٣", "+7"):
        with pytest.raises(InvalidRequest) as caught:
            parse_days(bad)
        assert caught.value.param == "days" and "from 1 to 90" in caught.value.message


def test_a_new_key_sees_seven_days_of_zeros_ending_today(gw):
    ip = "127.0.11.1"
    key = gw.key_for(ip)
    before = utc_today()
    doc = usage_of(gw, key, ip)
    assert set(doc) == {"object", "data", "credits"} and doc["object"] == "list"
    assert len(doc["data"]) == DEFAULT_DAYS
    last = datetime.date.fromisoformat(doc["data"][-1]["date"])
    assert last in (before, utc_today())
    assert [d["date"] for d in doc["data"]] == [
        (last - datetime.timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    for day in doc["data"]:
        assert set(day) == DAY_FIELDS
        assert {k: v for k, v in day.items() if k != "date"} == dict.fromkeys(
            DAY_FIELDS - {"date"}, 0)
    assert doc["credits"] == {"daily_limit": 200, "remaining": 200}


def test_the_usage_matches_the_requests_made_before_and_after_they_are_stored(gw,
                                                                             fake_openai):
    ip = "127.0.11.2"
    key = gw.key_for(ip)
    client = gw.sdk(key, ip=ip)
    fake_openai.reply_text = "Four words come back."
    first = client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Count these five words please"}])
    streamed = list(client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Stream it"}], stream=True,
        stream_options={"include_usage": True}))
    second = streamed[-1].usage
    client.images.generate(model="gpt-image-1", prompt="a bee", n=2)
    gw.key_for("127.0.11.3")                          # another key's usage stays its own
    gw.sdk(gw.key_for("127.0.11.3"), ip="127.0.11.3").chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Not yours"}])

    def check(doc: dict) -> None:
        today = doc["data"][-1]
        assert today["requests"] == 3
        assert today["prompt_tokens"] == first.usage.prompt_tokens + second.prompt_tokens
        assert today["completion_tokens"] == (first.usage.completion_tokens
                                              + second.completion_tokens)
        assert today["images"] == 2 and today["video_seconds"] == 0
        assert today["credits"] > 0
        assert doc["credits"]["remaining"] == pytest.approx(200 - today["credits"], abs=1e-3)
        assert all(d["requests"] == 0 for d in doc["data"][:-1])

    pending = usage_of(gw, key, ip)                   # counted in memory, not yet written
    check(pending)
    gw.restart()                                      # written at the stop: read back once
    stored = usage_of(gw, key, ip)
    check(stored)
    assert stored["data"] == pending["data"]
    me = json.loads(gw.get("/v1/keys/me", ip=ip)[2])
    assert me["usage"]["requests"] == 3 and me["credits"] == stored["credits"]


def test_stored_days_appear_in_their_place_and_the_range_follows_days(gw):
    ip = "127.0.11.4"
    key = gw.key_for(ip)
    gw.stop()
    today = utc_today()
    old = (today - datetime.timedelta(days=3)).isoformat()
    far = (today - datetime.timedelta(days=MAX_DAYS + 5)).isoformat()

    async def seed() -> None:
        storage = await open_storage(gw.dir.parent / "data" / "apiarium.sqlite3")
        try:
            [rec] = await storage.keys.find(ip=ip)
            await storage.usage.add([UsageRow(rec.key_hash, old, 5, 50, 60, 1, 8, 3.25),
                                     UsageRow(rec.key_hash, far, requests=9)])
        finally:
            await storage.close()
    asyncio.run(seed())
    gw.start()
    week = usage_of(gw, key, ip)["data"]
    assert week[-4] == {"date": old, "requests": 5, "prompt_tokens": 50,
                        "completion_tokens": 60, "images": 1, "video_seconds": 8,
                        "credits": 3.25}
    assert sum(d["requests"] for d in week) == 5
    assert usage_of(gw, key, ip, "?days=3")["data"][0]["date"] == (
        today - datetime.timedelta(days=2)).isoformat()
    assert [d["date"] for d in usage_of(gw, key, ip, "?days=1")["data"]] == [
        week[-1]["date"]]
    everything = usage_of(gw, key, ip, f"?days={MAX_DAYS}")["data"]
    assert len(everything) == MAX_DAYS and sum(d["requests"] for d in everything) == 5


@pytest.mark.parametrize("query", ["?days=0", "?days=91", "?days=-3", "?days=abc",
                                   "?days=2.5", "?days="])
def test_a_bad_days_is_a_400_naming_it(gw, query):
    ip = "127.0.11.5"
    status, _, body = gw.get(PATH + query, key=gw.key_for(ip), ip=ip)
    assert status == 400
    err = error_of(body)
    assert err["param"] == "days" and err["code"] == "invalid_request"
    assert "`days` must be a whole number from 1 to 90" in err["message"]


def test_the_master_key_sees_its_own_usage_and_no_limit(gw):
    status, _, _ = gw.post("/v1/chat/completions", {
        "model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, key=MASTER_KEY,
        ip="127.0.11.6")
    assert status == 200
    doc = usage_of(gw, MASTER_KEY, "127.0.11.6")
    assert doc["data"][-1]["requests"] == 1
    assert doc["credits"] == {"daily_limit": None, "remaining": None}
    ip = "127.0.11.7"
    assert usage_of(gw, gw.key_for(ip), ip)["data"][-1]["requests"] == 0


def test_it_takes_a_key_from_its_own_address_and_the_lookups_bucket(make_gateway,
                                                                    fake_openai):
    gw = make_gateway(openai_models(fake_openai),
                      rate_limit={"rpm": 1, "lookups_per_minute": 2})
    ip = "127.0.11.8"
    key = gw.key_for(ip)
    status, _, body = gw.get(PATH, ip=ip)
    assert status == 401 and error_of(body)["code"] == "missing_api_key"
    status, _, body = gw.get(PATH, key=key, ip="127.0.11.9")
    assert status == 401 and error_of(body)["code"] == "ip_mismatch"
    usage_of(gw, key, ip)
    usage_of(gw, key, ip)
    status, headers, body = gw.get(PATH, key=key, ip=ip)
    assert status == 429 and "lookups" in error_of(body)["message"]
    assert int(headers["retry-after"]) >= 1
    status, _, _ = gw.post("/v1/chat/completions", {       # the request bucket is untouched
        "model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, key=key, ip=ip)
    assert status == 200
