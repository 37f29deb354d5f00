"""RequestLimits: the per-key bucket, the per-endpoint buckets and the daily credits, as
one check before a request runs (no server: real settings from a config on disk)."""
from __future__ import annotations

import pytest
import yaml

from apiarium.catalog import Credits, ModelSpec, ProviderSpec
from apiarium.config import load_config
from apiarium.errors import QuotaExceeded, RateLimited
from apiarium.metrics import Metrics
from apiarium.services.limits import RequestLimits
from apiarium.storage import KeyRecord
from apiarium.usage import Tally, UsageLedger


def settings(tmp_path, **rate_limit):
    (tmp_path / "apiarium.yaml").write_text(yaml.safe_dump(
        {"database": "db.sqlite3", "rate_limit": rate_limit}))
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"providers": {}, "models": {}}))
    return load_config(tmp_path / "apiarium.yaml").settings


def key(rpm: int | None = None, name: str = "k1") -> KeyRecord:
    return KeyRecord(1, name, "api-ab", "192.0.2.1", 0, 0, rpm)


def limits() -> RequestLimits:
    return RequestLimits(UsageLedger("unused.sqlite3"), Metrics())


def test_the_key_bucket_answers_429_with_the_wait_and_headers(tmp_path):
    s, lim = settings(tmp_path, rpm=3), limits()
    heads = [lim.admit(key(), "chat", s) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in heads] == ["2", "1", "0"]
    with pytest.raises(RateLimited) as exc:
        lim.admit(key(), "chat", s)
    assert exc.value.code == "rate_limit_exceeded"
    assert exc.value.headers["Retry-After"] == "20"            # 60 s / 3 a minute
    assert "3 requests per minute" in exc.value.message
    lim.admit(key(name="k2"), "chat", s)                        # another key: its own bucket
    assert [lim.admit(key(rpm=10, name="k3"), "chat", s) for _ in range(10)]   # its own rpm


def test_endpoint_limits_sit_on_top_of_the_key_bucket(tmp_path):
    s, lim = settings(tmp_path, rpm=100, endpoints={"videos": "2/hour"}), limits()
    lim.admit(key(), "videos", s)
    lim.admit(key(), "videos", s)
    with pytest.raises(RateLimited) as exc:
        lim.admit(key(), "videos", s)
    assert "2 videos requests per hour" in exc.value.message
    assert exc.value.headers["Retry-After"] == "1800"
    lim.admit(key(), "chat", s)                                  # other endpoints are free


def test_a_key_whose_day_is_spent_gets_insufficient_quota(tmp_path):
    s, lim = settings(tmp_path, rpm=100, daily_credits=5), limits()
    model = ModelSpec("m", ProviderSpec("p", "openai", "", ""), "m",
                      credits=Credits(per_1k_tokens=1000.0))
    lim.admit(key(), "chat", s)
    lim.usage.record("k1", model, Tally(requests=1, prompt_tokens=5))   # 5 credits
    with pytest.raises(QuotaExceeded) as exc:
        lim.admit(key(), "chat", s)
    assert exc.value.code == "insufficient_quota" and "midnight UTC" in exc.value.message
    assert settings(tmp_path, rpm=100, daily_credits=0).daily_credits == 0
    lim.admit(key(), "chat", settings(tmp_path, rpm=100, daily_credits=0))   # 0: unlimited
