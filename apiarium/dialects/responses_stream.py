"""OpenAI Responses API, answer side: the ``Response`` object and its items, and
``ResponsesStream``, which turns an internal chat stream into Responses events.

    delta.reasoning_content (or .reasoning) → a reasoning item, one summary part:
        output_item.added, reasoning_summary_part.added, reasoning_summary_text.delta…,
        reasoning_summary_text.done, reasoning_summary_part.done, output_item.done
    delta.content (and .refusal)          → a message item with one output_text part:
        output_item.added, content_part.added, output_text.delta…, output_text.done,
        content_part.done, output_item.done
    delta.tool_calls[index]               → one function_call item per index (parallel calls
        stay open together), function_call_arguments.delta… and .done; a custom tool's call
        is a custom_tool_call item whose input is sent whole when it closes
    [DONE] / finish()                     → response.completed, or response.incomplete for
                                            finish_reason length / content_filter
    {"error"} frame / fail(err)           → response.failed with error {code, message}

Opening an item of another kind closes the open ones first, so items close in output order.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from .. import sse
from ..errors import ApiError, InvalidRequest, QuotaExceeded, RateLimited, UpstreamError
from .responses_tools import ToolRef, tool_map

_CONTEXT_WORDS = ("context length", "context window", "prompt is too long", "maximum context")
_ECHOED = ("max_output_tokens", "prompt_cache_key", "safety_identifier", "user",
           "top_logprobs", "service_tier")


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(chat_usage: Any) -> dict | None:
    """Chat ``usage`` → Responses ``usage`` (cached, cache-write and reasoning tokens
    included); None when there is none."""
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = _count(chat_usage.get("prompt_tokens")), \
        _count(chat_usage.get("completion_tokens"))
    details = chat_usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    out_details = chat_usage.get("completion_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": _count(details.get("cached_tokens")),
                                     "cache_write_tokens": _count(
                                         details.get("cache_write_tokens"))},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": _count(
                out_details.get("reasoning_tokens"))},
            "total_tokens": _count(chat_usage.get("total_tokens")) or prompt + completion}


def status_of(finish_reason: Any) -> tuple[str, dict | None]:
    """Chat ``finish_reason`` → Response (status, incomplete_details)."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(request: dict, *, response_id: str, created_at: int, status: str,
                    output: list[dict], usage: dict | None = None, error: dict | None = None,
                    incomplete: dict | None = None) -> dict:
    """A ``Response`` echoing the request's settings, as the real API does."""
    def pick(field: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
        """The request's ``field`` when it has the right type, else ``default``."""
        value = request.get(field)
        return value if (isinstance(value, kinds) and not isinstance(value, bool)) \
            or (kinds is bool and isinstance(value, bool)) else default
    metadata = request.get("metadata")
    out: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "error": error, "incomplete_details": incomplete,
        "instructions": pick("instructions", str), "model": str(request.get("model") or ""),
        "output": output, "parallel_tool_calls": pick("parallel_tool_calls", bool, True),
        "temperature": pick("temperature", (int, float)), "top_p": pick("top_p", (int, float)),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": pick("tools", list, []), "store": False, "background": False,
        "metadata": metadata if isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values()) else {},
        "reasoning": pick("reasoning", dict), "text": pick("text", dict),
        "truncation": "disabled", "usage": usage}
    for field in _ECHOED:
        if request.get(field) is not None:
            out[field] = request[field]
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def _custom_input(arguments: str) -> str:
    """The raw input of a custom tool call, from the ``{"input": ...}`` arguments the model
    gave its function stand-in (the arguments themselves when they are not that)."""
    try:
        args = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(args, dict) and len(args) == 1 and isinstance(next(iter(args.values())), str):
        return next(iter(args.values()))
    return arguments


def call_item(ref: ToolRef | None, item_id: str, call_id: str, name: str, arguments: str,
              status: str) -> dict:
    """The output item of a tool call: ``custom_tool_call`` for a custom tool, else
    ``function_call``; with ``namespace`` when the tool came from one."""
    if ref is not None and ref.kind == "custom":
        item = {"type": "custom_tool_call", "id": item_id, "call_id": call_id,
                "name": ref.name, "input": _custom_input(arguments) if arguments else ""}
    else:
        item = {"type": "function_call", "id": item_id, "call_id": call_id,
                "name": ref.name if ref else name, "arguments": arguments or "{}",
                "status": status}
    if ref is not None and ref.namespace:
        item["namespace"] = ref.namespace
    return item


def reasoning_item(item_id: str, text: str) -> dict:
    """A reasoning item whose one summary part is ``text``."""
    return {"type": "reasoning", "id": item_id,
            "summary": [{"type": "summary_text", "text": text}]}


def message_item(item_id: str, text: str, status: str) -> dict:
    """An assistant message item with one ``output_text`` part."""
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def failure(err: ApiError) -> dict:
    """The Responses ``error`` of a failed response: the codes Codex CLI acts on
    (``context_length_exceeded``, ``insufficient_quota``, ``rate_limit_exceeded`` with "try
    again in Ns"), ``invalid_prompt`` for other request errors, else ``server_error``."""
    message, lowered = err.message, err.message.lower()
    if err.code == "context_length_exceeded" or any(w in lowered for w in _CONTEXT_WORDS):
        code = "context_length_exceeded"
    elif isinstance(err, QuotaExceeded) or err.code == "insufficient_quota":
        code = "insufficient_quota"
    elif isinstance(err, RateLimited) or err.status == 429 or err.code in (
            "rate_limit_exceeded", "upstream_rate_limited"):
        code = "rate_limit_exceeded"
        retry = getattr(err, "retry_after", None)
        if retry is not None and "try again in" not in lowered:
            message = f"{message.rstrip().rstrip('.')}. Please try again in {retry:g}s."
    elif 400 <= err.status < 500:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": message}


def _frame_error(error: Any) -> ApiError:
    """The gateway's own mid-stream error frame (``data: {"error": {...}}``) as an ApiError."""
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "The upstream stream failed.")
    code = error.get("code") if isinstance(error.get("code"), str) else None
    kinds: dict[Any, type[ApiError]] = {
        "rate_limit_error": RateLimited, "insufficient_quota": QuotaExceeded,
        "invalid_request_error": InvalidRequest}
    return kinds.get(error.get("type"), UpstreamError)(message, code=code)


def event(kind: str, sequence_number: int, fields: dict) -> bytes:
    """One SSE event: ``event: <kind>`` and the JSON data with ``type`` and
    ``sequence_number``."""
    data = orjson.dumps({"type": kind, "sequence_number": sequence_number, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class ResponsesStream:
    """Translates one internal chat stream into Responses events.

    ``feed(frame)`` takes a raw chat SSE event (bytes; ``[DONE]`` finishes, an ``{"error"}``
    frame fails) or a parsed chunk and returns the events it produces (possibly none);
    ``finish()`` and ``fail(err)`` end the stream (call one when the upstream ends without
    ``[DONE]``); after the terminal event everything returns ``[]``.  ``start()`` gives the
    opening events early (``feed`` sends them first otherwise)."""

    def __init__(self, request: dict, *, response_id: str | None = None) -> None:
        self.request = request
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self.started = self.done = False
        self._refs = tool_map(request)
        self._seq = 0
        self._items: list[dict] = []          # output items, by output_index (open ones too)
        self._open: list[dict] = []           # open items' state: kind, index, pieces...
        self._calls: dict[int, dict] = {}     # open tool calls by the chat tool_calls index
        self._finish_reason: Any = None
        self._usage: dict | None = None

    def _emit(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return event(kind, self._seq - 1, fields)

    def _response(self, status: str, **extra: Any) -> dict:
        return response_object(self.request, response_id=self.id, created_at=self.created_at,
                               status=status, output=list(self._items), usage=self._usage,
                               **extra)

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, once."""
        if self.started:
            return []
        self.started = True
        response = self._response("in_progress")
        return [self._emit("response.created", response=response),
                self._emit("response.in_progress", response=response)]

    def feed(self, frame: bytes | dict) -> list[bytes]:
        """The events for one chat frame."""
        if self.done:
            return []
        chunk: Any = frame
        if isinstance(frame, (bytes, bytearray)):
            _, data = sse.parse(bytes(frame))
            if data is None:
                return []                             # a comment: keep-alive
            if data.strip() == b"[DONE]":
                return self.finish()
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return self.fail(UpstreamError("The upstream sent a stream event that is "
                                               "not JSON."))
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            return self.fail(_frame_error(chunk["error"]))
        out = self.start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_of(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out += self._reasoning(reasoning)
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    out += self._text(text)
            for tc in delta.get("tool_calls") or []:
                if isinstance(tc, dict):
                    out += self._call(tc)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _opening(self, kind: str, item: dict, **state: Any) -> tuple[list[bytes], dict]:
        """Close what is open unless it is of ``kind`` too, then open ``item``."""
        out = self._close(keep=kind)
        rec = {"kind": kind, "index": len(self._items), "id": item["id"], "pieces": [],
               **state}
        self._items.append(item)
        self._open.append(rec)
        out.append(self._emit("response.output_item.added", output_index=rec["index"],
                              item=item))
        return out, rec

    def _current(self, kind: str) -> dict | None:
        return self._open[-1] if self._open and self._open[-1]["kind"] == kind else None

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        rec = self._current("reasoning")
        if rec is None:
            out, rec = self._opening("reasoning", {"type": "reasoning", "id": new_id("rs"),
                                                   "summary": []})
            out.append(self._emit("response.reasoning_summary_part.added", item_id=rec["id"],
                                  output_index=rec["index"], summary_index=0,
                                  part={"type": "summary_text", "text": ""}))
        rec["pieces"].append(text)
        out.append(self._emit("response.reasoning_summary_text.delta", item_id=rec["id"],
                              output_index=rec["index"], summary_index=0, delta=text))
        return out

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        rec = self._current("message")
        if rec is None:
            out, rec = self._opening("message", {"type": "message", "id": new_id("msg"),
                                                 "role": "assistant", "status": "in_progress",
                                                 "content": []})
            out.append(self._emit("response.content_part.added", item_id=rec["id"],
                                  output_index=rec["index"], content_index=0,
                                  part={"type": "output_text", "text": "", "annotations": []}))
        rec["pieces"].append(text)
        out.append(self._emit("response.output_text.delta", item_id=rec["id"],
                              output_index=rec["index"], content_index=0, delta=text,
                              logprobs=[]))
        return out

    def _call(self, tc: dict) -> list[bytes]:
        fn = tc["function"] if isinstance(tc.get("function"), dict) else {}
        index = tc.get("index", 0)
        out: list[bytes] = []
        rec = self._calls.get(index)
        if rec is None:
            name = str(fn.get("name") or "")
            ref = self._refs.get(name)
            custom = ref is not None and ref.kind == "custom"
            item = call_item(ref, new_id("ctc" if custom else "fc"),
                              str(tc.get("id") or new_id("call")), name, "", "in_progress")
            if not custom:
                item["arguments"] = ""
            out, rec = self._opening("call", item, ref=ref, name=name, custom=custom)
            self._calls[index] = rec
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            rec["pieces"].append(piece)
            if not rec["custom"]:
                out.append(self._emit("response.function_call_arguments.delta",
                                      item_id=rec["id"], output_index=rec["index"],
                                      delta=piece))
        return out

    def _render(self, rec: dict, status: str) -> dict:
        """The complete item of an open item's state."""
        text = "".join(rec["pieces"])
        if rec["kind"] == "reasoning":
            return reasoning_item(rec["id"], text)
        if rec["kind"] == "message":
            return message_item(rec["id"], text, status)
        return call_item(rec["ref"], rec["id"], self._items[rec["index"]]["call_id"],
                          rec["name"], text, status)

    def _close(self, keep: str | None = None, status: str = "completed") -> list[bytes]:
        """Close the open items (all but those of kind ``keep``), in output order."""
        out: list[bytes] = []
        for rec in [r for r in self._open if r["kind"] != keep]:
            item = self._render(rec, status)
            where = {"item_id": rec["id"], "output_index": rec["index"]}
            if rec["kind"] == "reasoning":
                text = item["summary"][0]["text"]
                out.append(self._emit("response.reasoning_summary_text.done", **where,
                                      summary_index=0, text=text))
                out.append(self._emit("response.reasoning_summary_part.done", **where,
                                      summary_index=0, part=item["summary"][0]))
            elif rec["kind"] == "message":
                out.append(self._emit("response.output_text.done", **where, content_index=0,
                                      text=item["content"][0]["text"], logprobs=[]))
                out.append(self._emit("response.content_part.done", **where, content_index=0,
                                      part=item["content"][0]))
            else:
                if rec["custom"]:
                    if item["input"]:
                        out.append(self._emit("response.custom_tool_call_input.delta",
                                              **where, delta=item["input"]))
                    out.append(self._emit("response.custom_tool_call_input.done", **where,
                                          input=item["input"]))
                else:
                    out.append(self._emit("response.function_call_arguments.done", **where,
                                          name=item["name"], arguments=item["arguments"]))
            self._items[rec["index"]] = item
            out.append(self._emit("response.output_item.done", output_index=rec["index"],
                                  item=item))
        self._open = [r for r in self._open if r["kind"] == keep]
        self._calls = {k: r for k, r in self._calls.items() if r["kind"] == keep}
        return out

    def finish(self) -> list[bytes]:
        """Close every item, then ``response.completed`` (or ``response.incomplete`` when the
        upstream stopped at the token limit or a content filter)."""
        if self.done:
            return []
        status, incomplete = status_of(self._finish_reason)
        out = self.start() + self._close(status="completed" if incomplete is None
                                         else "incomplete")
        self.done = True
        out.append(self._emit(f"response.{status}",
                              response=self._response(status, incomplete=incomplete)))
        return out

    def fail(self, err: ApiError) -> list[bytes]:
        """``response.failed`` carrying ``err`` as its ``error``: the stream's last event."""
        if self.done:
            return []
        out = self.start()
        for rec in self._open:                       # what was said so far, marked as cut
            self._items[rec["index"]] = self._render(rec, "incomplete")
        self._open, self._calls, self.done = [], {}, True
        out.append(self._emit("response.failed",
                              response=self._response("failed", error=failure(err))))
        return out
