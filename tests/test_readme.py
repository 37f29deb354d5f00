"""The README's examples work as printed: its shell block and Python blocks are run against a
gateway on the shipped config, with the providers' base URLs pointed at fake upstreams."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import READY

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


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
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in blocks("bash")[0].splitlines()]
    assert commands == ["scripts/serve", "scripts/test"] and "scripts/serve" in quick


def test_curl_examples_work_as_printed(shipped, fake_openai):
    url, _ = shipped
    try_it = README.split("## Try it", 1)[1]
    shell = re.search(r"```bash\n(.*?)```", try_it, re.S).group(1)
    out = run_example(shell, url, "bash")
    docs, decoder, i = [], json.JSONDecoder(), out.find("{")
    while i >= 0:                      # the commands print their JSON back to back
        doc, end = decoder.raw_decode(out, i)
        docs.append(doc)
        i = out.find("{", end)
    assert docs[0]["status"] == "ok"
    assert re.match(r"^api-[a-z0-9]{16}$", docs[1]["key"])
    assert {m["id"] for m in docs[2]["data"]} >= {"gpt-5", "veo-3", "gemini-3-image"}
    assert docs[3]["choices"][0]["message"]["content"] == "echo: Hello!"
    assert out.rstrip().endswith("data: [DONE]")          # the streamed example
    assert fake_openai.last().json["stream"] is True


def test_python_examples_work_as_printed(shipped, fake_openai):
    url, _gemini = shipped
    fake_openai.reply_text = "1 2 3 4 5"
    sdk, video = [b for b in blocks("python") if "import" in b][:2]
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
    [example] = [b for b in blocks("python") if "embeddings.create" in b]
    lines = run_example(example, url, "python").splitlines()
    assert lines == ["text-embedding-3-small 2 256 8", "gemini-embedding-001 2 256 11"]
    assert fake_openai.last().json["dimensions"] == 256
    calls = [r for r in gemini.requests if r.path.endswith(":batchEmbedContents")]
    assert len(calls) == 1 and calls[0].json["requests"][0]["outputDimensionality"] == 256


def test_video_jobs_example_works_as_printed(shipped):
    """The openai SDK's video API on the shipped catalog's Veo model (the Veo fake behind)."""
    url, gemini = shipped
    [example] = [b for b in blocks("python") if "videos.create_and_poll" in b]
    lines = run_example(example, url, "python").splitlines()
    assert lines == ["completed 8 1280x720", f"{len(gemini.video_bytes)} bytes of MP4",
                     "[True]"]
    starts = [r for r in gemini.requests if r.path.endswith(":predictLongRunning")]
    assert starts[-1].json["parameters"]["durationSeconds"] == 8
