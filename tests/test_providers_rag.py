"""`kind: rag` as a unit (apiarium/providers/rag.py, CONTRACT §2): the sources block, the
sentence cutting of the emulated stream, the token estimate, and chat over ``POST /query``
(request, answer, stream), checked with the openai SDK's ChatCompletion / ChatCompletionChunk.
The service is a small aiohttp server on loopback."""
from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apiarium import sse
from apiarium.catalog import ModelSpec, ProviderSpec
from apiarium.errors import InvalidRequest, UpstreamError
from apiarium.providers.rag import RagProvider, estimate_tokens, format_sources, sentences
from tests.fakes.base import loopback

KEY = "hub-key-0123456789"
ANSWER = "Bees dance to share where food is. The waggle run points to it!"
SOURCES = [{"title": "Waggle dance", "url": "https://en.wikipedia.org/wiki/Waggle_dance"},
           {"title": "Honey bee", "url": "https://example.org/bees"}]
CITED = ("\n\nSources:\n1. [Waggle dance](https://en.wikipedia.org/wiki/Waggle_dance)\n"
         "2. [Honey bee](https://example.org/bees)")
MESSAGES = [{"role": "system", "content": "Answer from the knowledge base."},
            {"role": "user", "content": "How do bees tell each other where food is?"},
            {"role": "assistant", "content": "They dance."},
            {"role": "user", "content": [{"type": "text", "text": "Tell me more."}]}]
QUERY = ("Answer from the knowledge base.\n\nHow do bees tell each other where food is?"
         "\n\nTell me more.")


# ---------------------------------------------------------------------------- estimate_tokens

@pytest.mark.parametrize("text, tokens", [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2),
                                          ("x" * 400, 100), ("x" * 401, 101)])
def test_tokens_are_estimated_at_four_characters_each_rounded_up(text, tokens):
    assert estimate_tokens(text) == tokens


# ---------------------------------------------------------------------------- sources

def test_sources_are_a_numbered_markdown_list():
    assert format_sources(SOURCES) == CITED


@pytest.mark.parametrize("sources", [None, [], "https://x", {"title": "t"}, [None, 3, "x"],
                                     [{"title": "", "url": ""}, {"title": "  ", "url": None}]])
def test_nothing_to_cite_gives_no_section(sources):
    assert format_sources(sources) == ""


def test_a_source_without_url_or_title_and_duplicates():
    got = format_sources([
        {"title": "Only a title"},
        {"url": "https://example.org/only-url"},
        {"title": "Waggle dance", "url": "https://en.wikipedia.org/wiki/Waggle_dance"},
        {"title": " Waggle dance ", "url": "https://en.wikipedia.org/wiki/Waggle_dance "},
        "not a source"])
    assert got.splitlines()[:3] == ["", "", "Sources:"]
    assert got.splitlines()[3:] == [
        "1. Only a title",
        "2. [https://example.org/only-url](https://example.org/only-url)",
        "3. [Waggle dance](https://en.wikipedia.org/wiki/Waggle_dance)"]


def test_titles_and_urls_cannot_break_the_markdown():
    got = format_sources([{"title": "[Draft] Bees [v2]",
                           "url": "https://example.org/a b (c)<d>"}])
    assert got.splitlines()[-1] == (
        r"1. [\[Draft\] Bees \[v2\]](https://example.org/a%20b%20%28c%29%3Cd%3E)")


# ---------------------------------------------------------------------------- sentences

@pytest.mark.parametrize("text, pieces", [
    (ANSWER, ["Bees dance to share where food is. ", "The waggle run points to it!"]),
    ("One. Two? Three", ["One. ", "Two? ", "Three"]),
    ("Pi is 3.14 today.", ["Pi is 3.14 today."]),            # no space after the point
    ("Line one\nLine two", ["Line one\n", "Line two"]),
    ("Wait...  what?", ["Wait...  ", "what?"]),
    ("no punctuation", ["no punctuation"]),
    ("", [""])])
def test_sentences(text, pieces):
    assert sentences(text) == pieces


@pytest.mark.parametrize("text", [ANSWER + CITED, "a.b. c!\n\n d?  e", " . . .", "\n\n\n"])
def test_sentences_join_back_to_the_text(text):
    assert "".join(sentences(text)) == text


# ---------------------------------------------------------------------------- chat

class Service:
    """The RAG service on loopback: answers ``reply`` to every request, recording
    (method, path, headers, JSON body)."""

    def __init__(self, reply: Any, status: int = 200) -> None:
        self.reply, self.status = reply, status
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path,
                          {k.lower(): v for k, v in request.headers.items()},
                          await request.json()))
        return web.json_response(self.reply, status=self.status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Service]:
        async with loopback(self._handle) as self.url:
            yield self


MODEL = ModelSpec(alias="gemini-3", upstream="kb-bees", provider=ProviderSpec(
    name="hub", kind="rag", base_url="", api_key=KEY))


def run(reply: Any, test: Callable[[RagProvider], Awaitable[Any]]) -> tuple[Any, list]:
    async def main() -> tuple[Any, list]:
        service = Service(reply)
        async with service.running(), aiohttp.ClientSession() as session:
            spec = ProviderSpec(name="hub", kind="rag", base_url=service.url, api_key=KEY,
                                timeout_s=5)
            return await test(RagProvider(spec, session)), service.seen
    return asyncio.run(main())


def chat(reply: Any, body: dict | None = None) -> tuple[dict, list]:
    async def test(p: RagProvider) -> dict:
        return await p.chat(MODEL, body or {"model": "gemini-3", "messages": MESSAGES}, None)
    return run(reply, test)


def stream(reply: Any, body: dict | None = None) -> tuple[list[bytes], list]:
    async def test(p: RagProvider) -> list[bytes]:
        body_ = body or {"model": "gemini-3", "stream": True, "messages": MESSAGES}
        return [f async for f in p.chat_stream(MODEL, body_, None)]
    return run(reply, test)


def test_a_question_and_its_answer_with_sources():
    out, seen = chat({"answer": ANSWER, "sources": SOURCES})
    parsed = ChatCompletion.model_validate(out)
    assert (out["object"], out["model"]) == ("chat.completion", "gemini-3")
    assert parsed.choices[0].message.content == ANSWER + CITED
    assert parsed.choices[0].finish_reason == "stop"
    assert out["usage"]["prompt_tokens"] == math.ceil(len(QUERY) / 4)
    assert out["usage"]["completion_tokens"] == math.ceil(len(ANSWER + CITED) / 4)
    assert out["usage"]["total_tokens"] == (out["usage"]["prompt_tokens"]
                                            + out["usage"]["completion_tokens"])
    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/query")
    assert headers["authorization"] == f"Bearer {KEY}"
    # every system and user turn, flattened; the assistant's turns are not asked again
    assert body == {"query": QUERY, "model": "kb-bees"}


def test_sampling_fields_are_not_sent():
    _, seen = chat({"answer": "ok"}, {"model": "gemini-3", "temperature": 0.1,
                                      "max_tokens": 5, "tools": [{"type": "function"}],
                                      "messages": [{"role": "user", "content": "q"}]})
    assert seen[0][3] == {"query": "q", "model": "kb-bees"}


def test_an_answer_without_sources_has_no_section():
    out, _ = chat({"answer": ANSWER, "sources": []})
    assert out["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("reply", [{"sources": SOURCES}, {"answer": None}, {"answer": 42}])
def test_an_answer_without_an_answer_string_is_502(reply):
    with pytest.raises(UpstreamError) as exc:
        chat(reply)
    assert exc.value.status == 502 and "`answer`" in exc.value.message


def test_messages_without_a_question_are_400_and_ask_nothing():
    body = {"model": "gemini-3", "messages": [{"role": "assistant", "content": "Hello?"},
                                              {"role": "user", "content": "   "}]}
    with pytest.raises(InvalidRequest) as exc:
        chat({"answer": "x"}, body)
    assert exc.value.param == "messages"


def test_the_emulated_stream():
    """Role chunk, a chunk per sentence, the sources, the stop chunk, the usage chunk (asked
    for), [DONE]; every chunk a valid ChatCompletionChunk with one id."""
    frames, seen = stream({"answer": ANSWER, "sources": SOURCES}, {
        "model": "gemini-3", "stream": True, "stream_options": {"include_usage": True},
        "messages": MESSAGES})
    assert frames[-1] == sse.DONE and len(seen) == 1
    chunks = [orjson.loads(sse.parse(f)[1]) for f in frames[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert (c["object"], c["model"]) == ("chat.completion.chunk", "gemini-3")
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [{"role": "assistant", "content": ""},
                      {"content": "Bees dance to share where food is. "},
                      {"content": "The waggle run points to it!"},
                      {"content": CITED}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == math.ceil(len(ANSWER + CITED) / 4)
    assert chunks[-1]["usage"]["prompt_tokens"] == math.ceil(len(QUERY) / 4)


def test_a_stream_without_include_usage_or_sources():
    frames, _ = stream({"answer": "Short."})
    chunks = [orjson.loads(sse.parse(f)[1]) for f in frames[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Short."}, {}]
    assert all("usage" not in c for c in chunks)


def test_an_empty_answer_streams_only_its_sources():
    frames, _ = stream({"answer": "", "sources": SOURCES[:1]})
    deltas = [orjson.loads(sse.parse(f)[1])["choices"][0]["delta"] for f in frames[:-1]]
    assert deltas == [{"role": "assistant", "content": ""},
                      {"content": format_sources(SOURCES[:1])}, {}]


def test_a_failed_query_fails_before_the_stream_starts():
    async def test(p: RagProvider) -> list[bytes]:
        return [f async for f in p.chat_stream(MODEL, {"messages": MESSAGES}, None)]
    with pytest.raises(UpstreamError):
        run({"nope": True}, test)
