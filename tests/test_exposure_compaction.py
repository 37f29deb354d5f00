"""Exposure (issue 22, H1): the gateway's compaction items.  They were ``v1:`` + base64(zlib(JSON))
with no MAC: a forged 150 KB request of 16 items, each inflating to ~8 MB, held the event loop
19 s and took the gateway to 2.2 GB; forged items smuggled ``item_reference`` and ``file_id``
past the stored-object checks, and a 600-deep one was a 500.  Now an item is signed for the
key that made it and checked before anything is inflated, expansion is bounded per request,
and what an item holds is checked as direct input is.  Against a real gateway and the OpenAI
fake, on loopback (clients on 127.0.1.x)."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import http.client
import json
import secrets
import time
import zlib
from pathlib import Path

import orjson
import pytest

from apiarium import keysecret
from apiarium.dialects.responses_compaction import SEAL_PURPOSE, CompactionSeal
from apiarium.jsonbody import MAX_DEPTH
from tests.conftest import openai_models
from tests.support import MASTER_KEY, error_of, request

A, B, HEALTH = "127.0.1.1", "127.0.1.2", "127.0.1.9"
HISTORY = [{"role": "user", "content": "the secret word is honey"},
           {"role": "assistant", "content": "noted"}]
BOMB_ITEMS = 16
INFLATED = 7_800_000            # bytes of JSON each forged item inflates to
PATHS = ("/v1/responses/compact", "/v1/responses")


def models(fake_openai) -> dict:
    """``gpt-5`` is passed through to the fake's own /responses; ``local`` is translated."""
    return openai_models(fake_openai, providers={"vllm": {
        "kind": "openai", "base_url": fake_openai.base_url, "api_key": fake_openai.api_key,
        "responses": False}}, models={"local": {"provider": "vllm", "upstream": "qwen3"}})


@functools.cache
def deflated(n: int) -> str:
    """The n-th forged payload: ~8 MB of JSON (8 items, which the old de-duplication encoded
    again for every later compaction item) deflated to ~10 KB, in base64."""
    item = {"role": "user", "content": chr(97 + n) * (INFLATED // 8 - 40)}
    raw = orjson.dumps({"items": [item] * 8})
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode()


def bomb(version: str) -> bytes:
    """The body of the attack: 16 forged compaction items, each ~8 MB of JSON deflated to
    ~10 KB; ``v1`` as the gateway used to make them (no MAC), ``v2`` with a tag of the right
    shape that no secret made."""
    items = []
    for n in range(BOMB_ITEMS):
        packed = deflated(n)
        tag = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        content = (f"apiarium.compaction.v1:{packed}" if version == "v1"
                   else f"apiarium.compaction.v2:{packed}.{tag}")
        items.append({"type": "compaction", "encrypted_content": content})
    return orjson.dumps({"model": "gpt-5", "input": [*items, {"role": "user", "content": "hi"}]})


def test_the_bomb_is_what_the_issue_describes():
    """(Against the gateway before signing, this body took it 1.8 s and 240 MB here.)"""
    body = bomb("v1")
    assert len(body) < 200_000
    for item in orjson.loads(body)["input"][:BOMB_ITEMS]:
        packed = item["encrypted_content"].split(":", 1)[1]
        inflated = len(zlib.decompress(base64.urlsafe_b64decode(packed)))
        assert 7_500_000 < inflated <= 8 * 1024 * 1024     # what the old check let through


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def refused_as_forged(status: int, raw: bytes, index: int = 0) -> None:
    assert status == 400, raw
    err = error_of(raw)
    assert err["param"] == f"input[{index}].encrypted_content", err
    assert err["code"] == "invalid_encrypted_content", err


@pytest.fixture
def proc_gw(make_gateway, fake_openai):
    return make_gateway(models(fake_openai), process=True, rate_limit={"rpm": 1000})


@pytest.mark.subprocess_gateway("reads the gateway process's memory")
def test_the_150_kb_bomb_is_a_400_at_once_and_costs_no_memory(proc_gw, fake_openai):
    gw, pid = proc_gw, proc_gw.proc.pid
    key = gw.key_for(A)
    # an honest round first, of about the bomb's size, so that what is measured is the bomb
    compacted = gw.post(PATHS[0], {"model": "gpt-5", "input": [
        {"role": "user", "content": "x" * 150_000}]}, key=key, ip=A)
    assert compacted[0] == 200, compacted[2]
    for version in ("v1", "v2"):
        body = bomb(version)
        for path in PATHS:
            best = float("inf")
            for _ in range(3):                   # the best of three: the work, not the noise
                Path(f"/proc/{pid}/clear_refs").write_text("5")     # VmHWM := VmRSS
                before = vm_kb(pid, "VmRSS")
                started = time.perf_counter()
                status, _, raw = gw.post(path, body, key=key, ip=A)
                best = min(best, time.perf_counter() - started)
                refused_as_forged(status, raw)
                grown = vm_kb(pid, "VmHWM") - before
                assert grown < 10 * 1024, f"{version} on {path}: RSS grew {grown} KB"
            assert best < 0.050, f"{version} on {path}: {best * 1000:.0f} ms"
    assert fake_openai.requests == []


def _send_but_the_last_byte(gw, body: bytes, key: str, ip: str) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30, source_address=(ip, 0))
    conn.putrequest("POST", PATHS[0])
    for name, value in (("Content-Type", "application/json"), ("Authorization", f"Bearer {key}"),
                        ("Content-Length", str(len(body)))):
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body[:-1])
    return conn


def health(gw) -> float:
    """How long ``/health`` takes to answer, in seconds."""
    started = time.perf_counter()
    status, _, raw = request(gw.url + "/health", ip=HEALTH, timeout=10)
    assert status == 200, raw
    return time.perf_counter() - started


def answer_of(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
    with contextlib.closing(conn):
        resp = conn.getresponse()
        return resp.status, resp.read()


def slowest_health_with_bombs(gw, bodies: list[bytes], key: str) -> float:
    """Send the bombs all but their last byte, probe /health, let them all complete at
    once and probe it until they are answered: the slowest probe, in seconds."""
    conns = [_send_but_the_last_byte(gw, body, key, A) for body in bodies]
    probes = [health(gw)]
    with concurrent.futures.ThreadPoolExecutor(len(conns)) as pool:
        for conn in conns:
            conn.send(b"}")
        answers = [pool.submit(answer_of, conn) for conn in conns]
        while not all(a.done() for a in answers) or len(probes) < 4:
            probes.append(health(gw))
        for answer in answers:
            refused_as_forged(*answer.result(30))
    return max(probes)


@pytest.mark.subprocess_gateway("the gateway's loop must be apart from the test's clients")
def test_health_stays_fast_while_ten_bombs_are_in_flight(proc_gw):
    key = proc_gw.key_for(A)
    bodies = [bomb("v1" if n % 2 else "v2") for n in range(10)]
    rounds = []
    while len(rounds) < 3 and not (rounds and rounds[-1] < 0.050):   # best of 3: the gateway,
        rounds.append(slowest_health_with_bombs(proc_gw, bodies, key))   # not the busy box
    assert min(rounds) < 0.050, [f"{r * 1000:.0f} ms" for r in rounds]


# ---------------------------------------------------------------------- bound to the key

@pytest.fixture
def gw(make_gateway, fake_openai):
    return make_gateway(models(fake_openai), rate_limit={"rpm": 1000})


def compact_with(gw, key: str, ip: str, history: list = HISTORY) -> dict:
    status, _, raw = gw.post("/v1/responses/compact", {"model": "gpt-5", "input": history},
                             key=key, ip=ip)
    assert status == 200, raw
    (item,) = json.loads(raw)["output"]
    assert item["encrypted_content"].startswith("apiarium.compaction.v2:")
    return item


def follow_up(gw, item: dict, key: str, ip: str, model: str = "gpt-5"):
    return gw.post("/v1/responses", {"model": model, "input": [
        item, {"role": "user", "content": "which word?"}]}, key=key, ip=ip)


@pytest.mark.parametrize("model", ["gpt-5", "local"])
def test_a_compaction_works_only_for_the_key_that_made_it(gw, fake_openai, model):
    key_a, key_b = gw.key_for(A), gw.key_for(B)
    mine, masters = compact_with(gw, key_a, A), compact_with(gw, MASTER_KEY, A)
    for item, key, ip in ((mine, key_a, A), (masters, MASTER_KEY, B)):
        fake_openai.reset()
        status, _, raw = follow_up(gw, item, key, ip, model)
        assert status == 200, raw
        assert "honey" in json.dumps(fake_openai.last().json)
    fake_openai.reset()
    for item, key, ip in ((mine, key_b, B), (mine, MASTER_KEY, A), (masters, key_a, A)):
        status, _, raw = follow_up(gw, item, key, ip, model)
        refused_as_forged(status, raw)
        assert "key that made it" in error_of(raw)["message"]
        # nor can another key have it signed anew, by compacting it or by Codex's trigger
        status, _, raw = gw.post("/v1/responses/compact", {"model": model, "input": [item]},
                                 key=key, ip=ip)
        refused_as_forged(status, raw)
        status, _, raw = gw.post("/v1/responses", {"model": model, "input": [
            item, {"type": "compaction_trigger"}]}, key=key, ip=ip)
        refused_as_forged(status, raw)
    assert fake_openai.requests == []


def test_a_compaction_carried_back_by_codex_still_round_trips(gw, fake_openai):
    key = gw.key_for(A)
    trigger = {"model": "local", "input": [*HISTORY, {"type": "compaction_trigger"}]}
    status, _, raw = gw.post("/v1/responses", trigger, key=key, ip=A)
    assert status == 200, raw
    (item,) = json.loads(raw)["output"]
    # the next turn as Codex sends it: its prompt again (a new id), then the compaction
    status, _, raw = gw.post("/v1/responses", {"model": "local", "input": [
        {**HISTORY[0], "id": "msg_again"}, item, {"role": "user", "content": "which word?"}]},
        key=key, ip=A)
    assert status == 200, raw
    sent = fake_openai.last().json["messages"]
    assert [m["content"] for m in sent] == [HISTORY[0]["content"], HISTORY[1]["content"],
                                            "which word?"]


# ------------------------------------------------------------ what a compaction may hold

STORED = [
    ("item_reference", {"type": "item_reference", "id": "msg_0123"}),
    ("input_file", {"role": "user", "content": [
        {"type": "input_file", "file_id": "file-operators"}]}),
    ("input_image", {"role": "user", "content": [
        {"type": "input_image", "file_id": "file-operators"}]}),
]


def gateway_seal(gw, key: str) -> CompactionSeal:
    """The seal the gateway uses for ``key`` (what only the gateway's secret file can make):
    to put into a signed item what the gateway's own compact refuses to sign."""
    secret = keysecret.load_secret(gw.dir.parent / "data" / "apiarium.sqlite3.secret")
    return CompactionSeal(keysecret.subkey(secret, SEAL_PURPOSE),
                          keysecret.hash_key(secret, key))


def signed(seal: CompactionSeal, raw: bytes) -> dict:
    return {"type": "compaction", "encrypted_content": seal.seal(zlib.compress(raw))}


@pytest.mark.parametrize(("name", "stored"), STORED, ids=[n for n, _ in STORED])
def test_stored_objects_cannot_be_compacted_or_smuggled(gw, fake_openai, name, stored):
    key = gw.key_for(A)
    seal = gateway_seal(gw, key)
    for model in ("gpt-5", "local"):
        # /compact (and Codex's trigger) refuse them as a direct request does, by the same
        # path: no signed item can hold them
        direct = error_of(gw.post("/v1/responses", {"model": model, "input": [
            HISTORY[0], stored]}, key=key, ip=A)[2])
        assert direct["param"].startswith("input[1]"), direct
        compact = gw.post("/v1/responses/compact", {"model": model, "input": [
            HISTORY[0], stored]}, key=key, ip=A)
        trigger = gw.post("/v1/responses", {"model": model, "input": [
            HISTORY[0], stored, {"type": "compaction_trigger"}]}, key=key, ip=A)
        for status, _, raw in (compact, trigger):
            assert status == 400, raw
            assert error_of(raw)["param"].startswith("input[1]"), raw
        # and were one signed anyway (with the gateway's own secret), what it holds is
        # refused exactly as it is sent directly, at the compaction item's path
        item = signed(seal, orjson.dumps({"items": [HISTORY[0], stored]}))
        status, _, raw = follow_up(gw, item, key, A, model)
        assert status == 400, raw
        smuggled = error_of(raw)
        assert smuggled["param"] == direct["param"].replace("input[1]", "input[0]", 1)
        assert smuggled["code"] == direct["code"] != "invalid_encrypted_content"
    # a forged one never gets that far
    forged = orjson.dumps({"items": [stored]})
    v1 = "apiarium.compaction.v1:" + base64.urlsafe_b64encode(zlib.compress(forged)).decode()
    refused_as_forged(*follow_up(gw, {"type": "compaction", "encrypted_content": v1},
                                 key, A)[::2])
    assert fake_openai.requests == []


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def test_600_deep_items_are_a_400_direct_and_compacted(gw, fake_openai):
    key = gw.key_for(A)
    deep_item = {"role": "user", "content": [{"type": "input_text", "text": "x",
                                              "extra": nested(600)}]}
    for model in ("gpt-5", "local"):
        for path in PATHS:
            status, _, raw = gw.post(path, json.dumps({"model": model, "input": [deep_item]}),
                                     key=key, ip=A)
            assert status == 400, raw
            assert f"more than {MAX_DEPTH} levels" in error_of(raw)["message"]
    raw_payload = json.dumps({"items": [deep_item]}).encode()       # orjson will not write it
    v1 = "apiarium.compaction.v1:" + base64.urlsafe_b64encode(
        zlib.compress(raw_payload)).decode()
    forged = {"type": "compaction", "encrypted_content": v1}
    deep_signed = signed(gateway_seal(gw, key), raw_payload)
    for model in ("gpt-5", "local"):
        for path in PATHS:
            body = {"model": model, "input": [forged, {"role": "user", "content": "hi"}]}
            refused_as_forged(*gw.post(path, body, key=key, ip=A)[::2])
            body["input"][0] = deep_signed
            status, _, raw = gw.post(path, body, key=key, ip=A)
            assert status == 400, raw
            err = error_of(raw)
            assert err["param"] == "input[0].encrypted_content"
            assert f"more than {MAX_DEPTH} levels" in err["message"]
    assert fake_openai.requests == []


def deep_call_body(path: str, model: str) -> dict:
    """A conversation whose tool call's ``arguments`` (a string) hold JSON 600 levels deep."""
    args = json.dumps({"x": nested(600)})
    weather = {"name": "get_weather", "parameters": {"type": "object"}}
    if path == "/v1/responses":
        return {"model": model, "tools": [{"type": "function", **weather}], "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": args},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    return {"model": model, "tools": [{"type": "function", "function": weather}], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_deep_tool_arguments_are_a_400_on_every_translation(make_gateway, fake_openai,
                                                            fake_anthropic, fake_gemini, path):
    """Decoded on its way to Anthropic or Gemini, such ``arguments`` nest deeper than a body
    may; the search for cache breakpoints (``cache: auto``) walked them by recursion and died
    in a 500.  Each is a 400 now, and nothing is sent."""
    catalog = models(fake_openai)
    catalog["providers"].update({
        "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                   "api_key": fake_anthropic.api_key},
        "gem": {"kind": "gemini", "base_url": fake_gemini.base_url,
                "api_key": fake_gemini.api_key}})
    catalog["models"].update({"claude-cached": {"provider": "claude", "cache": "auto"},
                              "claude-x": {"provider": "claude"},
                              "gemini-x": {"provider": "gem"}})
    gw = make_gateway(catalog, rate_limit={"rpm": 1000})
    key = gw.key_for(A)
    for model in ("claude-cached", "claude-x", "gemini-x"):
        for stream in (False, True):
            status, _, raw = gw.post(path, {**deep_call_body(path, model), "stream": stream},
                                     key=key, ip=A)
            assert status == 400, (model, stream, raw)
            assert "too deeply" in error_of(raw)["message"]
    assert fake_anthropic.requests == [] and fake_gemini.requests == []
