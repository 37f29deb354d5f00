"""The Anthropic fake's strictness, with the anthropic SDK's own types: every Messages body is
validated as ``MessageCreateParams`` (pydantic over the SDK's TypedDicts, unknown fields
refused, nested lists walked), and stream events are built as the SDK's ``Raw*Event``
models.  On top of the types, what Anthropic itself refuses:

* ``temperature``, ``top_p`` or ``top_k`` on a model that has none (Opus 4.7 and later, the
  5 families: "`temperature` is deprecated for this model."); the SDK (1.0 on) has dropped
  the three from its types, the API still takes them on older models, so they are checked
  here and not by the types;
* more than 4 cache breakpoints;
* thinking with ``max_tokens`` not above ``budget_tokens``, with a budget under 1024, with
  ``temperature`` other than 1, ``top_p`` under 0.95 or ``top_k``, or with a forced tool;
* thinking on while the last assistant turn called tools without starting with its thinking
  block; a thinking block whose signature this fake never gave.

``cache_usage`` does Anthropic's cache arithmetic over the request's breakpoints."""
from __future__ import annotations

import hashlib
import re

import orjson
import pydantic
from anthropic.types import message_create_params as mcp
from pydantic import ConfigDict, TypeAdapter

from .base import words

MAX_BREAKPOINTS = 4
SAMPLING = ("temperature", "top_p", "top_k")
NO_SAMPLING = re.compile(r"^claude-(opus-4-([7-9]|\d\d)|(opus|sonnet|haiku)-([5-9]|\d\d)"
                         r"|fable|mythos)")
_PARAMS = {
    False: TypeAdapter(list[mcp.MessageCreateParamsNonStreaming],
                       config=ConfigDict(extra="forbid")),
    True: TypeAdapter(list[mcp.MessageCreateParamsStreaming], config=ConfigDict(extra="forbid")),
}


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _walk(value: object, loc: tuple) -> None:
    """Consume the lazily validated iterables (``Iterable[...]`` fields validate item by item
    as they are read), and refuse what only matched one of the SDK's response models (their
    ``extra`` is allowed: a request block with an unknown field lands there)."""
    if isinstance(value, pydantic.BaseModel):
        extra = sorted(value.model_extra or {})
        raise ValueError(f"{_dotted(loc)}.{extra[0] if extra else 'type'}: Extra inputs are "
                         f"not permitted")
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, (*loc, k))
    elif isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return
    elif hasattr(value, "__iter__"):
        for i, v in enumerate(value):
            _walk(v, (*loc, i))


def _best(exc: pydantic.ValidationError, body: dict) -> str:
    """Anthropic names one field: of a union's errors, the branch the block's ``type`` meant."""
    errors = exc.errors()
    for err in errors:
        loc = err["loc"]
        named = [p for p in loc if isinstance(p, str) and p[:1].isupper()]
        if not named or all(_matches(n, loc, body) for n in named):
            plain = [p for p in loc if not (isinstance(p, str) and p[:1].isupper())]
            return f"{_dotted(tuple(plain))}: {err['msg']}"
    err = errors[0]
    return f"{_dotted(tuple(err['loc']))}: {err['msg']}"


def _matches(name: str, loc: tuple, body: object) -> bool:
    """Whether the union branch ``name`` (e.g. TextBlockParam) is the one the value's
    ``type`` asks for."""
    value = body
    for p in loc:
        if isinstance(p, str) and p[:1].isupper():
            break
        try:
            value = value[p]               # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return False
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str):
        return True
    return name.lower().startswith(kind.replace("_", "")) and name.endswith("Param")


def type_problem(body: dict) -> str | None:
    """Why ``body`` is not a MessageCreateParams, as Anthropic words it (None: it is)."""
    for name in SAMPLING:
        if name in body and NO_SAMPLING.match(str(body.get("model"))):
            return f"`{name}` is deprecated for this model."
    body = {k: v for k, v in body.items() if k not in SAMPLING}
    try:
        parsed = _PARAMS[bool(body.get("stream"))].validate_python([body])
        _walk(parsed[0], ())
    except pydantic.ValidationError as exc:
        # the error's location starts at the list index the adapter wraps the body in
        return _best(exc, {0: body}).removeprefix("0.")  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return None


def breakpoints(body: dict) -> list[tuple]:
    """Where the request's cache breakpoints are: (place, index…) in prefix order (tools,
    system, messages); the top-level ``cache_control`` marks the last block of the last
    message."""
    found: list[tuple] = []
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict) and tool.get("cache_control"):
            found.append(("tools", i))
    system = body.get("system")
    for i, block in enumerate(system if isinstance(system, list) else []):
        if isinstance(block, dict) and block.get("cache_control"):
            found.append(("system", i))
    messages = body.get("messages") or []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, dict) and block.get("cache_control"):
                found.append(("messages", i, j))
    if body.get("cache_control") and messages:
        content = messages[-1].get("content")
        last = ("messages", len(messages) - 1,
                len(content) - 1 if isinstance(content, list) and content else 0)
        if last not in found:
            found.append(last)
    return found


def _prefix(body: dict, point: tuple) -> tuple[str, int]:
    """(a digest of, the words in) the request up to and including ``point``."""
    parts: list = [body.get("model"), body.get("tools") or []]
    count = 0
    system = body.get("system")
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system or []
    if point[0] == "tools":
        parts[1] = parts[1][:point[1] + 1]
        blocks = []
    elif point[0] == "system":
        blocks = blocks[:point[1] + 1]
    else:
        blocks = list(blocks)
    parts.append(blocks)
    count += sum(words(b.get("text")) for b in blocks if isinstance(b, dict))
    if point[0] == "messages":
        msgs = (body.get("messages") or [])[:point[1] + 1]
        for k, m in enumerate(msgs):
            content = m.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if k == point[1]:
                content = content[:point[2] + 1]
            parts.append([m.get("role"), content])
            count += sum(_block_words(b) for b in content)
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest, count


def _block_words(block: object) -> int:
    if not isinstance(block, dict):
        return 0
    if block.get("type") == "text":
        return words(block.get("text"))
    if block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return sum(_block_words(b) for b in content)
        return words(content if isinstance(content, str) else "")
    return 0


def _positions(body: dict) -> list[tuple]:
    """Every block boundary of the request, in prefix order."""
    out: list[tuple] = [("tools", i) for i in range(len(body.get("tools") or []))]
    system = body.get("system")
    out += [("system", i) for i in range(len(system) if isinstance(system, list)
                                         else 1 if system else 0)]
    for i, m in enumerate(body.get("messages") or []):
        content = m.get("content") if isinstance(m, dict) else None
        out += [("messages", i, j) for j in range(len(content) if isinstance(content, list)
                                                  else 1)]
    return out


def cache_usage(body: dict, prompt: int, cache: set[str]) -> tuple[int, int, int]:
    """(input_tokens, cache_read_input_tokens, cache_creation_input_tokens) of a request of
    ``prompt`` words: the longest prefix cached before (at any block boundary up to the last
    breakpoint, as Anthropic looks back) is read, the rest up to the last breakpoint is
    written (each breakpoint's prefix remembered in ``cache``), what follows is input."""
    points = breakpoints(body)
    if not points:
        return prompt, 0, 0
    order = _positions(body)
    upto = max(order.index(p) for p in points if p in order) if any(
        p in order for p in points) else -1
    read = max((n for d, n in (_prefix(body, p) for p in order[:upto + 1]) if d in cache),
               default=0)
    marked = [_prefix(body, p) for p in points]
    last = max(n for _, n in marked)
    cache.update(d for d, _ in marked)
    last = min(last, prompt)
    read = min(read, last)
    return prompt - last, read, last - read


def hour_cached(body: dict) -> int:
    """The words up to the last breakpoint whose ``cache_control`` asks for the 1-hour TTL
    (Anthropic wants those before the 5-minute ones: they cache the start of the prefix)."""
    marked = [p for p in breakpoints(body) if _control(body, p).get("ttl") == "1h"]
    return max((_prefix(body, p)[1] for p in marked), default=0)


def _control(body: dict, point: tuple) -> dict:
    """The ``cache_control`` of the block at ``point`` (the top-level one for the last block
    when that block has none of its own)."""
    try:
        if point[0] == "messages":
            block = body["messages"][point[1]]["content"][point[2]]
        else:
            block = body[point[0]][point[1]]
    except (KeyError, IndexError, TypeError):
        block = None
    control = block.get("cache_control") if isinstance(block, dict) else None
    control = control or body.get("cache_control")
    return control if isinstance(control, dict) else {}


def rule_problem(body: dict, signatures: set[str]) -> str | None:
    """What Anthropic refuses beyond the types (see the module docstring)."""
    count = len(breakpoints(body))
    if count > MAX_BREAKPOINTS:
        return (f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {count}.")
    messages = body.get("messages") or []
    for i, m in enumerate(messages):
        for j, block in enumerate(m.get("content") if isinstance(m.get("content"), list) else []):
            if block.get("type") == "thinking" and block.get("signature") not in signatures:
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens") or 0
    if budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= budget:
        return ("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                "our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                "extended-thinking#max-tokens-and-context-window-size")
    if body.get("temperature", 1) != 1:
        return "`temperature` may only be set to 1 when thinking is enabled."
    if body.get("top_p", 1) < 0.95 or "top_k" in body:
        return "`top_p` must be at least 0.95 and `top_k` unset when thinking is enabled."
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    content = last.get("content") if last else None
    if isinstance(content, list) and any(b.get("type") == "tool_use" for b in content) \
            and content[0].get("type") not in ("thinking", "redacted_thinking"):
        return ("messages.{}.content.0.type: Expected `thinking` or `redacted_thinking`, but "
                "found `{}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block (preceeding the lastmost set of `tool_use` and "
                "`tool_result` blocks). We recommend you include thinking blocks from previous "
                "turns.".format(messages.index(last), content[0].get("type")))
    return None
