"""``completions: native`` (issue 15, item 5): a model whose OpenAI-compatible upstream has its
own ``/completions`` gets legacy completions there, the raw prompt and every legacy field as
the client sent them, instead of the prompt turned into one chat turn."""
from __future__ import annotations

import json
import textwrap

import pytest

from apiarium.config import ConfigError, load_config
from tests.conftest import openai_models


@pytest.fixture
def gw(make_gateway, fake_openai):
    return make_gateway(openai_models(fake_openai, models={
        "instruct": {"provider": "up", "upstream": "gpt-3.5-turbo-instruct",
                     "completions": "native"}}), rate_limit={"rpm": 100})


def test_the_raw_prompt_goes_to_the_upstreams_own_completions(gw, fake_openai):
    ip = "127.0.0.81"
    client = gw.sdk(gw.key_for(ip), ip=ip, timeout=15)
    fake_openai.reply_text = "once upon a time"
    answer = client.completions.create(model="instruct", prompt=["Tell me", "a story"],
                                       max_tokens=20, suffix="The end.", echo=False,
                                       logprobs=2, best_of=1)
    sent = fake_openai.last()
    assert sent.path == "/v1/completions"
    assert sent.json == {"model": "gpt-3.5-turbo-instruct", "prompt": ["Tell me", "a story"],
                         "max_tokens": 20, "suffix": "The end.", "echo": False, "logprobs": 2,
                         "best_of": 1}
    assert answer.model == "instruct" and answer.object == "text_completion"
    assert answer.choices[0].text == "once upon a time"
    me = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    assert (me["requests"], me["prompt_tokens"], me["completion_tokens"]) == (
        1, answer.usage.prompt_tokens, answer.usage.completion_tokens)


def test_a_native_stream_is_relayed_and_metered(gw, fake_openai):
    ip = "127.0.0.82"
    client = gw.sdk(gw.key_for(ip), ip=ip, timeout=15)
    fake_openai.reply_text = "one two three four five"
    chunks = list(client.completions.create(model="instruct", prompt="Count", max_tokens=9,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two three four five"
    assert all(c.model == "instruct" and c.choices for c in chunks)    # no usage chunk asked
    assert fake_openai.last().json["stream_options"] == {"include_usage": True}
    me = json.loads(gw.get("/v1/keys/me", ip=ip)[2])["usage"]
    assert (me["prompt_tokens"], me["completion_tokens"]) == (1, 5)


def test_the_translated_path_is_kept_for_other_models(gw, fake_openai):
    client = gw.sdk(gw.key_for("127.0.0.83"), ip="127.0.0.83", timeout=15)
    client.completions.create(model="gpt-5", prompt="Tell me a story", max_tokens=20)
    assert fake_openai.last().path == "/v1/chat/completions"


def test_only_a_kind_with_its_own_completions_may_say_native(tmp_path):
    (tmp_path / "apiarium.yaml").write_text("database: db.sqlite3\n")
    (tmp_path / "models.yaml").write_text(textwrap.dedent("""\
        providers:
          oa: {kind: openai, base_url: "http://127.0.0.1:9", api_key: k}
          claude: {kind: anthropic, base_url: "http://127.0.0.1:9", api_key: k}
        models:
          a: {provider: oa, completions: native, fallbacks: [b]}
          b: {provider: oa}
          c: {provider: claude, completions: native}
        """))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "apiarium.yaml", env={})
    said = sorted(str(p).split("models.yaml:")[1] for p in err.value.problems)
    assert said[0].startswith("5: models.a.fallbacks: 'b' has completions: chat, not native")
    assert said[1].startswith("7: models.c.completions: `native` sends /v1/completions")
    assert len(said) == 2
