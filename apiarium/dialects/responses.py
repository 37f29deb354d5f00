"""OpenAI Responses API (``POST /v1/responses``, ``/v1/responses/compact``), stateless, over the
internal chat shape.  The handler imports this module only.  Behind it: ``responses_input``
(request → chat), ``responses_tools`` (tools both ways), ``responses_compaction`` (the
gateway's compaction items) and ``responses_stream`` (the Response object and the stream).

    to_chat(body, seal=)             Responses request → internal chat body (InvalidRequest on
                                     anything it cannot carry, naming the field's path)
    check_stateless / check_portable the refusals alone (the native OpenAI path needs only
                                     the first)
    from_chat(answer, body)          chat.completion → Response
    ResponsesStream(body)            chat.completion.chunk frames → Responses SSE events
    native_body(body, seal)          the request as an OpenAI upstream gets it natively
    NativeTail(body)                 watches a natively relayed stream, to end it if it is cut
    failed_event(err, body)          one ``response.failed`` event, for an error outside a stream
    compact(body, seal)              ``/responses/compact`` → one compaction item
    is_compaction_trigger(body), compaction_response(body, seal), stream_response(response)
                                     Codex's remote compaction v2 on ``/responses``
    CompactionSeal(key, owner)       signs the compaction items one API key makes and opens
                                     only those (the handler makes one per request)

Every event is ``event: <type>\\ndata: <json>\\n\\n`` with an increasing ``sequence_number``, and
a stream ends with exactly one of ``response.completed``, ``response.incomplete`` or
``response.failed``.  Chat answers are read leniently: ``reasoning_content`` (or ``reasoning``)
becomes a reasoning item with one summary part, ``tool_calls`` become ``function_call`` items,
or ``custom_tool_call`` items for the request's custom tools (namespace restored).
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from .. import sse
from ..errors import ApiError, InvalidRequest
from ..passthrough import refuse_stored
from .responses_compaction import (
    SEAL_PURPOSE,
    CompactionSeal,
    compaction_item,
    expand_compactions,
    is_compaction_trigger,
)
from .responses_input import check_stateless, compaction_of, to_chat
from .responses_stream import (
    ResponsesStream,
    call_item,
    event,
    failure,
    message_item,
    new_id,
    reasoning_item,
    response_object,
    status_of,
    usage_of,
)
from .responses_tools import SKIPPED_HOSTED_TOOLS, check_portable, tool_map

__all__ = ["SEAL_PURPOSE", "SKIPPED_HOSTED_TOOLS", "CompactionSeal", "NativeTail",
           "ResponsesStream", "check_portable",
           "check_stateless", "compact", "compaction_item", "compaction_response",
           "failed_event", "failure", "from_chat", "is_compaction_trigger", "native_body",
           "stream_response", "to_chat", "usage_of"]
TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


def from_chat(answer: dict, request: dict) -> dict:
    """A ``chat.completion`` → the ``Response`` for the Responses ``request`` it answers."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    status, incomplete = status_of(choice.get("finish_reason"))
    refs = tool_map(request)
    output = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(new_id("rs"), reasoning))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    refusal = message.get("refusal")
    if (isinstance(content, str) and content) or (isinstance(refusal, str) and refusal):
        item = message_item(new_id("msg"), content or "", status)
        if refusal and not content:
            item["content"] = [{"type": "refusal", "refusal": refusal}]
        output.append(item)
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        name = str(fn.get("name") or "")
        output.append(call_item(refs.get(name), new_id("fc"), tc.get("id") or new_id("call"),
                                 name, str(fn.get("arguments") or ""), "completed"))
    created = answer.get("created")
    return response_object(request, response_id=new_id("resp"),
                           created_at=created if isinstance(created, int) else int(time.time()),
                           status=status, output=output, usage=usage_of(answer.get("usage")),
                           incomplete=incomplete)


def failed_event(err: ApiError, request: dict | None = None, *,
                 sequence_number: int = 0) -> bytes:
    """One ``response.failed`` event for ``err``.  Before anything was sent, answer with the
    HTTP status and ``err.envelope()`` instead (Codex retries 429s by their Retry-After)."""
    response = response_object(request or {}, response_id=new_id("resp"),
                               created_at=int(time.time()), status="failed", output=[],
                               error=failure(err))
    return event("response.failed", sequence_number, {"response": response})


def stream_response(response: dict) -> list[bytes]:
    """A finished ``Response`` as events: created, in_progress, each output item added and
    done, then its terminal event (the shape Codex reads a compaction answer in)."""
    items = response.get("output") or []
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[tuple[str, dict]] = [("response.created", {"response": opening}),
                                      ("response.in_progress", {"response": opening})]
    for i, item in enumerate(items):
        events.append(("response.output_item.added", {"output_index": i, "item": item}))
        events.append(("response.output_item.done", {"output_index": i, "item": item}))
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}
    events.append((terminal.get(response.get("status", ""), "response.failed"),
                   {"response": response}))
    return [event(kind, n, fields) for n, (kind, fields) in enumerate(events)]


def _no_usage() -> dict:
    return usage_of({}) or {}


def compaction_response(body: dict, seal: CompactionSeal) -> dict:
    """The ``Response`` to a compaction-trigger request: exactly one ``compaction`` item
    holding the conversation, signed with ``seal`` (no model is called)."""
    return response_object(body, response_id=new_id("resp"), created_at=int(time.time()),
                           status="completed", output=[compaction_of(body, seal)],
                           usage=_no_usage())


def compact(body: dict, seal: CompactionSeal) -> dict:
    """``POST /v1/responses/compact`` ``{model, input, instructions}`` → the compacted
    response: one ``compaction`` item, signed with ``seal``, that ``to_chat`` expands when it
    comes back with the same key."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return {"id": new_id("resp"), "object": "response.compaction",
            "created_at": int(time.time()), "output": [compaction_of(body, seal)],
            "usage": _no_usage()}


# ---------------------------------------------------------------------- native passthrough
def native_body(body: dict, seal: CompactionSeal) -> dict:
    """The request as an OpenAI upstream gets it on its own ``/responses``: the stateful
    fields refused (``check_stateless``); the gateway's own compaction items expanded (only it
    can read them, with ``seal``, the requesting key's; OpenAI's are kept); then what would
    reach this gateway's own OpenAI account refused (``check_unowned``), in the items the
    client sent and in those its compactions held alike; ``store`` false.  ``include``,
    ``reasoning`` and the rest pass as the client sent them; hosted tools as the model
    allows (``passthrough.native_responses``)."""
    check_stateless(body)
    items = body.get("input")
    if isinstance(items, list) and any(isinstance(i, dict) and i.get("type") == "compaction"
                                       for i in items):
        expanded = expand_compactions(items, seal, keep_foreign=True)
        check_unowned(body, expanded)
        body = {**body, "input": [x for _, x in expanded]}
    else:
        check_unowned(body)
    return {**body, "store": False}


class NativeTail:
    """Watches the events of a Responses stream relayed as the upstream sent them, so that the
    gateway can end it in the dialect when it is cut (upstream gone, shutdown): ``fail(err)``
    is a ``response.failed`` for the same response, numbered after the last event relayed
    (nothing once a terminal event went out).  Only references are kept per event; the
    first and last are parsed when (and if) a failure needs them."""

    def __init__(self, request: dict) -> None:
        self.request = request
        self.first: bytes | None = None
        self.last: bytes | None = None
        self.done = False

    async def watch(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for frame in frames:
            if self.first is None:
                self.first = frame
            self.last = frame
            yield frame

    def fail(self, err: ApiError) -> bytes:
        if self.done or (self.last is not None and any(t in self.last[:60] for t in TERMINAL)):
            return b""
        self.done = True
        last, first = _data(self.last), _data(self.first)
        seq = last.get("sequence_number")
        opened = first.get("response")
        opened = opened if isinstance(opened, dict) else {}
        created = opened.get("created_at")
        response = response_object(
            self.request, response_id=str(opened.get("id") or new_id("resp")),
            created_at=created if isinstance(created, int) else int(time.time()),
            status="failed", output=[], error=failure(err))
        return event("response.failed", seq + 1 if isinstance(seq, int) else 0,
                     {"response": response})


def _data(frame: bytes | None) -> dict:
    """The JSON object of one SSE event ({} when there is none)."""
    data = sse.parse(frame)[1] if frame else None
    try:
        obj = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        obj = None
    return obj if isinstance(obj, dict) else {}


def check_unowned(body: dict, items: list[tuple[str, Any]] | None = None) -> None:
    """Refuse what names things stored in the gateway's OpenAI account, which a key holder
    must not reach: item references, uploaded files (a ``file_id`` anywhere in an item's
    content or output: message parts, tool outputs, computer screenshots) and an existing
    code-interpreter container.  (``file_search``, which searches the account's vector
    stores, is a hosted tool a model must allow.)  ``items`` are the (path, item) of the
    input to check, if not the body's own ``input`` (its compactions expanded)."""
    if items is None:
        value = body.get("input")
        items = [(f"input[{i}]", x) for i, x in enumerate(value if isinstance(value, list)
                                                           else [])]
    for where, item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "item_reference" or ("role" not in item and "type" not in item):
            raise InvalidRequest(f"`{where}`: item references need responses stored on "
                                 f"the server, and this gateway stores none; send the item "
                                 f"itself.", param=where, code="unsupported_parameter")
        refuse_stored(item, where)
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        box = tool.get("container") if kind == "code_interpreter" else {}
        if not isinstance(box, dict) or (box or {}).get("file_ids"):
            raise InvalidRequest(f"`tools[{i}].container`: only a new container without "
                                 f"uploaded files ({{\"type\": \"auto\"}}) can be used here, "
                                 f"not an existing one or the account's files.",
                                 param=f"tools[{i}].container")
