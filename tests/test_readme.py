"""The README's examples, and those of docs/api.md, work as printed: their shell and Python
blocks are run against a gateway on the shipped config, with the providers' base URLs pointed
at fake upstreams, and the README's "Try it" again against ``serve --demo`` with no provider
key at all.  The JSON shapes they show are the ones the gateway answers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import READY, request
from tests.test_demo import Shipped

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
API = (REPO / "docs" / "api.md").read_text()          # the reference's examples
TRY_IT = README.split("## Try it", 1)[1].split("\n## ", 1)[0]


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def one(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def json_docs(out: str) -> list:
    """The JSON documents a run of commands printed back to back."""
    docs, decoder, i = [], json.JSONDecoder(), out.find("{")
    while i >= 0:
        doc, end = decoder.raw_decode(out, i)
        docs.append(doc)
        i = out.find("{", end)
    return docs


def shape(value: object) -> object:
    """What a JSON value looks like, values aside: its keys (recursively) and kinds."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else type(value).__name__


@pytest.fixture
def shipped(tmp_path, fake_openai, fake_gemini):
    """The shipped config/apiarium.yaml and models.yaml, steered only through the environment
    variables they read, as an operator would."""
    gemini = fake_gemini
    env = {**os.environ, "APIARIUM_PORT": "0", "APIARIUM_DATA": str(tmp_path / "data"),
           "APIARIUM_RPM": "100", "OPENAI_BASE_URL": fake_openai.base_url,
           "OPENAI_API_KEY": fake_openai.api_key, "GEMINI_BASE_URL": gemini.base_url,
           "GEMINI_API_KEY": gemini.api_key, "GEMINI_POLL_INTERVAL_S": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "apiarium", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    for line in proc.stdout:
        m = READY.search(line)
        if m:
            url = m.group(1)
            break
    assert url, "the gateway did not start on the shipped config"
    try:
        yield url, gemini
    finally:
        proc.terminate()
        proc.wait(20)


def run_example(code: str, url: str, lang: str) -> str:
    code = code.replace("http://127.0.0.1:8080", url)
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c",
                                                                            code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{lang} example failed:\n{code}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_readme_shows_the_two_commands():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in blocks("bash")[0].splitlines()]
    assert commands == ["scripts/serve", "scripts/test"] and "scripts/serve" in quick
    assert "scripts/serve --demo\n" in blocks("bash", quick)    # and how to try without keys


def test_curl_examples_work_as_printed(shipped, fake_openai):
    url, _ = shipped
    shell = one([b for b in blocks("bash", TRY_IT) if "curl" in b])
    out = run_example(shell, url, "bash")
    docs = json_docs(out)
    assert docs[0]["status"] == "ok"
    assert re.match(r"^api-[a-z0-9]{16}$", docs[1]["key"])
    assert {m["id"] for m in docs[2]["data"]} >= {"gpt-5", "veo-3", "gemini-3-image"}
    assert docs[3]["choices"][0]["message"]["content"] == "echo: Hello!"
    assert out.rstrip().endswith("data: [DONE]")          # the streamed example
    assert fake_openai.last().json["stream"] is True


def test_python_examples_work_as_printed(shipped, fake_openai):
    url, _gemini = shipped
    fake_openai.reply_text = "1 2 3 4 5"
    sdk = one(blocks("python", TRY_IT))
    video = one([b for b in blocks("python", API) if "/v1/videos/generations" in b])
    lines = run_example(sdk, url, "python").splitlines()
    assert lines[0] == "1 2 3 4 5" and lines[1] == "1 2 3 4 5"
    assert lines[2].startswith(url + "/media/") and lines[2].endswith(".png")
    out = run_example(video, url, "python").strip()
    assert out.startswith(url + "/media/") and out.endswith(".mp4")


def test_agent_sdk_example_works_as_printed(shipped, fake_openai):
    url, _ = shipped
    agents = [b for b in blocks("python") if "anthropic" in b]
    assert len(agents) == 1
    lines = run_example(agents[0], url, "python").splitlines()
    assert lines == ["echo: Hello!", "echo: Hello!"]          # Responses, then Messages


def test_embeddings_example_works_as_printed(shipped, fake_openai):
    """Both kinds of the shipped catalog: the OpenAI fake counts words, Gemini's usage is the
    gateway's estimate (4 bytes a token: 7 + 4)."""
    url, gemini = shipped
    [example] = [b for b in blocks("python", API) if "embeddings.create" in b]
    lines = run_example(example, url, "python").splitlines()
    assert lines == ["text-embedding-3-small 2 256 8", "gemini-embedding-001 2 256 11"]
    assert fake_openai.last().json["dimensions"] == 256
    calls = [r for r in gemini.requests if r.path.endswith(":batchEmbedContents")]
    assert len(calls) == 1 and calls[0].json["requests"][0]["outputDimensionality"] == 256


def test_video_jobs_example_works_as_printed(shipped):
    """The openai SDK's video API on the shipped catalog's Veo model (the Veo fake behind)."""
    url, gemini = shipped
    [example] = [b for b in blocks("python", API) if "videos.create_and_poll" in b]
    lines = run_example(example, url, "python").splitlines()
    assert lines == ["completed 8 1280x720", f"{len(gemini.video_bytes)} bytes of MP4",
                     "[True]"]
    starts = [r for r in gemini.requests if r.path.endswith(":predictLongRunning")]
    assert starts[-1].json["parameters"]["durationSeconds"] == 8


def test_the_json_shown_is_what_the_gateway_answers(shipped):
    """The README's /v1/keys/me and docs/api.md's /v1/keys/me/usage, key for key."""
    url, _ = shipped
    status, _, body = request(url + "/v1/keys/me")
    me = json.loads(body)
    assert status == 200
    shown = json.loads(one(blocks("json", TRY_IT)))
    assert shape(shown) == shape(me)
    assert {"usage", "credits"} <= set(shown)
    status, _, body = request(url + "/v1/keys/me/usage?days=2",
                              headers={"Authorization": f"Bearer {me['key']}"})
    assert status == 200
    usage_section = API.split("## Your usage", 1)[1].split("\n## ", 1)[0]
    assert shape(json.loads(one(blocks("json", usage_section)))) == shape(json.loads(body))


def test_try_it_works_with_demo_and_no_provider_key(tmp_path):
    """``scripts/serve --demo`` as the Quick start says, no provider key in the environment:
    the README's curl, openai SDK and agent SDK examples get the demo's answers."""
    gw = Shipped(tmp_path, "--demo").start()
    try:
        out = run_example(one([b for b in blocks("bash", TRY_IT) if "curl" in b]), gw.url,
                          "bash")
        docs = json_docs(out)
        assert docs[0]["status"] == "ok" and docs[1]["key"].startswith("api-")
        models = {m["id"]: m for m in docs[2]["data"]}
        assert models["gpt-5"]["status"] == "demo"
        assert docs[3]["choices"][0]["message"]["content"].startswith("[demo] ")
        assert out.rstrip().endswith("data: [DONE]")
        lines = run_example(one(blocks("python", TRY_IT)), gw.url, "python").splitlines()
        assert lines[0].startswith("[demo] ") and "“Hello!”" in lines[0]
        assert lines[1].startswith("[demo] ") and "“Count to five.”" in lines[1]
        assert lines[2].startswith(gw.url + "/media/") and lines[2].endswith(".png")
        agents = one([b for b in blocks("python") if "anthropic" in b])
        lines = run_example(agents, gw.url, "python").splitlines()
        assert len(lines) == 2 and all(line.startswith("[demo] ") for line in lines), lines
    finally:
        gw.stop()
