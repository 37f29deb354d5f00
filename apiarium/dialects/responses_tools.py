"""OpenAI Responses API: the request's tools, as chat function tools, and the path checks
every Responses module shares.

    function {name, parameters, strict}   → the same chat function tool
    custom {name, format}                 → a chat function tool taking one ``input`` string
                                            (a grammar, if any, is quoted to the model)
    namespace {name, tools[]}             → each member flattened to ``namespace__name``
    web_search, tool_search (Codex CLI sends them on every turn) → dropped
    any other hosted tool                 → 400 naming ``tools[i]`` (unless the upstream is
                                            OpenAI's own Responses API: ``native_ok``)

``tool_map`` gives the way back: chat function name → (kind, name, namespace).
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from ..errors import InvalidRequest, echo

# Hosted tools dropped (not refused) by default: Codex CLI declares them on every request as
# optional capabilities, and refusing them would fail every Codex turn on a chat upstream.
SKIPPED_HOSTED_TOOLS = frozenset({"web_search", "web_search_preview", "tool_search"})


class ToolRef(NamedTuple):
    """What a chat function name stands for in the Responses request."""
    kind: str                   # "function" or "custom"
    name: str
    namespace: str | None


def flat_name(name: str, namespace: Any) -> str:
    """The chat function name of a Responses tool: ``namespace__name`` for a namespace member
    (``mcp__srv__`` + ``tool`` when the namespace already ends in ``__``), at most 64
    characters (longer ones end in a digest).  Deterministic, so history items name the same
    function whether or not the current request still declares the namespace."""
    if not isinstance(namespace, str) or not namespace:
        return name
    joined = namespace + name if namespace.endswith("__") else f"{namespace}__{name}"
    if len(joined) <= 64:
        return joined
    return f"{joined[:55]}_{hashlib.sha256(joined.encode()).hexdigest()[:8]}"


def bad(message: str, param: str) -> InvalidRequest:
    """A 400 whose ``param`` is the path of the offending field."""
    return InvalidRequest(message, param=param)


def str_at(value: Any, param: str, *, empty: bool = False) -> str:
    """``value`` when it is a (non-empty, unless ``empty``) string, else a 400 at ``param``."""
    if not isinstance(value, str) or (not empty and not value):
        raise bad(f"`{param}` must be a{'' if empty else ' non-empty'} string.", param)
    return value


def list_at(value: Any, param: str) -> list:
    """``value`` when it is a list, else a 400 at ``param``."""
    if not isinstance(value, list):
        raise bad(f"`{param}` must be an array.", param)
    return value


def obj_at(value: Any, param: str) -> dict:
    """``value`` when it is an object, else a 400 at ``param``."""
    if not isinstance(value, dict):
        raise bad(f"`{param}` must be an object.", param)
    return value


def _tool_lists(body: dict) -> Iterable[tuple[str, Any]]:
    """(path, list of tools) of the request: ``tools`` and the tools that ``additional_tools``
    and ``tool_search_output`` input items bring in."""
    yield "tools", body.get("tools")
    items = body.get("input")
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") in ("additional_tools",
                                                               "tool_search_output"):
                yield f"input[{i}].tools", item.get("tools")


def check_portable(body: dict, *, native_ok: bool = False,
                   skip: Collection[str] = SKIPPED_HOSTED_TOOLS) -> None:
    """Refuse hosted tools (they run on OpenAI's servers) unless the upstream is OpenAI's own
    Responses API (``native_ok``), where the request is passed through untranslated.  Tool
    types in ``skip`` are dropped by ``to_chat`` instead (``skip=()`` refuses them too)."""
    if native_ok:
        return
    for where, tools in _tool_lists(body):
        if tools is None:
            continue
        for i, tool in enumerate(list_at(tools, where)):
            kind = obj_at(tool, f"{where}[{i}]").get("type")
            members = tool.get("tools") if kind == "namespace" else []
            for j, member in enumerate(members if isinstance(members, list) else []):
                if isinstance(member, dict) and member.get("type") not in ("function",
                                                                           "custom"):
                    raise bad(f"`{where}[{i}].tools[{j}].type` must be function or custom.",
                              f"{where}[{i}].tools[{j}].type")
            if kind in ("function", "custom", "namespace") or kind in skip:
                continue
            if not isinstance(kind, str):
                raise bad(f"`{where}[{i}].type` must be a string.", f"{where}[{i}].type")
            raise bad(f"`{where}[{i}]`: the hosted tool `{echo(kind, False)}` runs only on "
                      f"OpenAI's own servers and this model is not served by them; remove it "
                      f"or declare a function tool instead.", f"{where}[{i}]")



# ---------------------------------------------------------------------------- translation

def _custom_parameters(tool: dict) -> dict:
    fmt = tool.get("format")
    hint = "The raw input of the tool, as free text (not JSON)."
    if isinstance(fmt, dict) and fmt.get("type") == "grammar" and fmt.get("definition"):
        hint += (f" It must match this {fmt.get('syntax', '')} grammar:\n"
                 f"{fmt['definition']}")
    return {"type": "object", "properties": {"input": {"type": "string", "description": hint}},
            "required": ["input"], "additionalProperties": False}


def _chat_tool(tool: dict, where: str, namespace: str | None) -> tuple[dict, ToolRef]:
    name = str_at(tool.get("name"), f"{where}.name")
    kind = tool.get("type")
    fn: dict[str, Any] = {"name": flat_name(name, namespace)}
    if tool.get("description") is not None:
        fn["description"] = str_at(tool["description"], f"{where}.description", empty=True)
    if kind == "function":
        if tool.get("parameters") is not None:
            fn["parameters"] = obj_at(tool["parameters"], f"{where}.parameters")
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
    else:
        fn["parameters"] = _custom_parameters(tool)
    return {"type": "function", "function": fn}, ToolRef(str(kind), name, namespace)


def walk_tools(body: dict, skip: Collection[str]) -> Iterable[tuple[dict, ToolRef]]:
    """(chat tool, ToolRef) of every function, custom and namespace-member tool, checked;
    a hosted tool not in ``skip`` raises."""
    for where, tools in _tool_lists(body):
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind in ("function", "custom"):
                yield _chat_tool(tool, f"{where}[{i}]", None)
            elif kind == "namespace":
                ns = str_at(tool.get("name"), f"{where}[{i}].name")
                for j, member in enumerate(list_at(tool.get("tools"), f"{where}[{i}].tools")):
                    yield _chat_tool(obj_at(member, f"{where}[{i}].tools[{j}]"),
                                     f"{where}[{i}].tools[{j}]", ns)
            elif kind not in skip:
                check_portable(body, skip=skip)     # raises, naming the tool


def tool_map(body: dict) -> dict[str, ToolRef]:
    """Chat function name → the Responses tool it stands for, for every function and custom
    tool the request declares (namespace members included).  Lenient: it reads a request
    that ``to_chat`` has already checked."""
    refs: dict[str, ToolRef] = {}
    for _, tools in _tool_lists(body):
        for tool in tools if isinstance(tools, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind in ("function", "custom"):
                members, ns = [tool], None
            elif kind == "namespace" and isinstance(tool.get("tools"), list):
                members, ns = tool["tools"], tool.get("name")
            else:
                continue
            for m in members:
                if isinstance(m, dict) and isinstance(m.get("name"), str) \
                        and m.get("type") in ("function", "custom"):
                    namespace = ns if isinstance(ns, str) else None
                    refs.setdefault(flat_name(m["name"], namespace),
                                    ToolRef(m["type"], m["name"], namespace))
    return refs


def tool_choice(choice: Any, refs: dict[str, ToolRef], tools: list[dict]) -> Any:
    """Responses ``tool_choice`` → chat; ``allowed_tools`` narrows ``tools`` in place."""
    if choice in ("auto", "none", "required"):
        return choice
    choice = obj_at(choice, "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = flat_name(str_at(choice.get("name"), "tool_choice.name"), choice.get("namespace"))
        if name not in refs:
            raise bad(f"`tool_choice.name` names `{echo(name, False)}`, which is not in `tools`.",
                      "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode")
        if mode not in ("auto", "required"):
            raise bad("`tool_choice.mode` must be auto or required.", "tool_choice.mode")
        allowed = {flat_name(t.get("name", ""), t.get("namespace"))
                   for t in list_at(choice.get("tools"), "tool_choice.tools")
                   if isinstance(t, dict)}
        tools[:] = [t for t in tools if t["function"]["name"] in allowed]
        return mode
    raise bad("`tool_choice` must be auto, none, required, {\"type\": \"function\", "
              "\"name\": ...}, {\"type\": \"custom\", \"name\": ...} or allowed_tools; hosted "
              "tools cannot be forced on this model.", "tool_choice")
