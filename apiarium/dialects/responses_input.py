"""OpenAI Responses API, request side: a stateless ``POST /v1/responses`` body → the internal
chat body, the refusals that come first, and the gateway's own compaction items.

    instructions                          → a leading ``system`` message
    input: "text"                         → one ``user`` message
    message {role, content}               → a chat message (input_text / output_text → text,
                                            input_image → image_url, input_file → file)
    function_call, custom_tool_call       → ``tool_calls`` of one assistant message
                                            (consecutive calls merged)
    function_call_output, custom_…_output → ``tool`` messages; images they return follow the
                                            tool results in one ``user`` message
    reasoning {summary, content}          → ``reasoning_content`` of the next assistant message
                                            (encrypted-only reasoning is dropped: only OpenAI
                                            can read it, and OpenAI is served natively)
    compaction made here (for this key)   → the items it encodes, expanded in place and
                                            checked as if sent directly
    tools: function / custom / namespace  → chat function tools; a custom tool takes one
                                            ``input`` string, a namespace member gets a
                                            flattened name; ``tool_map`` restores both

Nothing here does I/O; every refusal is an ``InvalidRequest`` whose ``param`` is the path of the
field as the client sent it (``input[3].content[0].type``).
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson

from ..errors import InvalidRequest, echo
from ..passthrough import refuse_stored
from ..providers.shapes import parse_data_url
from .responses_compaction import CompactionSeal, compaction_item, expand_compactions
from .responses_tools import (
    SKIPPED_HOSTED_TOOLS,
    ToolRef,
    bad,
    check_portable,
    flat_name,
    list_at,
    obj_at,
    str_at,
    tool_choice,
    walk_tools,
)

# Fields that only make sense with responses stored on the server.
STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")
# History items that only record what a skipped hosted tool did: dropped.
_DROPPED_ITEMS = frozenset({"web_search_call", "tool_search_call", "tool_search_output"})
_REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
_IMAGE_DETAILS = frozenset({"auto", "low", "high"})


def check_stateless(body: dict) -> None:
    """Refuse the fields that need state kept on the server (the gateway keeps none)."""
    for field in STATEFUL_FIELDS:
        if body.get(field) not in (None, "", {}):
            raise InvalidRequest(
                f"`{field}` needs responses stored on the server, and this gateway stores "
                f"none: send the whole conversation in `input` (store: false).",
                param=field, code="unsupported_parameter")
    if body.get("background"):
        raise InvalidRequest("`background` responses need server-side storage, which this "
                             "gateway does not keep; send the request without it.",
                             param="background", code="unsupported_parameter")



# -------------------------------------------------------------------------------- history

def _image_part(part: dict, where: str) -> dict:
    if part.get("file_id"):
        raise bad(f"`{where}.file_id`: uploaded files are not kept here; send the image as "
                  f"`image_url` (an http(s) or data: URL).", f"{where}.file_id")
    url = str_at(part.get("image_url"), f"{where}.image_url")
    if url.startswith("data:"):
        parse_data_url(url, f"{where}.image_url")
    elif not url.startswith(("http://", "https://")):
        raise bad(f"`{where}.image_url` must be an http(s) URL or a data: URL.",
                  f"{where}.image_url")
    image = {"url": url}
    if part.get("detail") in _IMAGE_DETAILS:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict, where: str) -> dict:
    if not part.get("file_data"):
        raise bad(f"`{where}`: only inline files (`file_data`) are supported here, not "
                  f"`file_id` or `file_url`.", where)
    file = {"file_data": str_at(part["file_data"], f"{where}.file_data")}
    if part.get("filename"):
        file["filename"] = str_at(part["filename"], f"{where}.filename")
    return {"type": "file", "file": file}


def _parts(content: Any, where: str, *, media: bool) -> list[dict]:
    """Responses content parts → chat parts (text, and with ``media`` images and files)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out = []
    for j, part in enumerate(list_at(content, where)):
        at = f"{where}[{j}]"
        kind = obj_at(part, at).get("type")
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": str_at(part.get("text"), f"{at}.text",
                                                     empty=True)})
        elif kind == "refusal":
            out.append({"type": "text", "text": str_at(part.get("refusal"), f"{at}.refusal",
                                                     empty=True)})
        elif kind == "input_image" and media:
            out.append(_image_part(part, at))
        elif kind == "input_file" and media:
            out.append(_file_part(part, at))
        elif kind in ("input_image", "input_file", "input_audio"):
            raise bad(f"`{at}.type` {kind} is not supported in this position.", f"{at}.type")
        else:
            raise bad(f"`{at}.type` {echo(kind)} is not a content part type this gateway "
                      f"knows (input_text, output_text, input_image, input_file).",
                      f"{at}.type")
    return out


def _text(parts: list[dict]) -> str:
    return "".join(p["text"] for p in parts if p["type"] == "text")


def _reasoning_text(item: dict, where: str) -> str:
    texts = []
    for field in ("summary", "content"):
        for j, part in enumerate(list_at(item.get(field) or [], f"{where}.{field}")):
            texts.append(str_at(obj_at(part, f"{where}.{field}[{j}]").get("text"),
                              f"{where}.{field}[{j}].text", empty=True))
    return "\n\n".join(t for t in texts if t)


class _History:
    """Builds chat messages from Responses items, in order."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._assistant: dict | None = None        # takes the next tool calls
        self._reasoning: list[str] = []            # for the next assistant message
        self._images: list[dict] = []              # returned by tools, after their results

    def _flush_images(self) -> None:
        if self._images:
            self.messages.append({"role": "user", "content": [
                {"type": "text", "text": "Images returned by the tool calls above:"},
                *self._images]})
            self._images = []

    def push(self, message: dict) -> None:
        """Append ``message``, flushing tool images before a non-tool turn and giving an
        assistant turn the reasoning that preceded it."""
        if message["role"] != "tool":
            self._flush_images()
        if message["role"] == "assistant" and self._reasoning:
            message["reasoning_content"] = "\n\n".join(self._reasoning)
        self._reasoning = []               # reasoning belongs to the very next assistant turn
        self.messages.append(message)
        self._assistant = message if message["role"] == "assistant" else None

    def call(self, call_id: str, name: str, arguments: str) -> None:
        """Add a tool call to the open assistant message (opening one if needed)."""
        assistant = self._assistant
        if assistant is None:
            assistant = {"role": "assistant", "content": None}
            self.push(assistant)
        assistant.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}})

    def result(self, call_id: str, output: Any, where: str) -> None:
        """A tool result; the images in it wait for the end of the run of tool results."""
        if isinstance(output, str):
            text = output
        else:
            parts = _parts(output, where, media=True)
            images = [p for p in parts if p["type"] == "image_url"]
            if any(p["type"] == "file" for p in parts):
                raise bad(f"`{where}`: files in tool output are not supported here.", where)
            self._images += images
            text = "\n".join(p["text"] for p in parts if p["type"] == "text")
            if not text and images:
                text = "(the tool returned an image: it follows the tool results)"
        self.push({"role": "tool", "tool_call_id": call_id, "content": text})

    def item(self, item: Any, where: str) -> None:
        """Translate one input item (``where`` is its path, for errors)."""
        item = obj_at(item, where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise bad(f"`{where}.role` must be user, assistant, system or developer.",
                          f"{where}.role")
            if item.get("content") is None:
                raise bad(f"`{where}.content` is required.", f"{where}.content")
            parts = _parts(item["content"], f"{where}.content", media=role == "user")
            if role == "assistant":
                self.push({"role": "assistant", "content": _text(parts)})
            else:
                one = len(parts) == 1 and parts[0]["type"] == "text"
                self.push({"role": role, "content": parts[0]["text"] if one else parts})
        elif kind == "function_call":
            arguments = str_at(item.get("arguments"), f"{where}.arguments", empty=True)
            try:
                orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError:
                raise bad(f"`{where}.arguments` must be JSON text.", f"{where}.arguments"
                          ) from None
            self.call(str_at(item.get("call_id"), f"{where}.call_id"),
                      flat_name(str_at(item.get("name"), f"{where}.name"),
                                item.get("namespace")), arguments or "{}")
        elif kind == "custom_tool_call":
            raw = str_at(item.get("input"), f"{where}.input", empty=True)
            self.call(str_at(item.get("call_id"), f"{where}.call_id"),
                      flat_name(str_at(item.get("name"), f"{where}.name"),
                                item.get("namespace")),
                      orjson.dumps({"input": raw}).decode())
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if item.get("output") is None:
                raise bad(f"`{where}.output` is required.", f"{where}.output")
            self.result(str_at(item.get("call_id"), f"{where}.call_id"), item["output"],
                        f"{where}.output")
        elif kind == "reasoning":
            text = _reasoning_text(item, where)
            if text:
                self._reasoning.append(text)
            self._assistant = None
        elif kind in _DROPPED_ITEMS or kind == "additional_tools":
            pass
        elif kind == "item_reference":
            raise InvalidRequest(f"`{where}`: item references need responses stored on the "
                                 f"server, and this gateway stores none; send the item itself.",
                                 param=where, code="unsupported_parameter")
        elif kind == "compaction_trigger":
            raise bad(f"`{where}`: a compaction trigger is answered by the compaction path, "
                      f"not by a model.", where)
        elif isinstance(kind, str):
            raise bad(f"`{where}.type` {echo(kind)} is not an input item this gateway can send "
                      f"to this model.", f"{where}.type")
        else:
            raise bad(f"`{where}.type` is required.", f"{where}.type")

    def finish(self) -> list[dict]:
        """The chat messages, with any images still waiting flushed."""
        self._flush_images()
        return self.messages


def input_items(body: dict, seal: CompactionSeal | None = None) -> list[tuple[str, Any]]:
    """(path, item) of the request's ``input``, the compactions ``seal`` opens expanded (a
    compaction of ours it does not open is a 400)."""
    value = body.get("input")
    if isinstance(value, str):
        return [("input", {"type": "message", "role": "user", "content": value})]
    if value is None:
        raise bad("`input` is required: a string or an array of items.", "input")
    return expand_compactions(list_at(value, "input"), seal)


def history(body: dict, seal: CompactionSeal | None = None) -> list[dict]:
    """``instructions`` and ``input`` as chat messages, checked (compactions opened with
    ``seal``)."""
    built = _History()
    if body.get("instructions") is not None:
        built.push({"role": "system",
                    "content": str_at(body["instructions"], "instructions", empty=True)})
    for where, item in input_items(body, seal):
        refuse_stored(item, where)         # a file id, direct or held in a compaction
        built.item(item, where)
    messages = built.finish()
    if not any(m["role"] != "system" for m in messages):
        raise bad("`input` holds no message to answer.", "input")
    return messages


def compaction_of(body: dict, seal: CompactionSeal) -> dict:
    """The compaction item for a ``/responses/compact`` body or a compaction-trigger request:
    every input item but the trigger, checked now (a bad item fails here, by its path), and
    signed with ``seal`` (the requesting key's)."""
    check_stateless(body)
    items = [(w, x) for w, x in input_items(body, seal)
             if not (isinstance(x, dict) and x.get("type") == "compaction_trigger")]
    built = _History()
    for where, item in items:
        built.item(item, where)
    return compaction_item([x for _, x in items], seal=seal)


# --------------------------------------------------------------------------------- to_chat

def _number(body: dict, field: str, low: float, high: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise bad(f"`{field}` must be a number from {low:g} to {high:g}.", field)
    return value


def _response_format(text: Any) -> dict | None:
    fmt = obj_at(text, "text").get("format")
    if fmt is None:
        return None
    kind = obj_at(fmt, "text.format").get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise bad("`text.format.type` must be text, json_object or json_schema.",
                  "text.format.type")
    schema: dict[str, Any] = {"name": str_at(fmt.get("name"), "text.format.name"),
                              "schema": obj_at(fmt.get("schema"), "text.format.schema")}
    if isinstance(fmt.get("strict"), bool):
        schema["strict"] = fmt["strict"]
    if isinstance(fmt.get("description"), str):
        schema["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": schema}


def to_chat(body: dict, *, skip: Collection[str] = SKIPPED_HOSTED_TOOLS,
            seal: CompactionSeal | None = None) -> dict:
    """A Responses request → the internal chat body (the OpenAI chat-completions shape);
    ``seal`` (the requesting key's) opens the gateway's compaction items.

    Beyond plain chat fields, an assistant message may carry ``reasoning_content`` (the text
    of the reasoning items before it).  Ignored on purpose: ``store``, ``include``,
    ``metadata``, ``prompt_cache_key``, ``client_metadata``, ``service_tier``, ``truncation``,
    ``text.verbosity``, ``reasoning.summary``, ``stream_options``, ``context_management``."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_stateless(body)
    check_portable(body, skip=skip)
    chat: dict[str, Any] = {"model": str_at(body.get("model"), "model"),
                            "messages": history(body, seal)}
    tools: list[dict] = []
    refs: dict[str, ToolRef] = {}
    for tool, ref in walk_tools(body, skip):
        if refs.setdefault(tool["function"]["name"], ref) is ref:   # first of a name wins
            tools.append(tool)
    choice = body.get("tool_choice")
    if choice is not None:
        choice = tool_choice(choice, refs, tools)
    if tools:                    # OpenAI refuses tool_choice / parallel_tool_calls without tools
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if body.get("parallel_tool_calls") is not None:
            if not isinstance(body["parallel_tool_calls"], bool):
                raise bad("`parallel_tool_calls` must be a boolean.", "parallel_tool_calls")
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    elif choice == "required" or isinstance(choice, dict):
        raise bad("`tool_choice` requires a tool, and `tools` declares none.", "tool_choice")
    if body.get("reasoning") is not None:
        effort = obj_at(body["reasoning"], "reasoning").get("effort")
        if effort is not None:
            if effort not in _REASONING_EFFORTS:
                raise bad(f"`reasoning.effort` must be one of "
                          f"{', '.join(sorted(_REASONING_EFFORTS))}.", "reasoning.effort")
            chat["reasoning_effort"] = effort
    if body.get("text") is not None:
        fmt = _response_format(body["text"])
        if fmt is not None:
            chat["response_format"] = fmt
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise bad("`max_output_tokens` must be a positive integer.", "max_output_tokens")
        chat["max_completion_tokens"] = limit
    for field, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = _number(body, field, 0.0, high)
        if value is not None:
            chat[field] = value
    for field in ("user", "safety_identifier"):
        if body.get(field) is not None:
            chat.setdefault("user", str_at(body[field], field))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("`stream` must be a boolean.", "stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat
