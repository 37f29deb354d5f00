"""``apiarium serve --demo`` as a process, on the shipped configuration (config/ copied to a
temp folder, steered only through the variables it reads: its port, data folder and rpm) with
no provider key or URL in the environment: the openai SDK (chat, stream, a tool round trip, an
image, embeddings, Responses), curl and the anthropic SDK get demo answers; video models stay
unconfigured; a provider with a key keeps its models; SIGHUP keeps demo mode, with workers
too; without --demo the log says how to get answers; Codex CLI and Claude Code, set up as the
README says, finish a turn.  (tests/test_providers_demo.py tests the provider itself.)"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import anthropic
import pytest
import yaml
from PIL import Image

from tests.support import Gateway, error_of, httpx, request, wait_for
from tests.test_agent_clis import CODEX_CONFIG, ProxySink, base_env, cli, run

REPO = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((REPO / "config" / "models.yaml").read_text())
# what the shipped config reads from the environment, none of which the tests may inherit
READ = re.compile(r"(_API_KEY|_BASE_URL|_HUB_URL|_HUB_KEY)$|^APIARIUM_|^GEMINI_")
DEMO_LINE = "INFO apiarium: demo mode: "
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"]}}}


class Shipped(Gateway):
    """``python -m apiarium serve ARGS`` on a copy of the shipped config/ under ``tmp``."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None):
        super().__init__(tmp, {})
        shutil.copytree(REPO / "config", self.dir, dirs_exist_ok=True)    # over the test's
        self.env = {k: v for k, v in os.environ.items() if not READ.search(k)}
        self.env.update({"APIARIUM_PORT": "0", "APIARIUM_DATA": str(tmp / "data"),
                         "APIARIUM_RPM": "1000", **(env or {})})
        self.args = args

    def lines(self, marker: str) -> list[str]:
        return [line for line in self.log if marker in line]

    def demo_models(self, line: str) -> list[str]:
        """The aliases a demo-mode line names as answering from the demo."""
        listed = line.split(" have no key: ", 1)[1].split("; ", 1)[0]
        return listed.split(", ")


def shipped_aliases(*, but_provider: str = "", types: tuple = ("chat", "image", "embedding")):
    return [alias for alias, m in SHIPPED["models"].items()
            if m.get("type", "chat") in types and m["provider"] != but_provider]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    gw = Shipped(tmp_path_factory.mktemp("demo"), "--demo").start()
    yield gw
    gw.stop()


def chat(gw, ip: str, model: str = "gpt-5", **body) -> tuple[int, dict]:
    status, _, raw = gw.post("/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "Hello!"}], **body},
        gw.key_for(ip), ip)
    return status, json.loads(raw)


# ---------------------------------------------------------------------------- serve --demo

def test_the_log_says_in_one_line_which_models_are_demo(demo):
    [line] = demo.lines(DEMO_LINE)
    assert demo.demo_models(line) == shipped_aliases()
    videos = shipped_aliases(types=("video",))
    assert line.endswith(f"; {len(videos)} left as they were (the demo makes no video): "
                         f"{', '.join(videos)}")
    assert not demo.lines("no provider has a key")
    # /v1/models: the demo models are owned by the gateway's demo
    ip = "127.0.9.20"
    status, _, raw = demo.get("/v1/models", demo.key_for(ip), ip)
    owners = {m["id"]: m["owned_by"] for m in json.loads(raw)["data"]}
    assert status == 200 and owners["gpt-5"] == owners["claude-sonnet-4.5"] == "apiarium-demo"
    assert owners["veo-3"] == "google"


def test_the_openai_sdk_gets_chat_and_a_stream(demo):
    ip = "127.0.9.21"
    client = demo.sdk(demo.key_for(ip), ip)
    messages = [{"role": "user", "content": "Tell me about bees."}]
    answer = client.chat.completions.create(model="gpt-5", messages=messages)
    text = answer.choices[0].message.content
    assert text.startswith("[demo] ") and "“Tell me about bees.”" in text
    assert answer.model == "gpt-5" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == math.ceil(len("Tell me about bees.") / 4)
    assert answer.usage.completion_tokens == math.ceil(len(text) / 4)
    again = client.chat.completions.create(model="gpt-5", messages=messages)
    assert again.choices[0].message.content == text                  # deterministic
    stream = client.chat.completions.create(model="gemini-3", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text.replace("`gpt-5`", "`gemini-3`")
    assert len(chunks) > 10 and chunks[-1].usage.completion_tokens > 0


def test_the_openai_sdk_gets_a_tool_call_and_an_answer_to_its_result(demo):
    ip = "127.0.9.22"
    client = demo.sdk(demo.key_for(ip), ip)
    messages = [{"role": "user", "content": "Weather in Lyon?"}]
    first = client.chat.completions.create(model="claude-sonnet-4.5", messages=messages,
                                           tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "apiarium-demo", "unit": "c"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 24 C"}]
    second = client.chat.completions.create(model="claude-sonnet-4.5", messages=messages,
                                            tools=[WEATHER])
    text = second.choices[0].message.content
    assert text.startswith("[demo] The tool `get_weather` answered: “Sunny and 24 C”")


def test_the_openai_sdk_gets_a_real_png(demo):
    ip = "127.0.9.23"
    client = demo.sdk(demo.key_for(ip), ip)
    images = client.images.generate(model="gpt-image-1", prompt="A bee on a sunflower",
                                    size="1536x1024")
    assert images.data[0].revised_prompt == "[demo] A bee on a sunflower"
    status, headers, png = request(images.data[0].url, ip=ip)
    assert status == 200 and headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png)) as img:
        assert (img.format, img.size) == ("PNG", (1536, 1024))
    wide = client.images.generate(model="gemini-3-image", prompt="A fox", size="16:9",
                                  response_format="b64_json")
    assert wide.data[0].b64_json


def test_the_openai_sdk_gets_embeddings(demo):
    ip = "127.0.9.24"
    client = demo.sdk(demo.key_for(ip), ip)
    answer = client.embeddings.create(model="text-embedding-3-small",
                                      input=["The bee visits the flower.", "Honey is sweet."])
    first, second = (d.embedding for d in answer.data)
    assert len(first) == 1536 and first != second
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-6)
    short = client.embeddings.create(model="gemini-embedding-001",
                                     input="The bee visits the flower.", dimensions=256)
    assert len(short.data[0].embedding) == 256 and short.usage.prompt_tokens == 7


def test_curl_gets_a_chat_answer(demo):
    ip = "127.0.9.25"
    out = subprocess.run(
        ["curl", "-s", "--interface", ip, f"{demo.url}/v1/chat/completions",
         "-H", f"Authorization: Bearer {demo.key_for(ip)}", "-H", "Content-Type: application/json",
         "-d", json.dumps({"model": "gpt-5", "messages": [{"role": "user",
                                                           "content": "Hello!"}]})],
        capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(out.stdout)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"].startswith("[demo] ")


def test_the_anthropic_sdk_gets_a_messages_answer(demo):
    ip = "127.0.9.26"
    claude = anthropic.Anthropic(
        base_url=demo.url, api_key=demo.key_for(ip), max_retries=0,
        http_client=anthropic.DefaultHttpxClient(
            transport=httpx.HTTPTransport(local_address=ip)))
    message = claude.messages.create(model="claude-haiku-4.5", max_tokens=300,
                                     messages=[{"role": "user", "content": "Hello!"}])
    assert message.model == "claude-haiku-4.5" and message.stop_reason == "end_turn"
    assert message.content[0].text.startswith("[demo] ") and message.usage.output_tokens > 0


def test_the_openai_sdk_gets_responses(demo):
    ip = "127.0.9.27"
    client = demo.sdk(demo.key_for(ip), ip)
    response = client.responses.create(model="gpt-5", input="Hello!")
    assert response.status == "completed" and response.output_text.startswith("[demo] ")
    with client.responses.stream(model="gemini-2.5-pro", input="Hello!") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 10 and "".join(deltas) == final.output_text
    assert final.output_text.startswith("[demo] ")


def test_video_models_stay_unconfigured(demo):
    status, body = chat(demo, "127.0.9.28", "veo-3")
    assert status == 503
    assert error_of(json.dumps(body).encode())["code"] == "provider_not_configured"


# ---------------------------------------------------------------------------- keys, reloads

def test_a_provider_with_a_key_keeps_its_models(tmp_path, fake_openai):
    gw = Shipped(tmp_path, "--demo", env={"OPENAI_API_KEY": fake_openai.api_key,
                                          "OPENAI_BASE_URL": fake_openai.base_url}).start()
    try:
        [line] = gw.lines(DEMO_LINE)
        assert gw.demo_models(line) == shipped_aliases(but_provider="openai")
        status, answer = chat(gw, "127.0.9.30")
        assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: Hello!"
        status, answer = chat(gw, "127.0.9.30", "claude-opus-4.1")
        assert answer["choices"][0]["message"]["content"].startswith("[demo] ")
    finally:
        gw.stop()


def add_model(gw: Shipped, alias: str) -> None:
    """A new chat model of the keyless openai provider, at the end of the copied catalog."""
    with gw.models_path.open("a") as f:
        f.write(f"  {alias}: {{provider: openai}}\n")


def test_sighup_keeps_demo_mode(tmp_path):
    gw = Shipped(tmp_path, "--demo").start()
    try:
        add_model(gw, "gpt-added")
        gw.reload()
        assert wait_for(lambda: gw.lines("configuration reloaded"), timeout=10), gw.log
        first, again = gw.lines(DEMO_LINE)
        assert gw.demo_models(again) == [*gw.demo_models(first), "gpt-added"]
        for alias in ("gpt-added", "gpt-5"):
            status, answer = chat(gw, "127.0.9.31", alias)
            assert status == 200, answer
            assert answer["choices"][0]["message"]["content"].startswith("[demo] ")
    finally:
        gw.stop()


def test_workers_serve_and_reload_in_demo_mode(tmp_path):
    gw = Shipped(tmp_path, "--demo", "--workers", "2")
    # two workers on the shipped memory limits: the operator accepts limits x 2
    text = gw.config.read_text()
    assert "  per_process: false" in text
    gw.config.write_text(text.replace("  per_process: false", "  per_process: true", 1))
    gw.start()
    try:
        assert gw.lines("(2 workers)")
        assert len(gw.lines(DEMO_LINE)) == 1               # said once, by worker 0
        add_model(gw, "gpt-added")
        gw.reload()
        assert wait_for(lambda: len(gw.lines("configuration reloaded")) == 2, timeout=10), \
            gw.log
        for ip in ("127.0.9.32", "127.0.9.33", "127.0.9.34", "127.0.9.35"):
            status, answer = chat(gw, ip, "gpt-added")        # whichever worker answers
            assert status == 200, answer
            assert answer["choices"][0]["message"]["content"].startswith("[demo] ")
    finally:
        gw.stop()


def test_without_demo_and_without_keys_the_log_says_how_to_get_answers(tmp_path):
    gw = Shipped(tmp_path).start()
    try:
        [line] = gw.lines("no provider has a key")
        assert " WARNING apiarium: " in line
        for needed in ("OPENAI_API_KEY (openai)", "ANTHROPIC_API_KEY (anthropic)",
                       "GEMINI_API_KEY (google)", "GEMINI_HUB_URL and GEMINI_HUB_KEY (hub)",
                       "`scripts/serve --demo`"):
            assert needed in line
        assert not gw.lines(DEMO_LINE)
        status, answer = chat(gw, "127.0.9.36")
        assert status == 503 and answer["error"]["code"] == "provider_not_configured"
    finally:
        gw.stop()


# ---------------------------------------------------------------------------- agent clients
# Set up as the README says (Codex: `model = "gpt-5"`, wire_api responses; Claude Code:
# ANTHROPIC_MODEL=gpt-5 and ANTHROPIC_DEFAULT_HAIKU_MODEL=gpt-5), with the free key of
# 127.0.0.1 (where the clients connect from; no other test here uses it).  Each turn declares
# tools, so the demo's first answer calls the first one (Codex's exec_command with `cmd:
# apiarium-demo`, Claude Code's Agent, whose sub-agent gets text); the client runs it and the
# demo's next answer quotes the result.  Both runs take some 70 of the key's 200 daily
# credits (a Claude Code request is ~76 KB).

@pytest.fixture
def sink():
    proxy = ProxySink()
    yield proxy
    proxy.close()


@pytest.fixture
def agents(demo):
    demo.free_key = demo.key_for("127.0.0.1")
    demo.since = len(demo.log)
    return demo


def why(proc: subprocess.CompletedProcess, gw: Shipped, sink: ProxySink) -> str:
    return (f"exit {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}\n"
            f"--- refused beyond loopback: {sink.seen}\n--- gateway log:\n"
            + "\n".join(gw.log[-30:]))


def requests_made(gw: Shipped) -> list[str]:
    """Method, path, status and model of each request from 127.0.0.1 since the test began
    (the key look-up left out), from the access log."""
    out = []
    for line in gw.log[gw.since:]:
        if " apiarium.access: " in line and " ip=127.0.0.1 " in line:
            fields = line.split(" apiarium.access: ", 1)[1].split()
            if fields[2] != "/v1/keys/me":
                model = [f for f in fields if f.startswith("model=")]
                out.append(" ".join([*fields[1:4], *model]))
    return out


def test_codex_gets_an_answer_from_the_demo(agents, sink, tmp_path):
    binary = cli("codex")
    home, work = tmp_path / "home", tmp_path / "work"
    env = base_env(home, sink)
    (home / ".codex").mkdir()
    (home / ".codex" / "config.toml").write_text(
        CODEX_CONFIG.format(base_url=agents.base_url_for(), model="gpt-5"))
    env.update(CODEX_HOME=str(home / ".codex"), APIARIUM_API_KEY=agents.free_key)
    work.mkdir()
    last = tmp_path / "last-message.txt"
    proc, took = run([binary, "exec", "--skip-git-repo-check", "--color", "never", "-o", last,
                      "Say hello."], env, work)
    explain = why(proc, agents, sink)
    assert proc.returncode == 0, explain
    final = last.read_text().strip()
    assert final.startswith("[demo] The tool `exec_command` answered: “"), explain
    assert "Process exited with code" in final, explain        # the command's outcome
    assert final in proc.stdout, explain
    assert wait_for(lambda: len(requests_made(agents)) >= 2), explain
    assert requests_made(agents) == ["POST /v1/responses 200 model=gpt-5"] * 2, explain
    assert sink.seen == [], explain
    print(f"codex on the demo: {took:.1f} s")


def test_claude_code_gets_an_answer_from_the_demo(agents, sink, tmp_path):
    binary = cli("claude")
    home, work = tmp_path / "home", tmp_path / "work"
    env = base_env(home, sink)
    (home / ".claude").mkdir()
    env.update({
        "CLAUDE_CONFIG_DIR": str(home / ".claude"), "ANTHROPIC_BASE_URL": agents.url,
        "ANTHROPIC_AUTH_TOKEN": agents.free_key,
        "ANTHROPIC_MODEL": "gpt-5", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "gpt-5",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_UPDATES": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    })
    work.mkdir()
    proc, took = run([binary, "-p", "Say hello.", "--output-format", "text"], env, work)
    explain = why(proc, agents, sink)
    assert proc.returncode == 0, explain
    assert proc.stdout.startswith("[demo] The tool `Agent` answered: “[demo] "), explain
    # the turn, the sub-agent's turn (answered in text), the turn with the Agent's result
    assert wait_for(lambda: len(requests_made(agents)) >= 3), explain
    made = requests_made(agents)
    assert made == ["POST /v1/messages 200 model=gpt-5"] * 3, explain
    assert sink.seen == [], explain
    print(f"claude code on the demo: {took:.1f} s, {len(made)} requests")
