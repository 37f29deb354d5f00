"""Retry hints and origins read off a provider's answers."""
from __future__ import annotations

import time
from email.utils import formatdate

from apiarium.providers.upstream_hints import origin, parse_duration, parse_retry_after


def test_retry_after_in_seconds_or_as_an_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0                   # never a wait in the past
    in_a_minute = parse_retry_after(formatdate(time.time() + 60, usegmt=True))
    assert in_a_minute is not None and 55 <= in_a_minute <= 60
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    for junk in (None, "", "soon", "Tue, 99 Foo"):
        assert parse_retry_after(junk) is None


def test_googles_durations():
    assert parse_duration("37s") == 37.0 and parse_duration(" 1.5s ") == 1.5
    for junk in (None, "", "37", "1m", 37, "s"):
        assert parse_duration(junk) is None


def test_origins_compare_scheme_host_and_port():
    assert origin("https://API.example.com/v1/x") == ("https", "api.example.com", 443)
    assert origin("http://example.com:8080/") == ("http", "example.com", 8080)
    assert origin("https://example.com/") != origin("https://example.com.evil.test/")
    assert origin("http://[::1") == ("", "", None)           # unparseable: nobody's
