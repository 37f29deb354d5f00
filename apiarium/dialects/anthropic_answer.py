"""Anthropic Messages as a client dialect, answer side: a ``chat.completion`` → a ``Message``;
errors → Anthropic's envelope (``error_body``: statuses and types, context overflows worded
as Anthropic words them); the ``count_tokens`` estimate.  The stream: ``anthropic_stream.py``.

Message (chat → Anthropic):

    reasoning_content | reasoning          → a ``thinking`` block first; its signature is the
                                             upstream's (``thinking_blocks[].signature``) if
                                             it sent one, else ``GATEWAY_SIGNATURE``
    content                                → a ``text`` block (none when empty)
    tool_calls                             → ``tool_use`` blocks (arguments parsed; not a JSON
                                             object → ``{}``, logged)
    finish_reason stop|length|tool_calls|content_filter → end_turn|max_tokens|tool_use|refusal;
                                             stop with a matched stop string (vLLM's
                                             ``stop_reason``) → stop_sequence; calls → tool_use
    usage                                  → input_tokens = prompt - cached - cache creation
                                             (never negative), cache_read_input_tokens =
                                             prompt_tokens_details.cached_tokens, output_tokens
"""
from __future__ import annotations

import logging
import math
import re
import secrets
from typing import Any

import orjson

from ..errors import ApiError, InvalidRequest
from .anthropic_messages import GATEWAY_SIGNATURE

log = logging.getLogger("apiarium")

# count_tokens_estimate: about 4 characters a token (English prose and code), plus framing
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4       # role and separators, per message
IMAGE_TOKENS = 1600        # an image at Anthropic's default largest size (~1.15 MP / 750)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


def new_id(prefix: str = "msg") -> str:
    """A fresh ``msg_…`` / ``toolu_…`` id."""
    return f"{prefix}_{secrets.token_hex(12)}"


def stop_reason(finish_reason: str | None, matched_stop: object = None,
                called_tools: bool = False) -> tuple[str, str | None]:
    """(Anthropic stop_reason, stop_sequence) for a chat ``finish_reason``.  ``tool_use``
    exactly when tools were called and the answer was not cut short: Claude Code waits for a
    tool_use block that never comes when told tool_use without one."""
    if finish_reason in (None, "stop", "tool_calls", "function_call"):
        if called_tools:
            return "tool_use", None
        if finish_reason != "stop" and finish_reason is not None:
            return "end_turn", None
    if finish_reason in (None, "stop") and isinstance(matched_stop, str) and matched_stop:
        return "stop_sequence", matched_stop
    return STOP_REASONS.get(str(finish_reason), "end_turn"), None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def anthropic_usage(usage: dict) -> dict:
    """Chat usage → Anthropic usage.  ``prompt_tokens`` counts cached and cache-writing tokens
    too; Anthropic's ``input_tokens`` counts neither."""
    def n(value: object) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    details = _dict(usage.get("prompt_tokens_details"))
    cached = n(details.get("cached_tokens")) or n(usage.get("cache_read_input_tokens"))
    created = n(details.get("cache_write_tokens")) or n(usage.get("cache_creation_input_tokens"))
    return {"input_tokens": max(0, n(usage.get("prompt_tokens")) - cached - created),
            "output_tokens": n(usage.get("completion_tokens")),
            "cache_creation_input_tokens": created, "cache_read_input_tokens": cached}


def reasoning_text(container: dict) -> str:
    value = container.get("reasoning_content") or container.get("reasoning")
    return value if isinstance(value, str) else ""


def thinking_signature(container: dict) -> str | None:
    """The last signature in ``thinking_blocks`` (how Anthropic-backed chat servers such as
    LiteLLM pass it on), if any."""
    found = None
    for block in container.get("thinking_blocks") or ():
        if isinstance(block, dict) and isinstance(block.get("signature"), str) \
                and block["signature"]:
            found = block["signature"]
    return found


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def call_id(call: dict) -> str:
    """A tool call's id as the upstream gave it, or a fresh ``toolu_…`` one."""
    given = call.get("id")
    return given if isinstance(given, str) and given else new_id("toolu")


def _input_of(call: dict) -> dict:
    fn = _dict(call.get("function"))
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):
        args = None
    if not isinstance(args, dict):
        log.warning("tool call %s: arguments are not a JSON object; sent as {}: %.200r",
                    call.get("id"), fn.get("arguments"))
        return {}
    return args


def from_chat(answer: dict, model: str, *, input_tokens: int | None = None) -> dict:
    """A ``chat.completion`` → an Anthropic ``Message`` for ``model`` (the name the client
    sent).  ``input_tokens``: what to report when the answer has no usage."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices \
        and isinstance(choices[0], dict) else {}
    message = _dict(choice.get("message"))
    content: list[dict] = []
    thought = reasoning_text(message)
    if thought:
        content.append({"type": "thinking", "thinking": thought,
                        "signature": thinking_signature(message) or GATEWAY_SIGNATURE})
    text = _content_text(message.get("content"))
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else ""
    if text or refusal:
        content.append({"type": "text", "text": text or refusal})
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    for call in calls:
        fn = _dict(call.get("function"))
        content.append({"type": "tool_use", "id": call_id(call),
                        "name": str(fn.get("name") or ""), "input": _input_of(call)})
    reason, sequence = stop_reason("content_filter" if refusal and not text
                                   else choice.get("finish_reason"),
                                   choice.get("stop_reason"), bool(calls))
    usage = answer.get("usage")
    if isinstance(usage, dict):
        used = anthropic_usage(usage)
    else:
        chars = len(thought) + len(text) + sum(len(orjson.dumps(b.get("input")))
                                               for b in content if b["type"] == "tool_use")
        used = {"input_tokens": max(0, input_tokens or 0),
                "output_tokens": math.ceil(chars / CHARS_PER_TOKEN)}
    return {"id": new_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": used}


# ---------------------------------------------------------------------- errors
_STATUS_OF_TYPE = {"invalid_request_error": 400, "authentication_error": 401,
                   "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                   "rate_limit_error": 429, "insufficient_quota": 429,
                   "overloaded_error": 503}
_STATUS_OF_CODE = {"upstream_overloaded": 503, "upstream_timeout": 504,
                   "context_length_exceeded": 400, "body_too_large": 413}


def error_from_envelope(chunk: dict) -> ApiError:
    """The ApiError for an OpenAI error envelope met inside a chat stream."""
    err = _dict(chunk.get("error"))
    code = err.get("code") if isinstance(err.get("code"), str) else None
    status = _STATUS_OF_CODE.get(code or "") or _STATUS_OF_TYPE.get(str(err.get("type"))) or 500
    return ApiError(str(err.get("message") or "The upstream failed mid-stream."),
                    code=code, status=status)


# ---------------------------------------------------------------------- Anthropic's envelope
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}


def error_body(err: ApiError, *, request: dict | None = None,
               request_id: str | None = None) -> tuple[int, dict]:
    """(HTTP status, Anthropic error envelope) for ``err``: 400 invalid_request_error,
    401 authentication_error, 403 permission_error, 404 not_found_error, 413
    request_too_large, 429 rate_limit_error, 503 → 529 overloaded_error, other 5xx api_error,
    other 4xx invalid_request_error with their own status.  A context overflow becomes a
    400 worded as Anthropic words it (``prompt_too_long``).  Headers: ``error_headers``."""
    message = prompt_too_long(err, request)
    if message is not None:
        status, kind = 400, "invalid_request_error"
    else:
        status = 529 if err.status == 503 else err.status
        kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500
                                            else "invalid_request_error")
        message = err.message
    body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return status, body


def error_headers(err: ApiError) -> dict[str, str]:
    """The headers to send with ``error_body``: the error's own (``Retry-After`` on 429 and
    overload, ``x-should-retry: false`` on quota), which Anthropic's SDKs honour as they are."""
    return dict(err.headers)


_OVERFLOW = re.compile(
    r"context.{0,3}(length|window|size|limit)|prompt is too long|input is too long|"
    r"too many (input )?tokens|maximum context|reduce the length of the (messages|input)|"
    r"exceeds? the maximum number of tokens|exceeds? the available context", re.IGNORECASE)
_URL = re.compile(r"https?://\S+")
_PROMPT = (r"prompt is too long:\s*(\d+)", r"resulted in (\d+)", r"\((\d+) in the messages",
           r"request has (\d+) input", r"input token count\D{0,4}(\d+)", r"request \((\d+) tok",
           r"contains (\d+) tokens")
_LIMIT = (r"tokens\s*>\s*(\d+)\s*maximum", r"maximum context length is (\d+)",
          r"configured limit of (\d+)", r"maximum number of tokens allowed\D{0,4}(\d+)",
          r"available context size \((\d+)", r"(\d+) maximum context length")
_ASKED = (r"(\d+) in the completion", r"is too large: (\d+)")


def prompt_too_long(err: ApiError, request: dict | None = None) -> str | None:
    """Anthropic's wording of a context overflow, so Claude Code compacts: ``prompt is too
    long: N tokens > M maximum`` — or, when the prompt fits and ``max_tokens`` pushed it over,
    ``input length and `max_tokens` exceed context limit: N + K > M, …`` (Claude Code then
    retries with less).  N and M come from the upstream's message when it gave them; else N
    is ``count_tokens_estimate(request)`` and M is taken as N - 1.  None when ``err`` is not
    an overflow: code ``context_length_exceeded``, or a 4xx that says so in words."""
    said = err.message
    words = _URL.sub("", said)        # a link to docs on "context-window-size" is no overflow
    if err.code != "context_length_exceeded" and not (
            400 <= err.status < 500 and err.status not in (401, 403, 404, 429)
            and _OVERFLOW.search(words)):
        return None
    n, m, asked = (_first(patterns, said) for patterns in (_PROMPT, _LIMIT, _ASKED))
    if n is not None and m is not None and asked is not None and n <= m:
        return (f"input length and `max_tokens` exceed context limit: {n} + {asked} > {m}, "
                f"decrease input length or `max_tokens` and try again")
    if n is None and request is not None and isinstance(request.get("messages"), list):
        n = count_tokens_estimate(request)
    if n is None:
        if m is None:
            return f"prompt is too long: the model's context window is exceeded ({said})"
        n = m + 1
    if m is None:
        m = max(n - 1, 0)
    return f"prompt is too long: {max(n, m + 1)} tokens > {m} maximum"


def _first(patterns: tuple[str, ...], text: str) -> int | None:
    for pattern in patterns:
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            return int(found.group(1))
    return None


# ---------------------------------------------------------------------- count_tokens
def count_tokens_estimate(body: dict) -> int:
    """An estimate of the input tokens of a Messages request, for ``count_tokens`` when the
    upstream has no counter and for ``message_start`` before the upstream reports usage:
    characters of the system prompt, message texts, tool inputs and results, and the JSON of
    the tool definitions, divided by ``CHARS_PER_TOKEN`` and rounded up; plus
    ``MESSAGE_OVERHEAD`` per message and ``IMAGE_TOKENS`` per image or binary document."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be a list of messages.", param="messages")
    tally = [0, 0]                           # characters, images
    _count(body.get("system"), tally)
    for m in messages:
        _count(m.get("content") if isinstance(m, dict) else None, tally)
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        tally[0] += len(orjson.dumps(tool))
    chars, images = tally
    return (math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(messages)
            + IMAGE_TOKENS * images)


def _count(value: object, tally: list[int]) -> None:
    if isinstance(value, str):
        tally[0] += len(value)
    elif isinstance(value, list):
        for item in value:
            _count(item, tally)
    elif isinstance(value, dict):
        kind = value.get("type")
        source = value.get("source")
        source = source if isinstance(source, dict) else {}
        if kind == "image" or (kind == "document" and source.get("type") not in ("text",
                                                                                  "content")):
            tally[1] += 1
        elif kind == "tool_use":
            tally[0] += len(str(value.get("name") or "")) + len(orjson.dumps(value.get("input")))
        elif kind == "document":
            _count(source.get("data") or source.get("content"), tally)
        else:
            for key in ("text", "thinking", "content", "title"):
                _count(value.get(key), tally)

