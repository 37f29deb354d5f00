"""OpenAI chat request → Anthropic Messages request (``kind: anthropic``).

    system / developer turns        → top-level ``system`` (texts joined by a blank line)
    user / assistant turns          → ``messages``; consecutive same-role turns are merged
    text parts                      → ``text`` blocks (empty ones dropped)
    image_url data: / http(s)       → ``image`` block, ``base64`` / ``url`` source
    assistant ``tool_calls``        → ``tool_use`` blocks (``arguments`` parsed into ``input``),
                                      after the thinking blocks that led to them when the
                                      gateway kept them for the call ids (``Signatures``)
    ``tool`` messages               → ``tool_result`` blocks in a user turn
    max_completion_tokens|max_tokens→ ``max_tokens`` (default 4096)
    reasoning_effort                → ``thinking: {type: enabled, budget_tokens}`` and
                                      ``max_tokens`` raised above it (providers/reasoning.py);
                                      not sent when the last assistant turn called tools and
                                      its thinking is unknown (Anthropic would refuse it), and
                                      ``temperature`` / ``top_p`` not sent with it (thinking
                                      takes neither)
    stop                            → ``stop_sequences``
    temperature (clamped to 0..1), top_p, user → temperature, top_p, metadata.user_id; the
                                      sampling pair is not sent to the models that have none
                                      (Opus 4.7 on, the 5 families: Anthropic answers 400
                                      "`temperature` is deprecated for this model")
    tools                           → tools[{name, description, input_schema}]
    tool_choice none|auto|required|{function}  → none|auto|any|tool;
    parallel_tool_calls:false       → disable_parallel_tool_use
    response_format json_schema     → ``output_config.format``; json_object → 400
    n > 1                           → 400; the rest as ``chat_fields.FIELDS`` says (refused
                                      with a 400 naming the field, or not sent)

A model with ``cache: auto`` gets cache breakpoints when the request has none
(``add_cache_breakpoints``): the top-level ``cache_control`` (Anthropic puts it on the last
cacheable block) and one on the last system block, else the last tool: two of the four
Anthropic allows.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from ..catalog import ModelSpec
from ..errors import InvalidRequest, echo
from . import shapes
from .chat_fields import refuse_unsupported
from .reasoning import anthropic_thinking
from .signatures import Signatures

DEFAULT_MAX_TOKENS = 4096
EPHEMERAL = {"type": "ephemeral"}
# the models that have no sampling parameters (temperature, top_p, top_k)
NO_SAMPLING = re.compile(r"^claude-(opus-4-([7-9]|\d\d)|(opus|sonnet|haiku)-([5-9]|\d\d)"
                         r"|fable|mythos)")


def to_anthropic(model: ModelSpec, body: dict, stream: bool,
                 signatures: Signatures | None = None) -> dict:
    """The Messages request for an OpenAI chat ``body`` on ``model``; ``signatures``: the
    gateway's store, for the thinking that led to earlier tool calls."""
    refuse_unsupported("anthropic", body)
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("`n` must be 1 for this model: Anthropic models give one choice "
                             "per request; send several requests instead.", param="n")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(body.get("messages") or []):
        role = m.get("role")
        if role in ("system", "developer"):
            text = shapes.text_of(m.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(m.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(m, i, signatures)
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise InvalidRequest(f"messages[{i}].tool_call_id is required on a tool "
                                     f"message.", param=f"messages[{i}].tool_call_id")
            result = {"type": "tool_result", "tool_use_id": m["tool_call_id"]}
            text = shapes.text_of(m.get("content"))
            if text:
                result["content"] = text
            role, blocks = "user", [result]
        else:
            raise InvalidRequest(f"messages[{i}].role `{echo(role, False)}` is not supported; "
                                 f"use system, developer, user, assistant or tool.",
                                 param=f"messages[{i}].role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for t in turns:                         # a lone text block reads better as a string
        if len(t["content"]) == 1 and t["content"][0]["type"] == "text":
            t["content"] = t["content"][0]["text"]

    thinking, max_tokens = anthropic_thinking(model, body, _max_tokens(body))
    if thinking is not None and not _may_think(turns, body.get("tool_choice")):
        thinking, max_tokens = None, _max_tokens(body)
    if thinking is None:                    # kept thinking goes back only with thinking on
        for t in turns:
            if t["role"] == "assistant" and isinstance(t["content"], list):
                t["content"] = [b for b in t["content"]
                                if b.get("type") not in ("thinking", "redacted_thinking")]
    out: dict = {"model": model.upstream, "max_tokens": max_tokens, "messages": turns}
    if thinking is not None:
        out["thinking"] = thinking
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("`stop` must be a string or a list of strings.", param="stop")
        out["stop_sequences"] = stop
    sampling = thinking is None and not NO_SAMPLING.match(model.upstream.lower())
    temperature = body.get("temperature")
    if temperature is not None and sampling:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
            raise InvalidRequest("`temperature` must be a number.", param="temperature")
        out["temperature"] = min(1.0, max(0.0, float(temperature)))
    if body.get("top_p") is not None and sampling:
        out["top_p"] = body["top_p"]
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    _add_tools(out, body)
    _add_format(out, body.get("response_format"))
    if stream:
        out["stream"] = True
    if model.cache == "auto":
        add_cache_breakpoints(out)
    return out


def _add_format(out: dict, fmt: Any) -> None:
    """``response_format``: a JSON schema becomes ``output_config.format``; Anthropic has no
    bare JSON mode."""
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("`response_format.json_schema.schema` must be a JSON schema "
                                 "object.", param="response_format.json_schema.schema")
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif kind == "json_object":
        raise InvalidRequest("`response_format` `json_object` is not supported by Anthropic "
                             "models on this gateway; send a `json_schema` instead.",
                             param="response_format")
    elif kind != "text":
        raise InvalidRequest("`response_format.type` must be text, json_object or "
                             "json_schema.", param="response_format.type")


def _may_think(turns: list[dict], tool_choice: Any) -> bool:
    """Whether thinking may be on: not with a forced tool (Anthropic refuses the pair), and
    not when the last assistant turn called tools without its thinking in front of them
    (Anthropic wants a final tool-calling turn to start with its thinking block)."""
    if tool_choice == "required" or isinstance(tool_choice, dict):
        return False
    last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last is None or not isinstance(last["content"], list):
        return True
    calls = any(b.get("type") == "tool_use" for b in last["content"])
    return not calls or last["content"][0].get("type") in ("thinking", "redacted_thinking")


def has_cache_control(obj: Any) -> bool:
    """Whether a Messages request (or any part of it) already carries a cache breakpoint.
    A walk with a list, not recursion: a tool call's decoded arguments may nest deeper than
    Python's recursion limit (the request then fails as too deep, a 400, when encoded)."""
    pending = [obj]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if "cache_control" in value:
                return True
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def add_cache_breakpoints(body: dict) -> dict:
    """``body`` (changed in place) with the ``cache: auto`` breakpoints, unless it has some
    already: top-level ``cache_control``, and the last system block's (else the last tool's)."""
    if has_cache_control(body):
        return body
    body["cache_control"] = dict(EPHEMERAL)
    system = body.get("system")
    if isinstance(system, str) and system:
        body["system"] = [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        system[-1] = {**system[-1], "cache_control": dict(EPHEMERAL)}
    elif isinstance(body.get("tools"), list) and body["tools"] \
            and isinstance(body["tools"][-1], dict):
        body["tools"][-1] = {**body["tools"][-1], "cache_control": dict(EPHEMERAL)}
    return body


def _max_tokens(body: dict) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"`{field}` must be a positive integer.", param=field)
        return value
    return DEFAULT_MAX_TOKENS


def _user_blocks(content: Any, param: str) -> list[dict]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"`{param}` must be a string or a list of parts.", param=param)
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append({"type": "image", "source": _image_source(url, f"{param}[{j}]")})
        else:
            raise InvalidRequest(f"`{param}[{j}]`: content parts of type "
                                 f"`{echo(kind, False)}` are not supported for this model "
                                 f"(use text or image_url).",
                                 param=f"{param}[{j}]")
    return blocks


def _image_source(url: Any, param: str) -> dict:
    if isinstance(url, str) and url.startswith("data:"):
        mime, data = shapes.parse_data_url(url, f"{param}.image_url.url")
        return {"type": "base64", "media_type": mime, "data": data}
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise InvalidRequest(f"`{param}.image_url.url` must be an http(s) URL or a data: URL.",
                         param=f"{param}.image_url.url")


def _assistant_blocks(m: dict, i: int, signatures: Signatures | None) -> list[dict]:
    content = m.get("content")
    text = shapes.text_of(content) if not isinstance(content, list) else "".join(
        p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict))
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    thinking: list[dict] = []
    for j, (id_, name, args) in enumerate(shapes.assistant_tool_calls(m, f"messages[{i}]")):
        blocks.append({"type": "tool_use", "id": id_ or f"toolu_{i}_{j}", "name": name,
                       "input": args})
        if not thinking and id_ and signatures is not None:
            thinking = thinking_blocks(signatures.get(id_))
    return thinking + blocks


def thinking_blocks(kept: str | None) -> list[dict]:
    """The thinking blocks ``Signatures`` kept for a tool call (JSON), or none."""
    if not kept:
        return []
    try:
        blocks = orjson.loads(kept)
    except orjson.JSONDecodeError:
        return []
    return [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []


def _add_tools(out: dict, body: dict) -> None:
    tools = body.get("tools")
    if not tools:
        return
    converted = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function" \
                or not fn.get("name"):
            raise InvalidRequest(f"tools[{j}] must be {{\"type\": \"function\", \"function\": "
                                 f"{{\"name\": ...}}}}.", param=f"tools[{j}]")
        t = {"name": fn["name"], "input_schema": fn.get("parameters")
             or {"type": "object", "properties": {}}}
        if fn.get("description"):
            t["description"] = fn["description"]
        converted.append(t)
    out["tools"] = converted
    choice = body.get("tool_choice")
    mapped = _tool_choice("auto" if choice is None else choice)
    if body.get("parallel_tool_calls") is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in mapped:
        out["tool_choice"] = mapped


def _tool_choice(choice: Any) -> dict:
    if choice in ("auto", "none", "required"):
        return {"type": "any" if choice == "required" else choice}
    if isinstance(choice, dict):
        fn, allowed = choice.get("function"), choice.get("allowed_tools")
        if choice.get("type") == "function" and isinstance(fn, dict) and fn.get("name"):
            return {"type": "tool", "name": fn["name"]}
        if choice.get("type") == "allowed_tools" and isinstance(allowed, dict):
            return {"type": "any" if allowed.get("mode") == "required" else "auto"}
    raise InvalidRequest("`tool_choice` must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}.",
                         param="tool_choice")
