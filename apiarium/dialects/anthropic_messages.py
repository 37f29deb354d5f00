"""Anthropic Messages as a client dialect, request side: ``POST /v1/messages`` bodies → the
internal chat request; the blocks inside each message are translated by ``anthropic_blocks.py``.
The answers: ``anthropic_answer.py`` (Message JSON, errors, the count_tokens estimate) and
``anthropic_stream.py`` (events).

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

from ..errors import InvalidRequest, echo
from .anthropic_blocks import (
    as_blocks,
    as_int,
    as_number,
    as_object,
    as_str,
    assistant_turn,
    bad,
    user_turn,
)

# thinking.budget_tokens below each bound gets that reasoning_effort; larger budgets get high
EFFORT_BY_BUDGET = ((4096, "low"), (16384, "medium"))
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}

# The signature this gateway puts on thinking blocks it made from another vendor's reasoning
# (Claude Code drops thinking blocks that end without one); never valid at Anthropic.
GATEWAY_SIGNATURE = "apiarium-unsigned-reasoning"

_BILLING_HEADER = "x-anthropic-billing-header:"


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
                f"`tools[{i}]` is Anthropic's server tool `{echo(kind, False)}`: only "
                f"Anthropic's API runs it, and this model is served by another provider. "
                f"Remove it, or declare a custom tool with a name and an input_schema.",
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
                    f"`messages[{i}].content[{j}]` is a `{echo(kind, False)}` block, the "
                    f"trace of a tool only Anthropic's API runs; this model is served by "
                    f"another provider.",
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
    max_tokens = as_int(body["max_tokens"], "max_tokens", 1)
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
    for j, block in enumerate(as_blocks(value, path)):
        if block["type"] != "text":
            raise bad(f"{path}[{j}].type", "must be `text`: system prompts hold text only.")
        text = as_str(block.get("text"), f"{path}[{j}].text")
        if text and not text.startswith(_BILLING_HEADER):
            texts.append(text)
    return "\n\n".join(texts)


def _message(m: object, path: str, keep_reasoning: bool) -> list[dict]:
    m = as_object(m, path)
    role, content = m.get("role"), m.get("content")
    if role not in ("user", "assistant", "system"):
        raise bad(f"{path}.role", f"must be `user` or `assistant` (got {echo(role)}).")
    if not isinstance(content, (str, list)):
        raise bad(f"{path}.content", "must be a string or a list of content blocks.")
    if role == "system":
        text = _system_text(content, f"{path}.content")
        return [{"role": "system", "content": text}] if text else []
    if role == "user":
        return user_turn(content, f"{path}.content")
    return assistant_turn(content, f"{path}.content", keep_reasoning)


def _add_tools(chat: dict, body: dict) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise bad("tools", "must be a list of tools.")
    names: set[str] = set()
    converted = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        as_object(tool, where)
        name = as_str(tool.get("name"), f"{where}.name")
        fn = {"name": name,
              "parameters": as_object(tool.get("input_schema"), f"{where}.input_schema")}
        if tool.get("description") is not None:
            fn["description"] = as_str(tool["description"], f"{where}.description")
        names.add(name)
        converted.append({"type": "function", "function": fn})
    choice = body.get("tool_choice")
    if choice is None:
        mapped, parallel = None, True
    else:
        mapped, parallel = _tool_choice(as_object(choice, "tool_choice"), names)
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
        raise bad("tool_choice.disable_parallel_tool_use", "must be true or false.")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind, not off
    if kind == "any":
        return "required", not off
    if kind == "tool":
        name = as_str(choice.get("name"), "tool_choice.name")
        if name not in names:
            raise bad("tool_choice.name", f"names `{echo(name, False)}`, which is not in `tools`.")
        return {"type": "function", "function": {"name": name}}, not off
    raise bad("tool_choice.type", "must be `auto`, `any`, `tool` or `none`.")


def _reasoning_effort(body: dict) -> str | None:
    effort = None
    config = body.get("output_config")
    if config is not None and as_object(config, "output_config").get("effort") is not None:
        effort = EFFORTS.get(config["effort"]) if isinstance(config["effort"], str) else None
        if effort is None:
            raise bad("output_config.effort", "must be low, medium, high, xhigh or max.")
    thinking = body.get("thinking")
    if thinking is None:
        return effort
    kind = as_object(thinking, "thinking").get("type")
    if kind == "disabled":
        return None
    if kind == "enabled":
        budget = as_int(thinking.get("budget_tokens"), "thinking.budget_tokens", 1)
        return effort or next((e for bound, e in EFFORT_BY_BUDGET if budget < bound), "high")
    if kind in ("adaptive", "between_tools"):
        return effort
    raise bad("thinking.type", "must be `enabled`, `adaptive` or `disabled`.")


def _add_sampling(chat: dict, body: dict) -> None:
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            raise bad("stop_sequences", "must be a list of strings.")
        for k, stop in enumerate(stops):
            as_str(stop, f"stop_sequences[{k}]")
        if stops:
            chat["stop"] = list(stops)
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            chat[field] = as_number(body[field], field)
    if body.get("top_k") is not None:
        as_int(body["top_k"], "top_k", 0)           # checked; chat has no top_k
    metadata = body.get("metadata")
    if metadata is not None:
        user = as_object(metadata, "metadata").get("user_id")
        if user is not None and as_str(user, "metadata.user_id"):
            chat["user"] = user
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        fmt = as_object(config["format"], "output_config.format")
        if fmt.get("type") != "json_schema":
            raise bad("output_config.format.type", "must be `json_schema`.")
        schema = as_object(fmt.get("schema"), "output_config.format.schema")
        chat["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": schema}}
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "must be true or false.")
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
