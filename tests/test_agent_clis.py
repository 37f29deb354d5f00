"""The real coding agents against the gateway, each over another vendor's upstream: Codex CLI
(`codex exec`, the Responses API) in front of a fake Anthropic, Claude Code (`claude -p`, the
Messages API) in front of a fake Gemini.  Each completes a text turn, and a turn in which the
model calls the client's shell tool, the client runs it and sends the result back, and the
model's final text is printed.  What the upstream received is read from the fake, in its own
wire format.

scripts/test installs the pinned npm packages into .cache/npm-clis and says where in
APIARIUM_CLIS (or, when npm cannot install them, why not in APIARIUM_CLIS_SKIP).  The clients
run with a temp HOME / CODEX_HOME / CLAUDE_CONFIG_DIR, every switch that turns off their
telemetry, update checks and other non-essential traffic, and a refusing proxy for anything
that is not loopback.  The gateway runs with a normal free key, rpm 1000 and
``rate_limit.daily_credits: 0`` (unlimited): with the defaults (rpm 4, 200 credits) Codex
waits out 429s (it honours Retry-After) and each Claude Code request, ~76 KB asking
max_tokens 32000-64000, sets aside some 50-85 credits, so a run of these tests could end on
the allowance instead of on what they test."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
CLIS = Path(os.environ.get("APIARIUM_CLIS") or ROOT / ".cache" / "npm-clis")
TIMEOUT_S = 120
MARK = "apiarium-tool-ok"
FINAL = "Done: the command printed the marker."
STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def cli(name: str) -> Path:
    """The installed client binary, or skip with the reason."""
    reason = os.environ.get("APIARIUM_CLIS_SKIP")
    if reason:
        pytest.skip(reason)
    path = CLIS / "node_modules" / ".bin" / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} is not installed in {CLIS} (scripts/test installs it with npm)")
    return path


class ProxySink:
    """An HTTP proxy on loopback that records the first line of each request (``CONNECT
    host:443 ...``) and refuses it: where a client would go beyond loopback."""

    def __init__(self):
        self.seen: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture
def codex_bin() -> Path:
    return cli("codex")


@pytest.fixture
def claude_bin() -> Path:
    return cli("claude")


@pytest.fixture
def sink():
    proxy = ProxySink()
    yield proxy
    proxy.close()


def base_env(home: Path, sink: ProxySink) -> dict:
    """A clean environment: no keys or settings of the caller's own, a temp HOME, and every
    request that is not for loopback sent to a proxy that refuses it."""
    home.mkdir(parents=True, exist_ok=True)
    refuse = sink.url
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "TMPDIR": str(home), "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1",
        "HTTP_PROXY": refuse, "HTTPS_PROXY": refuse, "ALL_PROXY": refuse,
        "http_proxy": refuse, "https_proxy": refuse, "all_proxy": refuse,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }


def run(argv: list, env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    try:
        proc = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{argv[0]} did not finish in {TIMEOUT_S} s\nstdout:\n{exc.stdout}\n"
                    f"stderr:\n{exc.stderr}")
    return proc, time.monotonic() - start


def explain(proc: subprocess.CompletedProcess, gw, fake, sink: ProxySink) -> str:
    """Everything worth seeing when a client fails."""
    sent = [(r.method, r.path, len(r.body)) for r in fake.requests]
    return (f"exit {proc.returncode}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}\n"
            f"--- upstream received: {sent}\n--- refused beyond loopback: {sink.seen}\n"
            "--- gateway log:\n" + "\n".join(gw.log[-40:]))


def client_requests(gw, count: int) -> list[str]:
    """Method and path of the requests the client sent the gateway, from its access log (the
    key look-up of the fixture left out), once ``count`` of them are there (its lines come
    through a pipe, a little after the answers)."""
    def lines():
        out = [" ".join(line.split(" apiarium.access: ", 1)[1].split()[1:3])
               for line in gw.log if " apiarium.access: " in line]
        return [x for x in out if x != "GET /v1/keys/me"]
    wait_for(lambda: len(lines()) >= count, timeout=5)
    return lines()


@pytest.fixture
def agent_gateway(make_gateway, fake_anthropic, fake_gemini, fake_openai):
    gw = make_gateway({
        "providers": {
            "oa": {"kind": "openai", "base_url": fake_openai.base_url,
                   "api_key": fake_openai.api_key, "timeout_s": 30},
            "claude": {"kind": "anthropic", "base_url": fake_anthropic.base_url,
                       "api_key": fake_anthropic.api_key, "timeout_s": 30},
            "google": {"kind": "gemini", "base_url": fake_gemini.base_url,
                       "api_key": fake_gemini.api_key, "timeout_s": 30},
        },
        "models": {
            "claude-sonnet": {"provider": "claude", "upstream": "claude-sonnet-4-5"},
            # Codex declares web_search on every turn: allowed (and priced) here, it reaches
            # OpenAI; on a model that does not allow it, it is left out (issue 22)
            "gpt": {"provider": "oa", "upstream": "gpt-5", "allow": {"tools": ["web_search"]},
                    "credits": {"tools": {"web_search": 1}}},
            "gem": {"provider": "google", "upstream": "gemini-2.5-flash"},
        },
    }, rate_limit={"rpm": 1000, "daily_credits": 0})
    gw.free_key = gw.key_for()
    return gw


# ---------------------------------------------------------------------------- Codex CLI
CODEX_CONFIG = """\
model = "{model}"
model_provider = "apiarium"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.apiarium]
name = "Apiarium"
base_url = "{base_url}"
env_key = "APIARIUM_API_KEY"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
daemon_auto_start = false
"""


def codex(binary: Path, gw, sink, tmp_path: Path, prompt: str, model: str = "claude-sonnet"):
    home, work = tmp_path / "home", tmp_path / "work"
    env = base_env(home, sink)
    codex_home = home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(base_url=gw.base_url_for(),
                                                                model=model))
    env.update(CODEX_HOME=str(codex_home), APIARIUM_API_KEY=gw.free_key)
    work.mkdir()
    last = tmp_path / "last-message.txt"
    proc, took = run([binary, "exec", "--skip-git-repo-check", "--color", "never",
                      "-o", last, prompt], env, work)
    return proc, took, last.read_text() if last.exists() else ""


def test_codex_text_turn(codex_bin, agent_gateway, fake_anthropic, sink, tmp_path):
    fake_anthropic.reply_text = "Hello from the Anthropic fake."
    proc, took, last = codex(codex_bin, agent_gateway, sink, tmp_path, "Say hello.")
    why = explain(proc, agent_gateway, fake_anthropic, sink)
    assert proc.returncode == 0, why
    assert "Hello from the Anthropic fake." in proc.stdout, why
    assert last.strip() == "Hello from the Anthropic fake.", why
    # one Responses request, one Messages request upstream
    assert client_requests(agent_gateway, 1) == ["POST /v1/responses"], why
    assert [r.path for r in fake_anthropic.requests] == ["/v1/messages"], why
    body = fake_anthropic.requests[0].json
    assert body["model"] == "claude-sonnet-4-5" and body["stream"] is True, why
    # Codex's base prompt (a developer item) is the system prompt; the user's words are there
    assert "Codex CLI" in json.dumps(body["system"]), why
    assert "Say hello." in json.dumps(body["messages"][-1]), why
    assert sink.seen == [], why
    print(f"codex text turn: {took:.1f} s")


def test_codex_tool_turn(codex_bin, agent_gateway, fake_anthropic, sink, tmp_path):
    # the first request (it declares Codex's tools) gets a call of its shell tool, the next text
    fake_anthropic.tool_call_next("exec_command", json.dumps({"cmd": f"echo {MARK}"}))
    fake_anthropic.reply_text = FINAL
    proc, took, last = codex(codex_bin, agent_gateway, sink, tmp_path, "Run the marker command.")
    why = explain(proc, agent_gateway, fake_anthropic, sink)
    assert proc.returncode == 0, why
    assert client_requests(agent_gateway, 2) == ["POST /v1/responses"] * 2, why
    assert [r.path for r in fake_anthropic.requests] == ["/v1/messages"] * 2, why
    first, second = (r.json for r in fake_anthropic.requests)
    assert "exec_command" in [t["name"] for t in first["tools"]], why
    # the second request, in Anthropic's wire format: the assistant's tool_use, then a user
    # turn whose tool_result holds what the command printed
    msgs = second["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"], why
    use = blocks(msgs[1], "tool_use", why)[0]
    assert use["name"] == "exec_command" and use["input"] == {"cmd": f"echo {MARK}"}, why
    result = blocks(msgs[2], "tool_result", why)[0]
    assert result["tool_use_id"] == use["id"], why
    printed = result["content"]
    if isinstance(printed, list):
        printed = " ".join(b.get("text", "") for b in printed)
    assert "Process exited with code 0" in printed and f"Output:\n{MARK}\n" in printed, why
    assert FINAL in proc.stdout and last.strip() == FINAL, why
    assert sink.seen == [], why
    print(f"codex tool turn: {took:.1f} s")


def test_codex_tool_turn_on_openai_is_passed_through(codex_bin, agent_gateway, fake_openai,
                                                     sink, tmp_path):
    """On an OpenAI-kind model Codex's requests reach the upstream's own /responses as sent:
    its hosted web_search tool included, the tool round trip in Responses items."""
    fake_openai.tool_call_next("exec_command", json.dumps({"cmd": f"echo {MARK}"}))
    fake_openai.reply_text = FINAL
    proc, took, last = codex(codex_bin, agent_gateway, sink, tmp_path,
                             "Run the marker command.", model="gpt")
    why = explain(proc, agent_gateway, fake_openai, sink)
    assert proc.returncode == 0, why
    assert [r.path for r in fake_openai.requests] == ["/v1/responses"] * 2, why
    first, second = (r.json for r in fake_openai.requests)
    assert first["model"] == "gpt-5" and first["store"] is False and first["stream"], why
    assert "web_search" in [t["type"] for t in first["tools"]], why
    call = next(i for i in second["input"] if i.get("type") == "function_call")
    output = next(i for i in second["input"] if i.get("type") == "function_call_output")
    assert call["name"] == "exec_command" and output["call_id"] == call["call_id"], why
    assert f"Output:\n{MARK}\n" in json.dumps(output["output"]).replace("\\n", "\n"), why
    assert FINAL in proc.stdout and last.strip() == FINAL, why
    assert sink.seen == [], why
    print(f"codex tool turn on openai: {took:.1f} s")


def blocks(message: dict, kind: str, why: str) -> list[dict]:
    found = [b for b in message["content"] if isinstance(b, dict) and b.get("type") == kind]
    assert found, f"no {kind} block in {message}\n{why}"
    return found


# ---------------------------------------------------------------------------- Claude Code
def claude(binary: Path, gw, sink, tmp_path: Path, prompt: str, *extra: str):
    home, work = tmp_path / "home", tmp_path / "work"
    env = base_env(home, sink)
    config = home / ".claude"
    config.mkdir()
    env.update({
        "CLAUDE_CONFIG_DIR": str(config),
        "ANTHROPIC_BASE_URL": gw.url,               # no /v1: Claude Code adds it
        "ANTHROPIC_API_KEY": gw.free_key,
        "ANTHROPIC_MODEL": "gem", "ANTHROPIC_SMALL_FAST_MODEL": "gem",
        "ANTHROPIC_DEFAULT_OPUS_MODEL": "gem", "ANTHROPIC_DEFAULT_SONNET_MODEL": "gem",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "gem",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
        "DISABLE_UPDATES": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_GROWTHBOOK": "1", "DISABLE_INSTALLATION_CHECKS": "1",
        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    })
    work.mkdir()
    return run([binary, "-p", prompt, "--output-format", "text", *extra], env, work)


def test_claude_code_text_turn(claude_bin, agent_gateway, fake_gemini, sink, tmp_path):
    fake_gemini.reply_text = "Hello from the Gemini fake."
    proc, took = claude(claude_bin, agent_gateway, sink, tmp_path, "Say hello.")
    why = explain(proc, agent_gateway, fake_gemini, sink)
    assert proc.returncode == 0, why
    assert proc.stdout.strip() == "Hello from the Gemini fake.", why
    # one Messages request (streamed: no non-streaming retry), one Gemini request upstream
    assert client_requests(agent_gateway, 1) == ["POST /v1/messages"], why
    assert [r.path for r in fake_gemini.requests] == [STREAM_PATH], why
    body = fake_gemini.requests[0].json
    assert "Claude" in json.dumps(body["systemInstruction"]), why
    assert "Say hello." in json.dumps(body["contents"][-1]), why
    assert sink.seen == [], why
    print(f"claude text turn: {took:.1f} s")


def test_claude_code_tool_turn(claude_bin, agent_gateway, fake_gemini, sink, tmp_path):
    fake_gemini.tool_call_next("Bash", json.dumps({"command": f"echo {MARK}",
                                                   "description": "Print the marker"}))
    fake_gemini.reply_text = FINAL
    proc, took = claude(claude_bin, agent_gateway, sink, tmp_path, "Run the marker command.")
    why = explain(proc, agent_gateway, fake_gemini, sink)
    assert proc.returncode == 0, why
    assert client_requests(agent_gateway, 2) == ["POST /v1/messages"] * 2, why
    assert [r.path for r in fake_gemini.requests] == [STREAM_PATH] * 2, why
    first, second = (r.json for r in fake_gemini.requests)
    names = [f["name"] for t in first["tools"] for f in t.get("functionDeclarations", [])]
    assert "Bash" in names, why
    # the second request, in Gemini's wire format: the model's functionCall, then a user turn
    # whose functionResponse holds what the command printed
    contents = second["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"], why
    call = contents[1]["parts"][-1]["functionCall"]
    assert call["name"] == "Bash" and call["args"]["command"] == f"echo {MARK}", why
    response = contents[2]["parts"][0]["functionResponse"]
    assert response["name"] == "Bash", why
    printed = json.dumps(response["response"])
    assert MARK in printed and "echo" not in printed, why      # the output, not the command
    assert proc.stdout.strip() == FINAL, why
    assert sink.seen == [], why
    print(f"claude tool turn: {took:.1f} s")
