"""Anthropic Messages as a client dialect: the content blocks of one message → chat messages,
and the small checks every part of the request translation uses (each failure a 400 whose
``param`` is the offending path).  ``anthropic_messages`` holds the request as a whole (system,
tools, tool_choice, thinking, sampling) and documents the full mapping.

    user text / image / document(text)   → a user message: one string when all text, parts
                                           (``image_url``: data: URL or URL) otherwise
    user search_result                   → text (title, source, then its text blocks)
    user tool_result                     → ``tool`` messages, placed before the user's other
                                           blocks; is_error → "Error: " before the text; images
                                           in a result go to the user message that follows
    assistant text + tool_use            → content + tool_calls (input as JSON arguments)
    assistant thinking                   → dropped, or ``reasoning_content`` (keep_reasoning);
                                           redacted_thinking dropped
"""
from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest, echo


# ---------------------------------------------------------------------- small checks
def bad(path: str, what: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"`{path}` {what}", param=path, code=code)


def as_object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, "must be an object.")
    return value


def as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise bad(path, "must be a string.")
    return value


def as_int(value: object, path: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad(path, f"must be an integer ≥ {minimum}.")
    return value


def as_number(value: object, path: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad(path, "must be a number.")
    return value


def as_blocks(content: object, path: str) -> list[dict[str, Any]]:
    """``content`` as a list of blocks, each an object with a string ``type``."""
    if not isinstance(content, list):
        raise bad(path, "must be a string or a list of content blocks.")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad(f"{path}[{j}]", "must be a content block: an object with a `type`.")
    return content


# ---------------------------------------------------------------------- message content
def user_turn(content: str | list[Any], path: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict] = []
    result_images: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(as_blocks(content, path)):
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
        text = as_str(block.get("text"), f"{where}.text")
        return {"type": "text", "text": text} if text else None
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    if kind in ("document", "search_result"):
        return {"type": "text", "text": _document_text(block, where)}
    if kind in ("tool_use", "thinking", "redacted_thinking"):
        raise bad(f"{where}.type", f"`{kind}` blocks belong in assistant messages.")
    raise bad(f"{where}.type", f"`{echo(kind, False)}` is not a block type this gateway "
                               f"translates for this model: use text, image, document (plain "
                               f"text) or tool_result.", code="unsupported_block")


def _image_url(block: dict, where: str) -> str:
    source = as_object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media = as_str(source.get("media_type"), f"{where}.source.media_type")
        data = as_str(source.get("data"), f"{where}.source.data")
        return f"data:{media};base64,{data}"
    if kind == "url":
        return as_str(source.get("url"), f"{where}.source.url")
    if kind == "file":
        raise bad(f"{where}.source.type", "`file` (an Anthropic Files API id) only works with "
                                          "Anthropic models: send the image as base64 or a URL.",
                  code="unsupported_block")
    raise bad(f"{where}.source.type", "must be `base64` or `url`.")


def _document_text(block: dict, where: str) -> str:
    """A plain-text document or a search result, as text (title first).  PDFs and Files API
    documents only Anthropic models read: 400."""
    title = block.get("title")
    if block["type"] == "search_result":
        body = _texts_of(block.get("content"), f"{where}.content")
        head = [as_str(title, f"{where}.title"), as_str(block.get("source"), f"{where}.source")]
        return "\n".join(head) + "\n\n" + body
    source = as_object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "text":
        body = as_str(source.get("data"), f"{where}.source.data")
    elif kind == "content":
        inner = source.get("content")
        body = inner if isinstance(inner, str) else _texts_of(inner, f"{where}.source.content")
    else:
        raise bad(f"{where}.source.type",
                  f"`{echo(kind, False)}` documents (PDFs, Files API ids) only Anthropic "
                  f"models read: send the document's text as a `text` source or a text "
                  f"block.",
                  code="unsupported_block")
    return f"{title}\n\n{body}" if isinstance(title, str) and title else body


def _texts_of(content: object, path: str) -> str:
    texts = []
    for j, block in enumerate(as_blocks(content, path)):
        if block["type"] != "text":
            raise bad(f"{path}[{j}].type", "must be `text` here.")
        texts.append(as_str(block.get("text"), f"{path}[{j}].text"))
    return "\n".join(texts)


def _tool_result(block: dict, where: str, images: list[dict]) -> dict:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_use_id", "is required: the id of the tool_use it answers.")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise bad(f"{where}.is_error", "must be true or false.")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts, first = [], len(images)
        for k, inner in enumerate(as_blocks(content, f"{where}.content")):
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


def assistant_turn(content: str | list[Any], path: str, keep_reasoning: bool) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}] if content else []
    texts, calls, reasoning = [], [], []
    for j, block in enumerate(as_blocks(content, path)):
        where, kind = f"{path}[{j}]", block["type"]
        if kind == "text":
            text = as_str(block.get("text"), f"{where}.text")
            if text:
                texts.append(text)
        elif kind == "tool_use":
            call_id = as_str(block.get("id"), f"{where}.id")
            name = as_str(block.get("name"), f"{where}.name")
            args = as_object(block.get("input"), f"{where}.input")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
        elif kind == "thinking":
            thought = as_str(block.get("thinking"), f"{where}.thinking")
            if thought:
                reasoning.append(thought)
        elif kind != "redacted_thinking":
            raise bad(f"{where}.type", f"`{echo(kind, False)}` is not valid in an assistant "
                                       f"message here: use text, tool_use or thinking.")
    if not texts and not calls:
        return []
    message: dict = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if keep_reasoning and reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    return [message]
