"""Legacy ``/v1/completions`` on top of chat: the prompt becomes one user turn.

Every chat model answers legacy completions this way, whatever its provider, so the
catalog's chat models (most of which no upstream serves on ``/completions``) all work.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from . import sse
from .errors import InvalidRequest

# Fields that mean the same in both APIs and are carried over as they are.
_SHARED = ("max_tokens", "temperature", "top_p", "stop", "seed", "user", "presence_penalty",
           "frequency_penalty", "logit_bias", "stream_options")


def prompt_text(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidRequest("`prompt` is empty: send the text to complete.", param="prompt",
                                 code="invalid_prompt")
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        raise InvalidRequest("This gateway takes one prompt per completions request; send the "
                             f"{len(prompt)} prompts as separate requests.", param="prompt")
    if prompt is None:
        raise InvalidRequest("`prompt` is required: the text to complete.", param="prompt",
                             code="missing_prompt")
    raise InvalidRequest("`prompt` must be a string (token arrays are not supported).",
                         param="prompt")


def to_chat(body: dict) -> dict:
    chat = {k: body[k] for k in _SHARED if k in body}
    chat["model"] = body.get("model")
    chat["messages"] = [{"role": "user", "content": prompt_text(body)}]
    chat["stream"] = bool(body.get("stream"))
    return chat


def _choice_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def from_chat(resp: dict, body: dict) -> dict:
    echo = prompt_text(body) if body.get("echo") else ""
    choices = [{"text": echo + _choice_text(c.get("message") or {}), "index": c.get("index", i),
                "logprobs": None, "finish_reason": c.get("finish_reason")}
               for i, c in enumerate(resp.get("choices") or [])]
    out = {"id": str(resp.get("id", "")).replace("chatcmpl", "cmpl", 1),
           "object": "text_completion", "created": resp.get("created"),
           "model": resp.get("model"), "choices": choices}
    if resp.get("usage") is not None:
        out["usage"] = resp["usage"]
    return out


async def stream_from_chat(events: AsyncIterator[bytes], body: dict) -> AsyncIterator[bytes]:
    """Chat SSE frames → text_completion SSE frames (role-only frames are dropped)."""
    echo = prompt_text(body) if body.get("echo") else ""
    async for event in events:
        _, data = sse.parse(event)
        if data is None or data.startswith(b"[DONE]"):
            yield event
            continue
        chunk = orjson.loads(data)
        if "error" in chunk or "choices" not in chunk:
            yield event
            continue
        choices = []
        for c in chunk["choices"]:
            delta = c.get("delta") or {}
            text = delta.get("content") or ""
            if echo and "role" in delta:
                text, echo = echo + text, ""
            if not text and c.get("finish_reason") is None and chunk["choices"]:
                continue
            choices.append({"text": text, "index": c.get("index", 0), "logprobs": None,
                            "finish_reason": c.get("finish_reason")})
        if chunk["choices"] and not choices:
            continue
        out = {"id": str(chunk.get("id", "")).replace("chatcmpl", "cmpl", 1),
               "object": "text_completion", "created": chunk.get("created"),
               "model": chunk.get("model"), "choices": choices}
        if "usage" in chunk:
            out["usage"] = chunk["usage"]
        yield sse.encode(out)
