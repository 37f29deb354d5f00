"""What a request passed through to its upstream may ask for beyond plain chat, per model.

Passed through natively (Responses to an ``openai`` provider, Messages to an ``anthropic``
one), a request reaches the upstream as the client sent it, and an upstream can do more than
answer in tokens: run hosted tools (OpenAI's ``web_search``, ``image_generation``,
``code_interpreter``, ``file_search``, ``mcp``, …; Anthropic's ``web_search``, ``web_fetch``,
``code_execution``, …), serve a premium tier (``service_tier: priority``, ``speed: fast``),
read what the gateway's own account stores (uploaded files, containers, skills) or switch on
beta features (``anthropic-beta``).  Each is refused with a 400 naming it unless the model
allows it (``models.<alias>.allow``, ``catalog.Allow``; with fallbacks, every model of the
chain must), for issued keys and the master key alike:

    Responses, chat   service_tier          flex, scale, priority, fast, … not allowed
    Responses         tools[i]              a hosted tool not allowed, natively
                                            (``native_responses``; web_search,
                                            web_search_preview and a hosted tool_search are
                                            left out instead: Codex CLI declares them on every
                                            turn); translated, every hosted tool (the
                                            translation's own check)
    Messages          tools[i]              a vendor-defined tool not allowed
                      <field>               a top-level field that is neither plain
                                            (``PLAIN_MESSAGES_FIELDS``) nor allowed (``fields``:
                                            mcp_servers, container, inference_geo, …)
                      speed                 ``fast``, unless the tier ``fast`` is allowed
                      anthropic-beta        a flag neither harmless (``HARMLESS_BETAS``) nor
                                            allowed (files-api, skills, mcp-client,
                                            code-execution, context-1m, …)
                      ….cache_control.ttl   ``1h``, unless ``cache_control.ttl`` is allowed
    both              ….file_id             never: the files of the gateway's account are not
                                            the key holder's (``refuse_stored``)

Messages requests are checked whatever serves the model (``check_messages``; a translated
one would lose what it asks for anyway), Responses ones natively (the translation refuses
hosted tools itself).  An allowed server tool costs ``credits.tools[<family>]`` per call,
counted from what the upstream reports (``count_responses_item``, ``count_anthropic``); the
credit hold reserves ``limits.max_tool_calls`` calls (``hosted_estimate``), which is sent
upstream as ``max_tool_calls`` (Responses, ``native_responses``) or each tool's ``max_uses``
(Anthropic's web search and fetch, ``bound_messages``) when the client asked for more.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .catalog import Allow, ModelSpec
from .dialects.responses_tools import SKIPPED_HOSTED_TOOLS, _tool_lists
from .errors import InvalidRequest

# Hosted tools, by family (a tool's type without its date: web_search_20250305 → web_search).
# Those the vendor runs cost per call (allowed, they need a price: credits.tools) ...
SERVER_TOOLS = frozenset({
    "web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation",
    "mcp", "tool_search", "programmatic_tool_calling",                     # Responses
    "web_fetch", "code_execution", "tool_search_tool_regex", "tool_search_tool_bm25"})
# ... those the client runs (the vendor only defines them) cost their tokens alone.
CLIENT_TOOLS = frozenset({"computer", "computer_use_preview", "local_shell", "shell",
                          "apply_patch", "bash", "text_editor", "memory"})
HOSTED_TOOLS = SERVER_TOOLS | CLIENT_TOOLS
# Tiers that cost more (or less) than the standard price: they need leave and a multiplier.
PREMIUM_TIERS = frozenset({"flex", "scale", "priority", "fast", "ultrafast"})
# anthropic-beta flags that change only the format of what is already priced or allowed
# (Claude Code sends the first seven on every request), by name: without the date.
HARMLESS_BETAS = frozenset({
    "claude-code", "interleaved-thinking", "thinking-token-count", "context-management",
    "prompt-caching-scope", "mid-conversation-system", "effort", "prompt-caching",
    "fine-grained-tool-streaming", "token-efficient-tools", "token-counting", "output-128k",
    "structured-outputs", "extended-cache-ttl"})
# Messages fields that carry nothing beyond the conversation and how to answer it.
PLAIN_MESSAGES_FIELDS = frozenset({
    "model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
    "output_format", "context_management", "service_tier", "cache_control"})
CACHE_TTL = "cache_control.ttl"           # the allow.fields entry for the 1-hour cache
IMAGE_TOOL = "image_generation"           # the hosted tool that counts against images limits
MAX_DEPTH = 32                            # content nested deeper is a 400 (refuse_stored)

_DATE = re.compile(r"_(\d{8}|\d{4}_\d{2}_\d{2})$")
_BETA_DATE = re.compile(r"-\d{4}-?\d{2}-?\d{2}$")
_FAMILY = {"mcp_toolset": "mcp"}
# Responses output items made by a server tool's call -> its family
_CALL_ITEMS = {"web_search_call": "web_search", "file_search_call": "file_search",
               "code_interpreter_call": "code_interpreter",
               "image_generation_call": "image_generation", "mcp_call": "mcp",
               "tool_search_call": "tool_search",
               "programmatic_tool_calling": "programmatic_tool_calling"}
# Anthropic server_tool_use names that are not their tool's family
_SERVER_NAMES = {"bash_code_execution": "code_execution",
                 "text_editor_code_execution": "code_execution"}
_PLAIN_RESPONSES_TOOLS = frozenset({"function", "custom", "namespace"})


def family(kind: str) -> str:
    """The family of a tool type: ``web_search_20250305`` → ``web_search``,
    ``web_search_preview_2025_03_11`` → ``web_search_preview``, ``mcp_toolset`` → ``mcp``."""
    kind = _DATE.sub("", kind)
    return _FAMILY.get(kind, kind)


def _leave(alias: str, key: str) -> str:
    return f"the operator can allow it for `{alias}` in models.yaml (models.{alias}.allow.{key})"


# ---------------------------------------------------------------------- stored objects
# A path into the request, built as the scan goes and spelled out only for an error: the root's
# name, then (parent, key or index) pairs.
Where = tuple[Any, "str | int"]


def _spelled(where: Where | None) -> str:
    parts = []
    while where is not None:
        where, step = where
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return "".join(reversed(parts)).lstrip(".")


def _scan(value: Any, root: str, ttl_of: str | None = None) -> None:
    """400 at the first file named in client content: ``value`` (at ``root``) and the
    ``content``, ``source`` and ``output`` inside it, however deep (at most ``MAX_DEPTH``):
    a ``file_id``, or an Anthropic ``source`` of type ``file``.  With ``ttl_of`` (a model's
    alias), also at a ``cache_control`` whose TTL is not 5 minutes.  Tool inputs, annotations
    and citations are not read: they are the model's words, not content sent."""
    stack: list[tuple[Any, Where, int]] = [(value, (None, root), 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            at = _spelled(where)
            raise InvalidRequest(f"`{at}` nests content more than {MAX_DEPTH} levels deep; "
                                 f"this gateway reads at most {MAX_DEPTH}.", param=at)
        if type(node) is list:
            stack.extend([(v, (where, i), depth + 1) for i, v in enumerate(node)])
            continue
        if type(node) is not dict:
            continue
        if node.get("file_id"):
            _stored(_spelled((where, "file_id")))
        if where[1] == "source" and node.get("type") == "file":
            _stored(_spelled((where, "type")))
        if ttl_of is not None and "cache_control" in node:
            _ttl(node, _spelled(where) + ".", ttl_of)
        for key in ("content", "source", "output"):
            inner = node.get(key)
            if type(inner) is list or type(inner) is dict:
                stack.append((inner, (where, key), depth + 1))


def _stored(at: str) -> None:
    raise InvalidRequest(
        f"`{at}`: files uploaded to the provider are not reachable through this gateway "
        f"(they belong to its account); send the file inline (base64 data, text, or a URL).",
        param=at, code="unsupported_parameter")


def refuse_stored(value: Any, path: str) -> None:
    """400 at the first file id in the client content ``value`` (at ``path``)."""
    _scan(value, path)


# ---------------------------------------------------------------------- tiers
def requested_tier(body: dict) -> str:
    """The premium tier a request asks for ("" for the standard one): ``service_tier``
    (Responses, chat), or ``fast`` for Anthropic's ``speed: fast``."""
    tier = body.get("service_tier")
    if tier is None and body.get("speed") == "fast":
        return "fast"
    return tier if isinstance(tier, str) and tier in PREMIUM_TIERS else ""


def check_tier(body: dict, model: ModelSpec, allow: Allow) -> None:
    """A ``service_tier`` other than ``auto`` / ``default`` is a 400 unless allowed."""
    tier = body.get("service_tier")
    if tier is None or tier in ("auto", "default") or tier in allow.service_tiers:
        return
    shown = tier if isinstance(tier, str) else repr(tier)
    raise InvalidRequest(
        f"`service_tier` {str(shown)[:40]!r} is not available for `{model.alias}` on this "
        f"gateway (it is billed above the standard price); leave it out or send `auto`. "
        f"{_leave(model.alias, 'service_tiers').capitalize()}.",
        param="service_tier", code="unsupported_parameter")


# ---------------------------------------------------------------------- Responses
def _responses_tools(body: dict) -> Iterable[tuple[str, int, dict, str]]:
    """(list path, index, tool, family) of each hosted tool the request declares."""
    for where, tools in _tool_lists(body):
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str) or kind in _PLAIN_RESPONSES_TOOLS:
                continue
            if kind == "tool_search" and tool.get("execution") == "client":
                continue                          # the client searches its own tools
            yield where, i, tool, family(kind)


def native_responses(body: dict, model: ModelSpec, allow: Allow, max_calls: int,
                     max_images: int) -> dict:
    """A Responses body for the upstream's own ``/responses``: a hosted tool not allowed
    is a 400 naming it (web_search, web_search_preview and tool_search are left out instead);
    ``max_tool_calls`` at most ``max_calls`` (``max_images`` with image_generation) when a
    hosted tool remains."""
    drop: dict[str, set[int]] = {}
    hosted: set[str] = set()
    for where, i, _, fam in _responses_tools(body):
        if fam in allow.tools:
            hosted.add(fam)
        elif fam in SKIPPED_HOSTED_TOOLS:
            drop.setdefault(where, set()).add(i)
        else:
            raise InvalidRequest(
                f"`{where}[{i}]`: the hosted tool `{fam}` is not available for `{model.alias}` "
                f"on this gateway (hosted tools act for, and are billed to, the gateway's own "
                f"account); remove it or declare a function tool instead. "
                f"{_leave(model.alias, 'tools').capitalize()}.",
                param=f"{where}[{i}]", code="unsupported_tool")
    if drop:
        body = _without(body, drop)
    if hosted:
        bound = min(max_calls, max_images) if IMAGE_TOOL in hosted else max_calls
        asked = body.get("max_tool_calls")
        if not (isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= bound):
            body = {**body, "max_tool_calls": bound}
    return body


def _without(body: dict, drop: dict[str, set[int]]) -> dict:
    """``body`` without the tools at the given indexes of each tool list."""
    body = dict(body)
    if "tools" in drop:
        body["tools"] = [t for i, t in enumerate(body["tools"]) if i not in drop["tools"]]
        if not body["tools"]:
            body.pop("tools")
            body.pop("tool_choice", None)
    items = body.get("input")
    if isinstance(items, list) and len(drop) > ("tools" in drop):
        body["input"] = list(items)
        for i, item in enumerate(items):
            gone = drop.get(f"input[{i}].tools")
            if gone:
                body["input"][i] = {**item, "tools": [t for j, t in enumerate(item["tools"])
                                                     if j not in gone]}
    return body


def makes_images(body: dict) -> bool:
    """Whether a (checked) Responses request may generate images."""
    return any(fam == IMAGE_TOOL for _, _, _, fam in _responses_tools(body))


def count_responses_item(item: Any, counts: dict[str, int]) -> None:
    """Count ``item`` (a Responses output item) if a server tool's call made it."""
    if isinstance(item, dict):
        fam = _CALL_ITEMS.get(item.get("type"))       # type: ignore[arg-type]
        if fam is not None and item.get("execution") != "client":
            counts[fam] = counts.get(fam, 0) + 1


# ---------------------------------------------------------------------- Messages
def harmless_beta(flag: str) -> bool:
    """Whether ``flag`` (``name-2025-05-14`` or ``name-20250219``) is one of
    ``HARMLESS_BETAS``."""
    return _BETA_DATE.sub("", flag) in HARMLESS_BETAS


def check_messages(body: dict, beta: str | None, model: ModelSpec, allow: Allow) -> None:
    """A Messages request for an Anthropic upstream, as the module docstring says: 400 at
    the first field, flag, tool, file id or cache TTL the model does not allow."""
    alias = model.alias
    for name in body:
        if name in PLAIN_MESSAGES_FIELDS or name in allow.fields:
            continue
        if name == "speed" and (body[name] in (None, "standard")
                                or "fast" in allow.service_tiers):
            continue
        key = "service_tiers" if name == "speed" else "fields"
        raise InvalidRequest(
            f"`{name[:60]}` is not passed to `{alias}` on this gateway (it reaches what the "
            f"gateway's account holds, or costs more than tokens); leave it out. "
            f"{_leave(alias, key).capitalize()}.", param=name[:60],
            code="unsupported_parameter")
    for flag in (beta or "").split(","):
        flag = flag.strip()
        if flag and not harmless_beta(flag) and not allow.beta(flag):
            raise InvalidRequest(
                f"The `anthropic-beta` flag `{flag[:80]}` is not passed to `{alias}` on this "
                f"gateway (it switches on what the gateway's account holds, or what costs more "
                f"than tokens); send the request without it. "
                f"{_leave(alias, 'anthropic_beta').capitalize()}.",
                param="anthropic-beta", code="unsupported_parameter")
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "custom" and family(kind) not in allow.tools:
            raise InvalidRequest(
                f"`tools[{i}]` is Anthropic's tool `{kind[:60]}`, which is not available for "
                f"`{alias}` on this gateway (Anthropic's tools act for, and are billed to, the "
                f"gateway's account); remove it or declare a custom tool with a name and an "
                f"input_schema. {_leave(alias, 'tools').capitalize()}.",
                param=f"tools[{i}]", code="unsupported_tool")
    ttl_of = None if CACHE_TTL in allow.fields else alias
    for key in ("system", "messages"):
        _scan(body.get(key), key, ttl_of)
    if ttl_of is not None:
        _ttl(body, "", alias)
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            if isinstance(tool, dict) and "cache_control" in tool:
                _ttl(tool, f"tools[{i}].", alias)


def _ttl(obj: Any, where: str, alias: str) -> None:
    """400 for a ``cache_control`` with a TTL other than 5 minutes (the 1-hour cache is
    billed at twice the input price per token written)."""
    control = obj.get("cache_control") if isinstance(obj, dict) else None
    ttl = control.get("ttl") if isinstance(control, dict) else None
    if ttl is not None and ttl != "5m":
        raise InvalidRequest(
            f"`{where}cache_control.ttl` {str(ttl)[:20]!r}: only the 5-minute cache is "
            f"available for `{alias}` on this gateway (a longer one is billed at twice the "
            f"input price); leave `ttl` out. {_leave(alias, 'fields').capitalize()} "
            f"(`{CACHE_TTL}`).", param=f"{where}cache_control.ttl",
            code="unsupported_parameter")


def bound_messages(body: dict, max_calls: int) -> dict:
    """Each web search and web fetch tool's ``max_uses`` at most ``max_calls``."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return body
    bounded = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and family(kind) in ("web_search", "web_fetch"):
            asked = tool.get("max_uses")
            if not (isinstance(asked, int) and not isinstance(asked, bool)
                    and 0 < asked <= max_calls):
                tool = {**tool, "max_uses": max_calls}
        bounded.append(tool)
    return {**body, "tools": bounded}


def count_anthropic(obj: dict, counts: dict[str, int]) -> None:
    """Count the server tool calls of an Anthropic Message, or of one stream event: its
    ``server_tool_use`` / ``mcp_tool_use`` blocks, and ``usage.server_tool_use`` (the
    ``*_requests`` counts; the larger of the two counts wins, as both count the same calls)."""
    block = obj.get("content_block")
    blocks = [block] if isinstance(block, dict) else obj.get("content")
    for b in blocks if isinstance(blocks, list) else ():
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "server_tool_use":
            name = str(b.get("name"))
            fam = _SERVER_NAMES.get(name, name)
        elif kind == "mcp_tool_use":
            fam = "mcp"
        else:
            continue
        counts[fam] = counts.get(fam, 0) + 1
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        usage = (obj.get("message") or {}).get("usage")
    reported = usage.get("server_tool_use") if isinstance(usage, dict) else None
    for key, n in (reported.items() if isinstance(reported, dict) else ()):
        if isinstance(key, str) and key.endswith("_requests") and type(n) is int and n > 0:
            fam = key.removesuffix("_requests")
            counts[fam] = max(counts.get(fam, 0), n)


# ---------------------------------------------------------------------- the hold
def hosted_estimate(model: ModelSpec, body: dict, tokens: float, max_calls: int) -> float:
    """What a request may cost beyond ``tokens`` (its estimate at the standard tier): the
    requested tier's multiplier over them, and every hosted tool call it may make: up to
    ``max_tool_calls`` calls in all (Responses), else each tool's ``max_uses`` or
    ``max_calls``, at the tool's price."""
    c = model.credits
    extra = 0.0
    if c.service_tier:
        tier = requested_tier(body)
        if tier:
            extra += tokens * (c.tier_factor(tier) - 1.0)
    if not c.tools:
        return extra
    calls, rates = 0.0, []
    for _, tools in _tool_lists(body):
        for tool in tools if isinstance(tools, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            rate = c.tool_rate(family(kind)) if isinstance(kind, str) else 0.0
            if rate:
                uses = tool.get("max_uses")               # Anthropic: per tool
                rates.append(rate)
                calls += rate * (uses if isinstance(uses, int) and 0 < uses < max_calls
                                 else max_calls)
    bound = body.get("max_tool_calls")                    # Responses: in all
    if rates and isinstance(bound, int) and 0 < bound <= max_calls:
        return extra + bound * max(rates)
    return extra + calls
