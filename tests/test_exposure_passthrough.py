"""Exposure (issue 22, M2 M3 L7): what a request passed through to its upstream may ask for.

A model allows hosted tools, premium tiers, ``anthropic-beta`` flags and Messages fields one
by one (``models.<alias>.allow``); anything else is a 400 naming it, in the dialect's envelope,
for issued keys and the master key, on native and translated models alike.  Files of the
gateway's own account are never reachable.  What is allowed is charged from what the upstream
reports: each hosted tool call at its price, a premium tier at its multiplier, the 1-hour cache
at twice the input price; the credit hold covers the worst case, and an image_generation tool
counts against the images limits.  Against a real gateway and the fakes, on 127.0.4.x."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiarium.config import ConfigError, load_config
from apiarium.config_pricing import ANTHROPIC_LONG_CONTEXT
from apiarium.passthrough import family
from apiarium.usage import Tally, price
from tests.conftest import kinds_providers
from tests.inprocess import write_config
from tests.support import MASTER_KEY

PRICE = {"input": 1.0, "output": 2.0}            # credits per 1k tokens, everywhere here
ANTHROPIC = {"anthropic-version": "2023-06-01"}
# what Claude Code 2.1.197 sends on every request (agent-clients.md 2.2; a gateway alias
# as its model: no context-1m)
CLAUDE_CODE_BETAS = ("claude-code-20250219,interleaved-thinking-2025-05-14,"
                     "thinking-token-count-2026-05-13,context-management-2025-06-27,"
                     "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
                     "effort-2025-11-24")


def catalog(fake_openai, fake_anthropic, fake_gemini) -> dict:
    return {
        "providers": kinds_providers(fake_openai, fake_anthropic, fake_gemini),
        "models": {
            "gpt": {"provider": "oa", "upstream": "gpt-5", "credits": PRICE},
            "gpt-tools": {
                "provider": "oa", "upstream": "gpt-5",
                "allow": {"tools": ["web_search", "image_generation", "code_interpreter"],
                          "service_tiers": ["priority", "flex"]},
                "credits": {**PRICE, "tools": {"web_search": 1, "image_generation": 4,
                                               "code_interpreter": 3},
                            "service_tier": {"priority": 2, "flex": 0.5}}},
            "claude": {"provider": "an", "upstream": "claude-sonnet-4-5", "credits": PRICE},
            "claude-tools": {
                "provider": "an", "upstream": "claude-sonnet-4-5",
                "allow": {"tools": ["web_search", "web_fetch", "code_execution"],
                          "anthropic_beta": ["context-1m"], "service_tiers": ["fast"],
                          "fields": ["cache_control.ttl", "inference_geo"]},
                "credits": {**PRICE, "tools": {"web_search": 1, "web_fetch": 0.5,
                                               "code_execution": 2},
                            "service_tier": {"fast": 6}}},
            "gem": {"provider": "go", "upstream": "gemini-2.5-flash", "credits": PRICE},
            "gpt-image-1": {"provider": "oa", "type": "image"},
        },
    }


@pytest.fixture
def gw(make_gateway, fake_openai, fake_anthropic, fake_gemini):
    return make_gateway(catalog(fake_openai, fake_anthropic, fake_gemini),
                        rate_limit={"rpm": 1000, "daily_credits": 10_000},
                        limits={"max_tool_calls": 5, "max_images": 2})


def post(gw, path: str, body: dict, ip: str, key: str | None = None,
         beta: str | None = None) -> tuple[int, dict]:
    headers = dict(ANTHROPIC) if path.startswith("/v1/messages") else {}
    if beta:
        headers["anthropic-beta"] = beta
    status, _, raw = gw.post(path, body, key=key or gw.key_for(ip), ip=ip, headers=headers)
    return status, json.loads(raw)


def usage(gw, ip: str) -> dict:
    return json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]


def upstreams(*fakes) -> list:
    return [r for f in fakes for r in f.requests]


# ---------------------------------------------------------------------- Responses: refused
FN = {"type": "function", "name": "lookup", "parameters": {"type": "object"}, "strict": False}
CALL = {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"}
REFUSED_RESPONSES = [
    ({"tools": [FN, {"type": "image_generation"}]}, "tools[1]"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0]"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://mcp.example",
                 "require_approval": "never"}]}, "tools[0]"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_operator"]}]}, "tools[0]"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1024, "display_height": 768,
                 "environment": "browser"}]}, "tools[0]"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"service_tier": "scale"}, "service_tier"),
    ({"input": [CALL, {"type": "function_call_output", "call_id": "c1", "output": [
        {"type": "input_text", "text": "see the file"},
        {"type": "input_file", "file_id": "file-operator"}]}]}, "input[1].output[1].file_id"),
    ({"input": [CALL, {"type": "function_call_output", "call_id": "c1", "output": [
        {"type": "input_image", "file_id": "file-operator"}]}]}, "input[1].output[0].file_id"),
    ({"input": [{"type": "computer_call_output", "call_id": "c2", "output": {
        "type": "computer_screenshot", "file_id": "file-operator"}}]}, "input[0].output.file_id"),
]


@pytest.mark.parametrize("who", ["key", "master"])
@pytest.mark.parametrize("extra, param", REFUSED_RESPONSES,
                         ids=[p for _, p in REFUSED_RESPONSES])
def test_responses_native_refuses_what_the_model_does_not_allow(gw, fake_openai, who, extra,
                                                                param):
    ip = "127.0.4.1"
    body = {"model": "gpt", "input": "hi", **extra}
    status, answer = post(gw, "/v1/responses", body, ip, MASTER_KEY if who == "master" else None)
    assert status == 400, answer
    err = answer["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert "`gpt`" in err["message"] or "file" in err["message"], err
    assert fake_openai.requests == []


@pytest.mark.parametrize("extra, param", [REFUSED_RESPONSES[0], REFUSED_RESPONSES[5],
                                          *REFUSED_RESPONSES[8:]],
                         ids=["image_generation", "priority", "tool-file", "tool-image",
                              "screenshot"])
def test_responses_translated_refuses_the_same_by_the_same_path(gw, fake_gemini, extra, param):
    status, answer = post(gw, "/v1/responses", {"model": "gem", "input": "hi", **extra},
                          "127.0.4.2")
    assert status == 400 and answer["error"]["param"] == param, answer
    assert fake_gemini.requests == []


def test_codex_optional_tools_are_left_out_where_not_allowed(gw, fake_openai):
    """web_search (Codex declares it on every turn) is left out, not refused; Codex's client
    tool_search is not hosted and passes."""
    tools = [FN, {"type": "web_search", "external_web_access": True},
             {"type": "tool_search", "execution": "client"}]
    status, answer = post(gw, "/v1/responses", {"model": "gpt", "input": "hi",
                                                "tools": tools}, "127.0.4.3")
    assert status == 200, answer
    sent = fake_openai.last().json
    assert sent["tools"] == [FN, {"type": "tool_search", "execution": "client"}]
    assert "max_tool_calls" not in sent                  # no hosted tool went upstream


# ---------------------------------------------------------------------- Messages: refused
def block_doc(source: dict) -> dict:
    return {"type": "document", "source": source}


USER = {"role": "user", "content": [{"type": "text", "text": "Summarise this."}]}
REFUSED_MESSAGES = [
    ({"messages": [{"role": "user", "content": [
        block_doc({"type": "file", "file_id": "file_operator"})]}]},
     None, "messages[0].content[0].source.file_id"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "unpack it"},
        {"type": "container_upload", "file_id": "file_operator"}]}]},
     None, "messages[0].content[1].file_id"),
    ({"messages": [USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "get", "input": {"file_id": "mine"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "file_operator"}}]}]}]},
     None, "messages[2].content[0].content[0].source.file_id"),
    ({"container": {"id": "cntr_operator", "skills": [
        {"type": "custom", "skill_id": "skill_operator"}]}}, None, "container"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, None,
     "mcp_servers"),
    ({"inference_geo": "us"}, None, "inference_geo"),
    ({"speed": "fast"}, None, "speed"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, None, "tools[0]"),
    ({"tools": [{"name": "get", "input_schema": {"type": "object"}},
                {"type": "web_fetch_20250910", "name": "web_fetch"}]}, None, "tools[1]"),
    ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}, None,
     "tools[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
     None, "messages[0].content[0].cache_control.ttl"),
    ({"system": [{"type": "text", "text": "Be brief.",
                  "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
     None, "system[0].cache_control.ttl"),
    ({"cache_control": {"type": "ephemeral", "ttl": "1h"}}, None, "cache_control.ttl"),
    ({}, "files-api-2025-04-14", "files-api-2025-04-14"),
    ({}, "skills-2025-10-02", "skills-2025-10-02"),
    ({}, f"{CLAUDE_CODE_BETAS},mcp-client-2025-04-04", "mcp-client-2025-04-04"),
    ({}, "code-execution-2025-08-25", "code-execution-2025-08-25"),
    ({}, "context-1m-2025-08-07", "context-1m-2025-08-07"),
]


@pytest.mark.parametrize("model", ["claude", "gem"])
@pytest.mark.parametrize("who", ["key", "master"])
@pytest.mark.parametrize("extra, beta, named", REFUSED_MESSAGES,
                         ids=[n for _, _, n in REFUSED_MESSAGES])
def test_messages_refuses_what_the_model_does_not_allow(gw, fake_anthropic, fake_gemini, model,
                                                        who, extra, beta, named):
    body = {"model": model, "max_tokens": 100, "messages": [USER], **extra}
    status, answer = post(gw, "/v1/messages", body, "127.0.4.4",
                          MASTER_KEY if who == "master" else None, beta=beta)
    assert status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    message = answer["error"]["message"]
    assert f"`{named}`" in message, message           # Anthropic's envelope has no param
    if beta:
        assert "anthropic-beta" in message
    assert upstreams(fake_anthropic, fake_gemini) == []


def test_count_tokens_refuses_the_same(gw, fake_anthropic):
    body = {"model": "claude", "messages": [{"role": "user", "content": [
        block_doc({"type": "file", "file_id": "file_operator"})]}]}
    status, answer = post(gw, "/v1/messages/count_tokens", body, "127.0.4.5")
    assert status == 400 and "source.file_id" in answer["error"]["message"], answer
    status, answer = post(gw, "/v1/messages/count_tokens", {**body, "messages": [USER]},
                          "127.0.4.5", beta="files-api-2025-04-14")
    assert status == 400 and "files-api-2025-04-14" in answer["error"]["message"], answer
    assert fake_anthropic.requests == []


def test_claude_codes_own_flags_and_fields_pass_as_sent(gw, fake_anthropic):
    body = {"model": "claude", "max_tokens": 2000, "messages": [USER],
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2"},
                       {"type": "text", "text": "You are Claude Code.",
                        "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "metadata": {"user_id": "{\"session_id\": \"s\"}"}, "stream": True}
    status, _, raw = gw.post("/v1/messages", body, key=gw.key_for("127.0.4.6"), ip="127.0.4.6",
                             headers={**ANTHROPIC, "anthropic-beta": CLAUDE_CODE_BETAS})
    assert status == 200, raw
    assert b"event: message_stop" in raw
    sent = fake_anthropic.last()
    assert sent.headers["anthropic-beta"] == CLAUDE_CODE_BETAS
    assert sent.json["system"] == body["system"]


def test_what_a_model_allows_passes(gw, fake_anthropic):
    body = {"model": "claude-tools", "max_tokens": 100, "messages": [USER],
            "inference_geo": "us", "speed": "fast",
            "system": [{"type": "text", "text": "Be brief.",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    status, answer = post(gw, "/v1/messages", body, "127.0.4.7", beta="context-1m-2025-08-07")
    assert status == 200, answer
    sent = fake_anthropic.last()
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert sent.json["inference_geo"] == "us" and sent.json["speed"] == "fast"


# ---------------------------------------------------------------------- charged per call
def tokens_cost(u: dict) -> float:
    """What the Responses ``usage`` ``u`` costs at PRICE."""
    return (u["input_tokens"] * PRICE["input"] + u["output_tokens"] * PRICE["output"]) / 1000


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_allowed_hosted_tool_is_charged_per_call(gw, fake_openai, stream):
    ip = "127.0.4.10" if stream else "127.0.4.11"
    fake_openai.hosted_calls = ["web_search_call", "web_search_call", "code_interpreter_call"]
    body = {"model": "gpt-tools", "input": "search twice, compute once", "stream": stream,
            "tools": [{"type": "web_search"},
                      {"type": "code_interpreter", "container": {"type": "auto"}}]}
    status, _, raw = gw.post("/v1/responses", body, key=gw.key_for(ip), ip=ip)
    assert status == 200, raw
    final = events(raw)[-1]["response"] if stream else json.loads(raw)
    assert [i["type"] for i in final["output"]][:3] == fake_openai.hosted_calls
    sent = fake_openai.last().json
    assert sent["tools"] == body["tools"] and sent["max_tool_calls"] == 5   # limits.max_tool_calls
    spent = usage(gw, ip)
    assert spent["tool_calls"] == 3
    assert spent["credits"] == pytest.approx(tokens_cost(final["usage"]) + 2 * 1 + 3, abs=1e-4)


def anthropic_cost(u: dict) -> float:
    """What the Anthropic ``usage`` ``u`` costs at PRICE (no cache here)."""
    return (u["input_tokens"] * PRICE["input"] + u["output_tokens"] * PRICE["output"]) / 1000


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_allowed_server_tools_are_charged_per_call(gw, fake_anthropic, stream):
    ip = "127.0.4.12" if stream else "127.0.4.13"
    fake_anthropic.server_tools = {"web_search": 2, "bash_code_execution": 1}
    body = {"model": "claude-tools", "max_tokens": 300, "messages": [USER], "stream": stream,
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 50},
                      {"type": "code_execution_20250825", "name": "code_execution"}]}
    status, _, raw = gw.post("/v1/messages", body, key=gw.key_for(ip), ip=ip, headers=ANTHROPIC)
    assert status == 200, raw
    if stream:
        got = events(raw)
        used = {**got[0]["message"]["usage"],
                **next(e for e in got if e["type"] == "message_delta")["usage"]}
        assert sum(e.get("content_block", {}).get("type") == "server_tool_use"
                   for e in got) == 3
    else:
        used = json.loads(raw)["usage"]
    assert used["server_tool_use"]["web_search_requests"] == 2
    sent = fake_anthropic.last().json
    assert sent["tools"][0]["max_uses"] == 5                  # at most limits.max_tool_calls
    spent = usage(gw, ip)
    assert spent["tool_calls"] == 3
    assert spent["credits"] == pytest.approx(anthropic_cost(used) + 2 * 1 + 1 * 2, abs=1e-4)


# ---------------------------------------------------------------------- premium tiers
@pytest.mark.parametrize("tier, factor", [("priority", 2.0), ("flex", 0.5), ("auto", 1.0)])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_premium_tier_costs_its_multiplier(gw, fake_openai, tier, factor, stream):
    ip = "127.0.4.20"
    body = {"model": "gpt-tools", "input": "hello there bees", "service_tier": tier,
            "stream": stream}
    status, _, raw = gw.post("/v1/responses", body, key=gw.key_for(ip), ip=ip)
    assert status == 200, raw
    final = events(raw)[-1]["response"] if stream else json.loads(raw)
    assert final["service_tier"] == ("default" if tier == "auto" else tier)
    assert usage(gw, ip)["credits"] == pytest.approx(tokens_cost(final["usage"]) * factor,
                                                     abs=1e-4)


def test_chat_completions_take_the_same_tiers(gw, fake_openai):
    ip = "127.0.4.30"
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
            "service_tier": "priority"}
    status, answer = post(gw, "/v1/chat/completions", chat, ip)
    assert status == 400 and answer["error"]["param"] == "service_tier", answer
    assert fake_openai.requests == []
    status, answer = post(gw, "/v1/chat/completions", {**chat, "model": "gpt-tools"}, ip)
    assert status == 200 and answer["service_tier"] == "priority", answer
    u = answer["usage"]
    cost = (u["prompt_tokens"] * PRICE["input"] + u["completion_tokens"] * PRICE["output"]) / 1000
    assert usage(gw, ip)["credits"] == pytest.approx(2 * cost, abs=1e-4)


def test_anthropic_fast_mode_costs_its_multiplier(gw, fake_anthropic):
    ip = "127.0.4.31"
    body = {"model": "claude-tools", "max_tokens": 100, "messages": [USER], "speed": "fast"}
    status, answer = post(gw, "/v1/messages", body, ip)
    assert status == 200 and answer["usage"]["speed"] == "fast", answer
    assert usage(gw, ip)["credits"] == pytest.approx(6 * anthropic_cost(answer["usage"]),
                                                     abs=1e-4)


# ---------------------------------------------------------------------- cache writes (L7)
LONG = " ".join(f"word{i}" for i in range(400))         # 400 tokens to the fake


@pytest.mark.parametrize("model, ttl, factor", [("claude", None, 1.25),
                                                ("claude-tools", "1h", 2.0)])
def test_cache_writes_cost_what_anthropic_charges(gw, fake_anthropic, model, ttl, factor):
    ip = "127.0.4.32" if ttl else "127.0.4.33"
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    body = {"model": model, "max_tokens": 100, "messages": [
        {"role": "user", "content": [{"type": "text", "text": LONG, "cache_control": control}]}]}
    status, answer = post(gw, "/v1/messages", body, ip)
    assert status == 200, answer
    u = answer["usage"]
    assert u["cache_creation_input_tokens"] == 400
    assert u["cache_creation"]["ephemeral_1h_input_tokens"] == (400 if ttl else 0)
    written = 400 * factor * PRICE["input"] / 1000          # 0.5 (5 minutes) or 0.8 (1 hour)
    spent = usage(gw, ip)
    assert spent["cache_write_tokens"] == 400
    assert spent["cache_write_1h_tokens"] == (400 if ttl else 0)
    assert spent["credits"] == pytest.approx(written + anthropic_cost(u), abs=1e-4)


# ---------------------------------------------------------------------- images and holds
def test_image_generation_counts_against_the_images_limits(make_gateway, fake_openai,
                                                          fake_anthropic, fake_gemini):
    gw = make_gateway(catalog(fake_openai, fake_anthropic, fake_gemini),
                      rate_limit={"rpm": 1000, "endpoints": {"images": "1/hour"}},
                      limits={"max_images": 2})
    ip = "127.0.4.40"
    fake_openai.hosted_calls = ["image_generation_call"]
    body = {"model": "gpt-tools", "input": "paint a bee", "tools": [{"type": "image_generation"}]}
    status, answer = post(gw, "/v1/responses", body, ip)
    assert status == 200, answer
    assert fake_openai.last().json["max_tool_calls"] == 2         # limits.max_images
    spent = usage(gw, ip)
    assert spent["tool_calls"] == 1
    assert spent["credits"] == pytest.approx(tokens_cost(answer["usage"]) + 4, abs=1e-4)
    sent = len(fake_openai.requests)
    status, answer = post(gw, "/v1/responses", body, ip)          # the hour's image is made
    assert status == 429 and "images" in answer["error"]["message"], answer
    status, answer = post(gw, "/v1/images/generations", {"model": "gpt-image-1",
                                                         "prompt": "a bee"}, ip)
    assert status == 429, answer                                    # one bucket for both
    assert len(fake_openai.requests) == sent
    status, answer = post(gw, "/v1/responses", {**body, "tools": [{"type": "web_search"}]}, ip)
    assert status == 200, answer                                    # no image: not counted


def test_the_hold_covers_the_allowed_tools_worst_case(make_gateway, fake_openai,
                                                      fake_anthropic, fake_gemini):
    gw = make_gateway(catalog(fake_openai, fake_anthropic, fake_gemini),
                      rate_limit={"rpm": 1000, "daily_credits": 5},
                      limits={"max_tool_calls": 5, "max_images": 2})
    ip = "127.0.4.41"
    plain = {"model": "gpt-tools", "input": "hi", "max_output_tokens": 100}
    cases = [({"tools": [{"type": "image_generation"}]}, 429),   # 4 x 2 images + tokens > 5
             ({"tools": [{"type": "web_search"}]}, 429),         # 1 x 5 calls + tokens > 5
             ({"tools": [{"type": "web_search"}], "max_tool_calls": 2}, 200),   # 2 + tokens
             ({"service_tier": "priority", "max_output_tokens": 2000}, 429),    # 2 x 4+
             ({}, 200)]
    for extra, expected in cases:
        sent = len(fake_openai.requests)
        status, answer = post(gw, "/v1/responses", {**plain, **extra}, ip)
        assert status == expected, (extra, answer)
        if expected == 429:
            assert answer["error"]["code"] == "insufficient_quota", answer
            assert len(fake_openai.requests) == sent                # nothing went upstream
    assert fake_openai.requests[0].json["max_tool_calls"] == 2      # the client's, it is less


# ---------------------------------------------------------------------- the catalog
@pytest.mark.parametrize("model, line, wanted", [
    ({"allow": {"tools": ["web_search"]}}, "allow.tools", "has no price"),
    ({"allow": {"tools": ["teleport"]}, "credits": {"tools": {"teleport": 1}}},
     "allow.tools", "not a hosted tool"),
    ({"allow": {"service_tiers": ["priority"]}}, "allow.service_tiers", "has no price"),
    ({"allow": {"service_tiers": ["turbo"]}}, "allow.service_tiers", "not a tier"),
    ({"credits": {"tools": {"web_search": 1}}}, "credits.tools", "priced but not allowed"),
    ({"allow": {"tools": ["bash"]}, "credits": {"tools": {"bash": 1}}}, "credits.tools",
     "runs on the client"),
    ({"allow": {"anthropic_beta": ["files-api, skills"]}}, "allow.anthropic_beta",
     "one name"),
])
def test_catalog_mistakes_are_file_line_errors(tmp_path, model, line, wanted):
    path = write_config(tmp_path, {"providers": {"oa": {"kind": "openai",
                                                        "base_url": "http://127.0.0.1:9",
                                                        "api_key": "k"}},
                                   "models": {"m": {"provider": "oa", **model}}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    catalog_file = path.parent / "models.yaml"
    text = catalog_file.read_text().splitlines()
    problems = [p for p in exc.value.problems if f"models.m.{line}" in p.message]
    assert problems and wanted in problems[0].message, exc.value.problems
    assert problems[0].file == str(catalog_file) and problems[0].line > 0
    assert line.split(".")[-1] in text[problems[0].line - 1] or \
        line.split(".")[-1] in text[problems[0].line - 2]        # the key, or its item


@pytest.mark.parametrize("kind, fam", [
    ("web_search_20250305", "web_search"), ("web_search_preview_2025_03_11",
                                            "web_search_preview"),
    ("code_execution_20250825", "code_execution"), ("mcp_toolset", "mcp"),
    ("image_generation", "image_generation")])
def test_a_tool_is_allowed_by_its_family(kind, fam):
    assert family(kind) == fam


def test_allowing_the_1m_context_prices_long_prompts_as_anthropic_does(tmp_path):
    path = write_config(tmp_path, {
        "providers": {"an": {"kind": "anthropic", "base_url": "http://127.0.0.1:9",
                             "api_key": "k"}},
        "models": {"c": {"provider": "an", "allow": {"anthropic_beta": ["context-1m"]},
                         "credits": {"input": 0.3, "output": 1.5}}}})
    model = load_config(path).catalog.models["c"]
    assert dict(model.credits.long_context) == ANTHROPIC_LONG_CONTEXT
    short = Tally(requests=1, prompt_tokens=150_000, completion_tokens=1000)
    long = Tally(requests=1, prompt_tokens=300_000, completion_tokens=1000)
    assert price(model, short) == pytest.approx((150_000 * 0.3 + 1000 * 1.5) / 1000)
    assert price(model, long) == pytest.approx((300_000 * 0.3 * 2 + 1000 * 1.5 * 1.5) / 1000)


REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_catalog_prices_models_from_their_list_prices():
    """1 credit = US$0.01: a model's credits per 1k tokens are its list price per million
    tokens / 10; Opus costs more than Nano; Anthropic's cache writes 1.25x input (2x for an
    hour); a free key's daily credits buy hundreds of typical requests on a small model."""
    config = load_config(REPO / "config" / "apiarium.yaml", env={})
    models = config.catalog.models
    chat = [m for m in models.values() if m.type == "chat"]
    assert all(m.credits.input is not None and m.credits.output is not None for m in chat)
    opus, nano = models["claude-opus-4.1"].credits, models["gpt-5-nano"].credits
    assert (opus.input_rate, opus.output_rate) == (1.5, 7.5)          # $15 / $75 per M
    assert (nano.input_rate, nano.output_rate) == (0.005, 0.04)       # $0.05 / $0.40 per M
    for alias in ("claude-opus-4.1", "claude-sonnet-4.5", "claude-haiku-4.5"):
        c = models[alias].credits
        assert c.cache_write_rate == pytest.approx(1.25 * c.input_rate)
        assert c.cache_write_1h_rate == pytest.approx(2 * c.input_rate)
        assert c.cached_input_rate == pytest.approx(0.1 * c.input_rate)
    typical = Tally(requests=1, prompt_tokens=1000, completion_tokens=500)
    daily = config.settings.daily_credits
    assert daily / price(models["gpt-5-mini"], typical) >= 1000         # 1,600 (README)
    assert daily / price(models["gpt-5"], typical) >= 300               # 320
