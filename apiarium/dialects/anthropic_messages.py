"""Anthropic Messages as a client dialect, request side: ``POST /v1/messages`` bodies → the
internal chat request.  The answers: ``anthropic_answer.py`` (Message JSON, errors, the
count_tokens estimate) and ``anthropic_stream.py`` (events).

Request (Anthropic → chat):

    system: string or text blocks        → a system message (block texts joined by a blank
                                           line); cache_control dropped, and so is Claude
                                           Code's ``x-anthropic-billing-header:`` block (it
                                           changes per session and would spoil prompt caches)
    messages[i] role system              → a system message where it stands (Claude Code)
    user text / image / document(text)   → a user message: one string when all text, parts
                                           (``image_url``: data: URL or URL) otherwise
    user tool_result                     → ``tool`` messages, placed before the user's other
                                           blocks (chat wants them right after the tool calls;
                                           Anthropic wants them first anyway); is_error →
                                           "Error: " before the text; images in a result go
                                           to the user message that follows
    assistant text + tool_use            → content + tool_calls (input as JSON arguments)
    assistant thinking                   → dropped, or ``reasoning_content`` when asked
                                           (keep_reasoning); redacted_thinking dropped
    user search_result                   → text (title, source, then its text blocks)
    tools: custom {name, input_schema}   → function tools; server tools, mcp_servers and
                                           server-tool blocks in the history → 400
                                           (check_portable)
    tool_choice auto|any|tool|none       → auto|required|{function}|none;
      disable_parallel_tool_use          → parallel_tool_calls: false
    thinking enabled, budget_tokens      → reasoning_effort: < 4096 low, < 16384 medium, else
                                           high (Gemini's layer maps low/medium/high to 1024 /
                                           8192 / 24576: each budget lands on the nearest)
    output_config.effort                 → reasoning_effort (xhigh, max → high), unless
                                           thinking is disabled; adaptive alone sends none
    output_config.format json_schema     → response_format json_schema
    max_tokens (required)                → max_completion_tokens
    stop_sequences → stop; temperature, top_p as sent; top_k checked, dropped;
    metadata.user_id → user; stream → stream + stream_options.include_usage
    context_management, cache_control, service_tier, container, speed, … → dropped

Every malformed field is a 400 whose ``param`` is its path, e.g. ``messages[2].content[1].type``.
"""
from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest

# thinking.budget_tokens below each bound gets that reasoning_effort; larger budgets get high
EFFORT_BY_BUDGET = ((4096, "low"), (16384, "medium"))
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

# The signature this gateway puts on thinking blocks it made from another vendor's reasoning
# (Claude Code drops thinking blocks that end without one); never valid at Anthropic.
GATEWAY_SIGNATURE = "apiarium-unsigned-reasoning"

_BILLING_HEADER = "x-anthropic-billing-header:"


# ---------------------------------------------------------------------- small checks
def _bad(path: str, what: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"`{path}` {what}", param=path, code=code)


def _obj(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "must be an object.")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "must be a string.")
    return value


def _int(value: object, path: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(path, f"must be an integer ≥ {minimum}.")
    return value


def _number(value: object, path: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _bad(path, "must be a number.")
    return value


def _blocks(content: object, path: str) -> list[dict[str, Any]]:
    """``content`` as a list of blocks, each an object with a string ``type``."""
    if not isinstance(content, list):
        raise _bad(path, "must be a string or a list of content blocks.")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{path}[{j}]", "must be a content block: an object with a `type`.")
    return content


# ---------------------------------------------------------------------- the request
def check_portable(body: dict) -> None:
    """Refuse (400 naming the field) what only Anthropic's own API serves: server tools
    (web search, bash, text editor, code execution, …), MCP servers, and server-tool blocks in
    the history.  ``to_chat`` calls it; a request sent to an Anthropic upstream natively
    skips translation, so a handler calls this on its own only when that is not the case."""
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise InvalidRequest(
                f"`tools[{i}]` is Anthropic's server tool `{kind}`: only Anthropic's API runs "
                f"it, and this model is served by another provider. Remove it, or declare a "
                f"custom tool with a name and an input_schema.",
                param=f"tools[{i}]", code="unsupported_tool")
    if body.get("mcp_servers"):
        raise InvalidRequest("`mcp_servers` are run by Anthropic's API, and this model is "
                             "served by another provider: connect the MCP server in your "
                             "client instead.", param="mcp_servers", code="unsupported_field")
    messages = body.get("messages")
    for i, m in enumerate(messages if isinstance(messages, list) else ()):
        content = m.get("content") if isinstance(m, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and _server_block(kind):
                raise InvalidRequest(
                    f"`messages[{i}].content[{j}]` is a `{kind}` block, the trace of a tool "
                    f"only Anthropic's API runs; this model is served by another provider.",
                    param=f"messages[{i}].content[{j}].type", code="unsupported_block")


def _server_block(kind: str) -> bool:
    return (kind in ("server_tool_use", "container_upload") or kind.startswith("mcp_")
            or (kind.endswith("_tool_result") and kind != "tool_result"))


def to_chat(body: dict, *, keep_reasoning: bool = False) -> dict:
    """An Anthropic Messages request → the internal chat request (see the module docstring).
    ``keep_reasoning``: carry assistant thinking as ``reasoning_content`` (for upstreams that
    want it back, e.g. Kimi); off by default, as some OpenAI-compatible servers refuse the
    field.  Raises InvalidRequest naming the offending path."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` is required: the model name, a string.", param="model",
                             code="missing_model" if model is None else None)
    if body.get("max_tokens") is None:
        raise InvalidRequest("`max_tokens` is required: the most tokens the answer may use.",
                             param="max_tokens", code="missing_max_tokens")
    max_tokens = _int(body["max_tokens"], "max_tokens", 1)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("`messages` is required: a non-empty list of {\"role\", "
                             "\"content\"} objects.", param="messages",
                             code="missing_messages" if raw is None else None)
    check_portable(body)
    messages = []
    if body.get("system") is not None:
        system = _system_text(body["system"], "system")
        if system:
            messages.append({"role": "system", "content": system})
    for i, m in enumerate(raw):
        messages += _message(m, f"messages[{i}]", keep_reasoning)
    chat: dict = {"model": model, "messages": messages, "max_completion_tokens": max_tokens}
    _add_tools(chat, body)
    effort = _reasoning_effort(body)
    if effort:
        chat["reasoning_effort"] = effort
    _add_sampling(chat, body)
    return chat


def _system_text(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    texts = []
    for j, block in enumerate(_blocks(value, path)):
        if block["type"] != "text":
            raise _bad(f"{path}[{j}].type", "must be `text`: system prompts hold text only.")
        text = _text(block.get("text"), f"{path}[{j}].text")
        if text and not text.startswith(_BILLING_HEADER):
            texts.append(text)
    return "\n\n".join(texts)


def _message(m: object, path: str, keep_reasoning: bool) -> list[dict]:
    m = _obj(m, path)
    role, content = m.get("role"), m.get("content")
    if role not in ("user", "assistant", "system"):
        raise _bad(f"{path}.role", f"must be `user` or `assistant` (got {role!r}).")
    if not isinstance(content, (str, list)):
        raise _bad(f"{path}.content", "must be a string or a list of content blocks.")
    if role == "system":
        text = _system_text(content, f"{path}.content")
        return [{"role": "system", "content": text}] if text else []
    if role == "user":
        return _user(content, f"{path}.content")
    return _assistant(content, f"{path}.content", keep_reasoning)


def _user(content: str | list[Any], path: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict] = []
    result_images: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(_blocks(content, path)):
        where = f"{path}[{j}]"
        if block["type"] == "tool_result":
            results.append(_tool_result(block, where, result_images))
        else:
            part = _user_part(block, where)
            if part is not None:
                parts.append(part)
    parts = result_images + parts
    if parts:
        if all(p["type"] == "text" for p in parts):
            results.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            results.append({"role": "user", "content": parts})
    return results


def _user_part(block: dict, where: str) -> dict | None:
    kind = block["type"]
    if kind == "text":
        text = _text(block.get("text"), f"{where}.text")
        return {"type": "text", "text": text} if text else None
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    if kind in ("document", "search_result"):
        return {"type": "text", "text": _document_text(block, where)}
    if kind in ("tool_use", "thinking", "redacted_thinking"):
        raise _bad(f"{where}.type", f"`{kind}` blocks belong in assistant messages.")
    raise _bad(f"{where}.type", f"`{kind}` is not a block type this gateway translates for "
                                f"this model: use text, image, document (plain text) or "
                                f"tool_result.", code="unsupported_block")


def _image_url(block: dict, where: str) -> str:
    source = _obj(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media = _text(source.get("media_type"), f"{where}.source.media_type")
        data = _text(source.get("data"), f"{where}.source.data")
        return f"data:{media};base64,{data}"
    if kind == "url":
        return _text(source.get("url"), f"{where}.source.url")
    if kind == "file":
        raise _bad(f"{where}.source.type", "`file` (an Anthropic Files API id) only works with "
                                           "Anthropic models: send the image as base64 or a URL.",
                   code="unsupported_block")
    raise _bad(f"{where}.source.type", "must be `base64` or `url`.")


def _document_text(block: dict, where: str) -> str:
    """A plain-text document or a search result, as text (title first).  PDFs and Files API
    documents only Anthropic models read: 400."""
    title = block.get("title")
    if block["type"] == "search_result":
        body = _texts_of(block.get("content"), f"{where}.content")
        head = [_text(title, f"{where}.title"), _text(block.get("source"), f"{where}.source")]
        return "\n".join(head) + "\n\n" + body
    source = _obj(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "text":
        body = _text(source.get("data"), f"{where}.source.data")
    elif kind == "content":
        inner = source.get("content")
        body = inner if isinstance(inner, str) else _texts_of(inner, f"{where}.source.content")
    else:
        raise _bad(f"{where}.source.type",
                   f"`{kind}` documents (PDFs, Files API ids) only Anthropic models read: send "
                   f"the document's text as a `text` source or a text block.",
                   code="unsupported_block")
    return f"{title}\n\n{body}" if isinstance(title, str) and title else body


def _texts_of(content: object, path: str) -> str:
    texts = []
    for j, block in enumerate(_blocks(content, path)):
        if block["type"] != "text":
            raise _bad(f"{path}[{j}].type", "must be `text` here.")
        texts.append(_text(block.get("text"), f"{path}[{j}].text"))
    return "\n".join(texts)


def _tool_result(block: dict, where: str, images: list[dict]) -> dict:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_use_id", "is required: the id of the tool_use it answers.")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _bad(f"{where}.is_error", "must be true or false.")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts, first = [], len(images)
        for k, inner in enumerate(_blocks(content, f"{where}.content")):
            part = _user_part(inner, f"{where}.content[{k}]")
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
        if len(images) > first:
            label = f"The result of tool call {call_id} included these images:"
            images.insert(first, {"type": "text", "text": label})
        text = "\n".join(texts)
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant(content: str | list[Any], path: str, keep_reasoning: bool) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}] if content else []
    texts, calls, reasoning = [], [], []
    for j, block in enumerate(_blocks(content, path)):
        where, kind = f"{path}[{j}]", block["type"]
        if kind == "text":
            text = _text(block.get("text"), f"{where}.text")
            if text:
                texts.append(text)
        elif kind == "tool_use":
            call_id = _text(block.get("id"), f"{where}.id")
            name = _text(block.get("name"), f"{where}.name")
            args = _obj(block.get("input"), f"{where}.input")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
        elif kind == "thinking":
            thought = _text(block.get("thinking"), f"{where}.thinking")
            if thought:
                reasoning.append(thought)
        elif kind != "redacted_thinking":
            raise _bad(f"{where}.type", f"`{kind}` is not valid in an assistant message here: "
                                        f"use text, tool_use or thinking.")
    if not texts and not calls:
        return []
    message: dict = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if keep_reasoning and reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    return [message]


def _add_tools(chat: dict, body: dict) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list of tools.")
    names: set[str] = set()
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        _obj(tool, where)
        name = _text(tool.get("name"), f"{where}.name")
        fn = {"name": name,
              "parameters": _obj(tool.get("input_schema"), f"{where}.input_schema")}
        if tool.get("description") is not None:
            fn["description"] = _text(tool["description"], f"{where}.description")
        names.add(name)
        converted.append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if choice is None:
        mapped, parallel = None, True
    else:
        mapped, parallel = _tool_choice(_obj(choice, "tool_choice"), names)
    if not converted:
        return                    # a tool_choice without tools means nothing upstream
    chat["tools"] = converted
    if mapped is not None:
        chat["tool_choice"] = mapped
    if not parallel and mapped != "none":
        chat["parallel_tool_calls"] = False


def _tool_choice(choice: dict, names: set[str]) -> tuple[object, bool]:
    """(chat tool_choice, whether parallel calls stay allowed)."""
    off = choice.get("disable_parallel_tool_use")
    if off is not None and not isinstance(off, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "must be true or false.")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind, not off
    if kind == "any":
        return "required", not off
    if kind == "tool":
        name = _text(choice.get("name"), "tool_choice.name")
        if name not in names:
            raise _bad("tool_choice.name", f"names `{name}`, which is not in `tools`.")
        return {"type": "function", "function": {"name": name}}, not off
    raise _bad("tool_choice.type", "must be `auto`, `any`, `tool` or `none`.")


def _reasoning_effort(body: dict) -> str | None:
    effort = None
    config = body.get("output_config")
    if config is not None and _obj(config, "output_config").get("effort") is not None:
        effort = EFFORTS.get(config["effort"]) if isinstance(config["effort"], str) else None
        if effort is None:
            raise _bad("output_config.effort", "must be low, medium, high, xhigh or max.")
    thinking = body.get("thinking")
    if thinking is None:
        return effort
    kind = _obj(thinking, "thinking").get("type")
    if kind == "disabled":
        return None
    if kind == "enabled":
        budget = _int(thinking.get("budget_tokens"), "thinking.budget_tokens", 1)
        return effort or next((e for bound, e in EFFORT_BY_BUDGET if budget < bound), "high")
    if kind in ("adaptive", "between_tools"):
        return effort
    raise _bad("thinking.type", "must be `enabled`, `adaptive` or `disabled`.")


def _add_sampling(chat: dict, body: dict) -> None:
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            raise _bad("stop_sequences", "must be a list of strings.")
        for k, stop in enumerate(stops):
            _text(stop, f"stop_sequences[{k}]")
        if stops:
            chat["stop"] = list(stops)
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            chat[field] = _number(body[field], field)
    if body.get("top_k") is not None:
        _int(body["top_k"], "top_k", 0)           # checked; chat has no top_k
    metadata = body.get("metadata")
    if metadata is not None:
        user = _obj(metadata, "metadata").get("user_id")
        if user is not None and _text(user, "metadata.user_id"):
            chat["user"] = user
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        fmt = _obj(config["format"], "output_config.format")
        if fmt.get("type") != "json_schema":
            raise _bad("output_config.format.type", "must be `json_schema`.")
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": _obj(fmt.get("schema"), "output_config.format.schema")}}
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "must be true or false.")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}


def drop_gateway_thinking(body: dict) -> dict:
    """``body`` without the thinking blocks this gateway signed with ``GATEWAY_SIGNATURE``
    (reasoning another vendor's model wrote): Anthropic refuses their signature, so a
    request sent natively to an Anthropic upstream must not carry them.  The same dict when
    there are none.  An assistant turn left empty goes too (Anthropic joins the user turns
    around it)."""
    def ours(block: object) -> bool:
        return isinstance(block, dict) and block.get("type") == "thinking" \
            and block.get("signature") == GATEWAY_SIGNATURE

    messages = body.get("messages")
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and isinstance(m.get("content"), list)
            and any(map(ours, m["content"])) for m in messages):
        return body
    kept = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            content = [b for b in m["content"] if not ours(b)]
            if not content and m["content"]:
                continue
            m = {**m, "content": content}
        kept.append(m)
    return {**body, "messages": kept}
