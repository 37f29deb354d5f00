"""Exposure (issue 13.6), metrics: a client cannot mint Prometheus series with the model
names it sends, and /metrics answers only loopback (or ``metrics.allow_cidrs``) and the
holder of ``metrics.token``."""
from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import openai_models
from tests.support import error_of, request, wait_for

MASTER = "exposure-master-key-0123456789abcdefghij"
MSG = [{"role": "user", "content": "hi"}]
TOKEN = "metrics-token-0123456789abcdef"


def scrape(gw, ip: str = "127.0.0.1", headers: dict | None = None):
    return request(gw.url + "/metrics", headers=headers, ip=ip)


def test_junk_model_names_never_become_series(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER)
    junk = [f"junk-{i}-{'x' * i}" for i in range(45)]
    junk += ['evil"} 1\napiarium_keys 999', "ünïcode", "a b c"]
    for name in junk:
        status, _, _ = gw.post("/v1/chat/completions", {"model": name, "messages": MSG},
                               key=MASTER)
        assert status == 404
    for model in (["a", "list"], {"an": "object"}):          # not strings at all
        status, _, _ = gw.post("/v1/chat/completions", {"model": model, "messages": MSG},
                               key=MASTER)
        assert status in (400, 404)
    assert gw.post("/v1/chat/completions", {"model": "gpt-5", "messages": MSG},
                   key=MASTER)[0] == 200
    status, _, body = scrape(gw)
    assert status == 200
    text = body.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    models = {s.labels["model"] for s in fams["apiarium_requests"].samples}
    assert models == {"gpt-5", "unknown"}, models
    unknown = sum(s.value for s in fams["apiarium_requests"].samples
                  if s.labels["model"] == "unknown")
    assert unknown == 50
    for name in junk:
        assert name not in text
    assert "apiarium_keys 999" not in text
    # the access log shows the same label, and a name with a newline forges no log line
    assert wait_for(lambda: sum("model=unknown" in ln for ln in gw.log) >= 50, timeout=3)
    assert not [ln for ln in gw.log if ln.startswith("apiarium_keys")]
    assert not [ln for ln in gw.log if " model=" in ln and "model=junk" in ln]


def test_metrics_default_to_loopback_and_refuse_others(make_gateway, fake_openai):
    # loopback only by default: every test scrapes from 127.0.0.1 and still can; here the
    # gateway sits behind a (trusted) proxy on loopback, so a request it forwards from the
    # internet comes from the loopback socket and must still be refused
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER,
                      server={"trusted_proxies": ["127.0.0.1/32"]})
    assert scrape(gw)[0] == 200
    assert scrape(gw, ip="127.0.0.9")[0] == 200
    status, headers, body = scrape(gw, headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 403, body
    err = error_of(body)
    assert err["code"] == "metrics_forbidden" and headers["x-request-id"].startswith("req_")
    assert b"apiarium_requests" not in body
    # a token, when none is configured, opens nothing
    status, _, body = scrape(gw, headers={"X-Forwarded-For": "203.0.113.7",
                                          "Authorization": f"Bearer {TOKEN}"})
    assert status == 403


def test_metrics_cidrs_and_token(make_gateway, fake_openai):
    gw = make_gateway(openai_models(fake_openai), master_key=MASTER,
                      metrics={"allow_cidrs": ["127.0.0.1/32"], "token": TOKEN})
    assert scrape(gw, ip="127.0.0.1")[0] == 200
    status, _, body = scrape(gw, ip="127.0.0.41")
    assert status == 401 and error_of(body)["code"] == "missing_api_key"
    for wrong in ("Bearer nope", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN,
                  f"Bearer {MASTER}"):
        status, _, body = scrape(gw, ip="127.0.0.41", headers={"Authorization": wrong})
        assert status == 401, wrong
        assert b"apiarium_requests" not in body
    status, _, body = scrape(gw, ip="127.0.0.42", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b"apiarium_requests" in body
    # wrong tokens are guesses at a secret: four so far, six more spend the address's 10
    for _ in range(6):
        assert scrape(gw, ip="127.0.0.41", headers={"Authorization": "Bearer guess"})[0] == 401
    status, headers, body = scrape(gw, ip="127.0.0.41", headers={"Authorization":
                                                                 f"Bearer {TOKEN}"})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert error_of(body)["code"] == "too_many_failed_attempts"
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert scrape(gw, ip="127.0.0.42", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_metrics_settings_are_checked(tmp_path):
    from apiarium.config import ConfigError, load_config
    from tests.inprocess import write_config

    path = write_config(tmp_path, {"providers": {}, "models": {}},
                        metrics={"allow_cidrs": ["127.0.0.1/32", "not-a-net"], "token": "short"})
    try:
        load_config(path)
    except ConfigError as exc:
        text = str(exc)
    else:
        raise AssertionError("a bad metrics section was accepted")
    assert f"{path}:" in text and "metrics.allow_cidrs: 'not-a-net'" in text
    assert "metrics.token: 5 characters" in text
    s = load_config(write_config(tmp_path / "ok", {"providers": {}, "models": {}})).settings
    assert [str(n) for n in s.metrics_allow_cidrs] == ["127.0.0.0/8", "::1/128"]
    assert s.metrics_token == ""
