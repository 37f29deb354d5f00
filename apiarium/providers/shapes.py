"""OpenAI shapes that every translating provider builds: responses, stream chunks, usage,
and the pieces of an OpenAI request they all read (message text, data: URLs)."""
from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from typing import Any

import orjson

from .. import sse
from ..errors import InvalidRequest


def new_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt: int, completion: int, cached: int | None = None,
          reasoning: int | None = None) -> dict:
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion}
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def completion(alias: str, content: str | None, finish_reason: str,
               tool_calls: list[dict] | None = None, usage_: dict | None = None,
               id_: str | None = None, reasoning: str | None = None) -> dict:
    """A non-streaming ``chat.completion``.  ``tool_calls`` items are OpenAI-shaped;
    ``reasoning``: the model's thinking, as ``reasoning_content`` (when the client asked)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    out = {"id": id_ or new_id(), "object": "chat.completion", "created": int(time.time()),
           "model": alias, "choices": [{"index": 0, "message": message, "logprobs": None,
                                        "finish_reason": finish_reason}]}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def tool_call(id_: str, name: str, arguments: str, extra: dict | None = None) -> dict:
    """An OpenAI tool call; ``extra``: its ``extra_content`` (e.g. Google's thought signature,
    as Google's own OpenAI endpoint carries it)."""
    call = {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
    if extra:
        call["extra_content"] = extra
    return call


def google_extra(signature: str | None) -> dict | None:
    """``extra_content`` carrying a Gemini thought signature (None without one)."""
    return {"google": {"thought_signature": signature}} if signature else None


def client_signature(call: Any) -> str | None:
    """The thought signature a client sent back on a tool call (``extra_content.google``)."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


class Chunks:
    """Encodes the ``chat.completion.chunk`` frames of one translated stream."""
    __slots__ = ("_head", "include_usage")

    def __init__(self, alias: str, include_usage: bool = False, id_: str | None = None) -> None:
        # every chunk repeats id, object, created and model: encode that prefix once
        head = sse.encode({"id": id_ or new_id(), "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": alias})
        self._head = head[:-3] + b","          # strip the closing brace and "\n\n"
        self.include_usage = include_usage

    def _frame(self, body: bytes) -> bytes:
        return self._head + body + b"}\n\n"

    def delta(self, delta: dict, finish_reason: str | None = None,
              logprobs: dict | None = None) -> bytes:
        return self._frame(b'"choices":' + orjson.dumps(
            [{"index": 0, "delta": delta, "logprobs": logprobs,
              "finish_reason": finish_reason}]))

    def role(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def content(self, text: str, logprobs: dict | None = None) -> bytes:
        return self.delta({"content": text}, logprobs=logprobs)

    def reasoning(self, text: str) -> bytes:
        return self.delta({"reasoning_content": text})

    def tool_start(self, index: int, id_: str, name: str, arguments: str = "",
                   extra: dict | None = None) -> bytes:
        call: dict[str, Any] = {"index": index, "id": id_, "type": "function",
                                "function": {"name": name, "arguments": arguments}}
        if extra:
            call["extra_content"] = extra
        return self.delta({"tool_calls": [call]})

    def tool_args(self, index: int, fragment: str) -> bytes:
        return self.delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def finish(self, reason: str) -> bytes:
        return self.delta({}, reason)

    def usage(self, usage_: dict) -> bytes | None:
        """The final usage chunk, or None when the client did not ask for it."""
        if not self.include_usage:
            return None
        return self._frame(b'"choices":[],"usage":' + orjson.dumps(usage_))


def assistant_tool_calls(message: dict, where: str) -> list[tuple[str | None, str, dict]]:
    """(id, name, arguments as an object) of each of an assistant message's ``tool_calls``,
    checked: a 400 naming the field for a call without a name or with arguments that are not
    a JSON object."""
    calls = []
    for k, tc in enumerate(message.get("tool_calls") or []):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(f"`{where}.tool_calls[{k}]` needs a function with a name.",
                                 param=f"{where}.tool_calls[{k}]")
        param = f"{where}.tool_calls[{k}].function.arguments"
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            args = None
        if not isinstance(args, dict):
            raise InvalidRequest(f"`{param}` must be a JSON object encoded as a string.",
                                 param=param)
        calls.append((tc.get("id"), fn["name"], args))
    return calls


def wants_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def text_of(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return str(content)


def flatten_prompt(messages: list[dict]) -> str:
    """Every user/system/developer turn's text, in order, one paragraph each."""
    return "\n\n".join(t for t in (text_of(m.get("content")) for m in messages
                                   if m.get("role") in ("user", "system", "developer")) if t)


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,"
                       r"(?P<data>.*)$", re.S)


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:image/png;base64,...`` → (mime type, base64 text), validated."""
    m = _DATA_URL.match(url or "")
    if not m:
        raise InvalidRequest(f"`{param}` must be a base64 data: URL "
                             f"(data:image/png;base64,...).", param=param)
    data = m.group("data").strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"`{param}` holds invalid base64 data.", param=param) from None
    return (m.group("mime") or "application/octet-stream"), data
