"""The OpenAI fake's ``POST /v1/responses`` (whole and streamed), strict as OpenAI is.

Every body is validated as the `openai` SDK's ``ResponseCreateParams`` (pydantic over the
SDK's TypedDicts, unknown fields refused, nested lists walked), and what the gateway must not
send is refused on top: ``store`` other than false (the gateway keeps no state), and the
stateful fields (``previous_response_id``, ``conversation``).  What OpenAI takes beyond the
SDK's types, as Codex CLI sends it to OpenAI (``CLIENT_EXTRAS``: a top-level
``client_metadata``, client ``id``s on input messages), is set aside before validating.  The
answer is built as the SDK's ``Response`` and each stream event as its
``ResponseStreamEvent``, validated.

Text: ``answer_for`` the last user text (``echo: …``); a tool call when the request declares
tools and ``tool_call_next`` / ``reply_tool_call`` says so; before it, one output item for each
of ``hosted_calls`` (``web_search_call``, ``image_generation_call``, ``code_interpreter_call``:
what a hosted tool leaves in the output).  ``service_tier`` is answered as the tier that served
the request (``default`` for ``auto``).  Usage: input tokens = words of
the instructions and every input text (function outputs included), ``cached_tokens`` of them
from the prompt cache; output tokens = words of the answer, plus ``REASONING_TOKENS`` when
the request asks for reasoning (counted in ``output_tokens_details.reasoning_tokens``)."""
from __future__ import annotations

import secrets
import time
from typing import Any

import pydantic
from aiohttp import web
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses import response_create_params as rcp
from pydantic import ConfigDict, TypeAdapter

from .anthropic_checks import _walk
from .base import JSON, split_pieces, sse_event, words

REASONING_TOKENS = 4
CLIENT_EXTRAS = ("client_metadata",)
_PARAMS = {
    False: TypeAdapter(list[rcp.ResponseCreateParamsNonStreaming],
                       config=ConfigDict(extra="forbid")),
    True: TypeAdapter(list[rcp.ResponseCreateParamsStreaming], config=ConfigDict(extra="forbid")),
}
_EVENT = TypeAdapter(ResponseStreamEvent)


def request_problem(body: Any) -> str | None:
    """Why ``body`` is not a request OpenAI would take from this gateway (None: it is)."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if body.get("store") is not False:
        return "the gateway must send `store: false`"
    for field in ("previous_response_id", "conversation"):
        if body.get(field):
            return f"the gateway must not send `{field}`"
    typed = {k: v for k, v in body.items() if k not in CLIENT_EXTRAS}
    if isinstance(typed.get("input"), list):
        typed["input"] = [{k: v for k, v in i.items() if k != "id"} if isinstance(i, dict)
                          and i.get("type", "message") == "message" else i
                          for i in typed["input"]]
    try:
        _walk(_PARAMS[bool(body.get("stream"))].validate_python([typed])[0], ())
    except pydantic.ValidationError as exc:
        errors = exc.errors()     # a field no branch of a union knows is the likeliest fault
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        where = [str(p) for p in err["loc"][1:] if not str(p).startswith(("list[", "union["))]
        return f"{'.'.join(where)}: {err['msg']}"
    except ValueError as exc:
        return str(exc)
    return None


def _texts(value: Any) -> list[str]:
    """Every text of an input item or content (strings, ``text`` and ``output`` fields)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for k in ("text", "content", "output") if k in value
                for t in _texts(value[k])]
    return []


def _last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            return " ".join(_texts(item.get("content")))
    return ""


def served_tier(body: dict) -> dict:
    """The ``service_tier`` field of the answer: the tier asked for (``default`` for
    ``auto``, and ``priority`` for ``fast``, as OpenAI reports them); none if none was."""
    tier = body.get("service_tier")
    if not isinstance(tier, str):
        return {}
    return {"service_tier": {"auto": "default", "fast": "priority"}.get(tier, tier)}


# what each hosted tool's call leaves in the output (``n``: its place among the calls)
HOSTED_ITEMS = {
    "web_search_call": lambda n: {"type": "web_search_call", "id": f"ws_fake{n:02d}",
                                  "status": "completed",
                                  "action": {"type": "search", "query": "bees"}},
    "image_generation_call": lambda n: {"type": "image_generation_call", "id": f"ig_fake{n:02d}",
                                        "status": "completed", "result": "aGl2ZQ=="},
    "code_interpreter_call": lambda n: {"type": "code_interpreter_call",
                                        "id": f"ci_fake{n:02d}", "status": "completed",
                                        "code": "print(6 * 7)", "container_id": "cntr_fake",
                                        "outputs": [{"type": "logs", "logs": "42"}]},
}


def _usage(prompt: int, output: int, cached: int, reasoning: int) -> dict:
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output + reasoning,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output + reasoning}


async def responses(fake, request: web.Request) -> web.StreamResponse:
    """The route: answer a Responses request as OpenAI would (see the module doc)."""
    body = request[JSON]
    problem = request_problem(body)
    if problem:
        return fake.json_response({"error": {"message": problem, "type": "invalid_request_error",
                                             "param": None, "code": None}}, 400)
    prompt = sum(words(t) for t in _texts(body.get("instructions")) + _texts(body["input"]))
    tool = fake.tool_for(request, body)
    text = fake.answer_for(_last_user_text(body["input"]))
    reasoning = REASONING_TOKENS if (body.get("reasoning") or {}).get("effort") else 0
    usage = _usage(prompt, words(tool["arguments"]) if tool else words(text),
                   min(prompt, fake.cached_tokens), reasoning)
    rid, created = "resp_fake" + secrets.token_hex(8), int(time.time())
    if tool:
        item = {"type": "function_call", "id": "fc_fake01", "call_id": "call_fake01",
                "name": tool["name"], "arguments": tool["arguments"], "status": "completed"}
    else:
        item = {"type": "message", "id": "msg_fake01", "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
    hosted = [HOSTED_ITEMS[kind](n) for n, kind in enumerate(fake.hosted_calls, 1)]
    at = len(hosted)                          # the output index of the answer's own item

    def response(status: str, output: list, used: dict | None) -> dict:
        obj = {"id": rid, "object": "response", "created_at": created, "status": status,
               "model": body["model"], "output": output, "error": None,
               "incomplete_details": None, "instructions": body.get("instructions"),
               "metadata": {}, "parallel_tool_calls": True, "temperature": 1.0, "top_p": 1.0,
               "tool_choice": body.get("tool_choice") or "auto",
               "tools": body.get("tools") or [], "store": False, "usage": used,
               **served_tier(body)}
        return Response.model_validate(obj).model_dump(mode="json", exclude_unset=True)

    if not body.get("stream"):
        return fake.json_response(response("completed", [*hosted, item], usage))
    seq = iter(range(1_000_000))

    def ev(kind: str, **fields) -> bytes:
        obj = _EVENT.validate_python({"type": kind, "sequence_number": next(seq), **fields})
        return sse_event(kind, obj.model_dump(mode="json", exclude_unset=True))

    where = {"item_id": item["id"], "output_index": at}
    frames = [ev("response.created", response=response("in_progress", [], None)),
              ev("response.in_progress", response=response("in_progress", [], None))]
    for n, call in enumerate(hosted):
        frames.append(ev("response.output_item.added", output_index=n,
                         item={**call, "status": "in_progress", **(
                             {"result": None} if "result" in call else {})}))
        frames.append(ev("response.output_item.done", output_index=n, item=call))
    if tool:
        frames.append(ev("response.output_item.added", output_index=at,
                         item={**item, "arguments": "", "status": "in_progress"}))
        frames += [ev("response.function_call_arguments.delta", **where, delta=piece)
                   for piece in split_pieces(tool["arguments"], 3)]
        frames.append(ev("response.function_call_arguments.done", **where,
                         name=tool["name"], arguments=tool["arguments"]))
    else:
        part = {"type": "output_text", "text": "", "annotations": []}
        frames.append(ev("response.output_item.added", output_index=at,
                         item={**item, "status": "in_progress", "content": []}))
        frames.append(ev("response.content_part.added", **where, content_index=0, part=part))
        frames += [ev("response.output_text.delta", **where, content_index=0, delta=piece,
                      logprobs=[]) for piece in split_pieces(text, fake.stream_events)]
        frames.append(ev("response.output_text.done", **where, content_index=0, text=text,
                         logprobs=[]))
        frames.append(ev("response.content_part.done", **where, content_index=0,
                         part={**part, "text": text}))
    frames.append(ev("response.output_item.done", output_index=at, item=item))
    frames.append(ev("response.completed", response=response("completed", [*hosted, item],
                                                              usage)))
    return await fake.stream(request, frames)
