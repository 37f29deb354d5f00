"""`kind: rag`: a retrieval-augmented answering service (CONTRACT section 2).

Request:  ``POST {base_url}/query`` with ``Authorization: Bearer <api_key>`` and ``{"query":
          <every system/developer/user turn's text, flattened>, "model": <upstream id>}``.
          Sampling fields (temperature, max_tokens, tools ...) have no meaning there: ignored.
Answer:   ``{"answer": "...", "sources": [{"title": "...", "url": "..."}]}`` becomes the assistant
          message's content: the answer, then, when there are sources, a Markdown list

              Sources:
              1. [Title](https://url)

          finish_reason is always ``stop``.  An answer without an ``answer`` string is a 502.
Usage:    the service reports none, so it is estimated at one token per 4 characters (rounded
          up) of the query (prompt) and of the content (completion), OpenAI's rule of thumb
          for English text.
Stream:   the service does not stream; the whole answer is fetched first (so upstream errors
          are ordinary HTTP errors), then sent as a stream: role chunk, one content frame per
          sentence of the answer, one for the sources block, the ``stop`` finish chunk, the
          usage chunk when ``stream_options.include_usage`` asks for it, ``[DONE]``.
"""
from __future__ import annotations

import math
import re
from collections.abc import AsyncGenerator
from typing import Any

from .. import sse
from ..catalog import ModelSpec
from ..errors import InvalidRequest, UpstreamError
from .base import Provider
from .shapes import Chunks, completion, flatten_prompt, usage, wants_usage

# a sentence: up to and including its closing punctuation and the whitespace after it
_SENTENCE = re.compile(r".*?(?:[.!?](?=\s|$)\s*|\n\s*|$)", re.S)
_URL_UNSAFE = {" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"}


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def format_sources(sources: Any) -> str:
    """``"\\n\\nSources:\\n1. [Title](url)\\n2. ..."``; empty when there is nothing to cite."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for src in sources if isinstance(sources, list) else []:
        if not isinstance(src, dict):
            continue
        title = str(src.get("title") or "").strip()
        url = str(src.get("url") or "").strip()
        if not (title or url) or (title, url) in seen:
            continue
        seen.add((title, url))
        label = (title or url).replace("[", "\\[").replace("]", "\\]")
        if url:
            url = "".join(_URL_UNSAFE.get(c, c) for c in url)
            lines.append(f"{len(lines) + 1}. [{label}]({url})")
        else:
            lines.append(f"{len(lines) + 1}. {label}")
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""


def sentences(text: str) -> list[str]:
    """``text`` cut after each sentence; ``"".join(sentences(t)) == t``."""
    return [s for s in _SENTENCE.findall(text) if s] or [text]


class RagProvider(Provider):
    """Bearer ``api_key`` (the base class's ``auth_headers``); ``/query`` → chat."""

    kind = "rag"
    owned_by = "google"

    async def _ask(self, model: ModelSpec, body: dict[str, Any]) -> tuple[str, str, str]:
        """(query, answer, sources block) for one chat request."""
        self.require_configured()
        query = flatten_prompt(body.get("messages") or [])
        if not query.strip():
            raise InvalidRequest(f"`{model.alias}` answers questions: the messages hold no "
                                 f"user or system text to ask.", param="messages")
        data = await self.call_json("POST", f"{self.spec.base_url}/query",
                                    json={"query": query, "model": model.upstream})
        answer = data.get("answer")
        if not isinstance(answer, str):
            raise UpstreamError(f"The upstream provider `{self.spec.name}` answered without an "
                                f"`answer` string.")
        return query, answer, format_sources(data.get("sources"))

    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        query, answer, cited = await self._ask(model, body)
        content = answer + cited
        return completion(model.alias, content, "stop",
                          usage_=usage(estimate_tokens(query), estimate_tokens(content)))

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncGenerator[bytes, None]:
        query, answer, cited = await self._ask(model, body)
        chunks = Chunks(model.alias, wants_usage(body))
        yield chunks.role()
        for piece in sentences(answer) if answer else []:
            yield chunks.content(piece)
        if cited:
            yield chunks.content(cited)
        yield chunks.finish("stop")
        tail = chunks.usage(usage(estimate_tokens(query), estimate_tokens(answer + cited)))
        if tail is not None:
            yield tail
        yield sse.DONE
