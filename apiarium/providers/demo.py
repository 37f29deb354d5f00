"""`kind: demo`: answers made here, with no upstream, no key and no network: for a first run,
and for testing a client against the gateway.  ``apiarium serve --demo`` puts one in front of
every model whose provider has no key (``with_demo``); a catalog may also name the kind
itself (``{kind: demo}``, no ``base_url`` or ``api_key``).

The same request gets the same answer (ids and ``created`` aside), and every answer says it
comes from the demo:

chat         text starting ``[demo]`` that quotes the last paragraph of the last user turn.
             When the request offers ``tools`` (and ``tool_choice`` is not ``none``) and the
             conversation holds no tool result yet, one call of the first tool (or of the one
             ``tool_choice`` names), its arguments made from the tool's JSON schema
             (``example``: the required properties, each an enum's first value, its default,
             ``FILLER``, a number, false, or a nested object or array made the same way).
             Once the last message (system and developer ones aside) is a tool result, text
             quoting it.  A conversation whose last user paragraph is ``FILLER`` is answered
             in text: an agent client that runs a sub-agent on the task the demo made up
             (Claude Code's ``Agent`` tool) gets an answer, not another call that starts
             another sub-agent.  ``response_format`` ``json_schema``: an object made from the
             schema the same way; ``json_object``: ``{"demo": true, "answer": ...}``.
             ``max_completion_tokens`` / ``max_tokens`` cut the text (finish_reason
             ``length``).
stream       the same answer as ``chat.completion.chunk`` frames: the role, then a word a
             frame (a tool call: its name, then its arguments in two halves), the finish
             reason, the usage chunk when ``stream_options.include_usage`` asks for it, and
             ``data: [DONE]``; ``frame_delay_ms`` (20) between two frames, so that streaming
             shows in a browser.
usage        one token per 4 characters (rounded up) of the prompt's text (messages, tool
             calls, tool definitions) and of the answer.
completions  ``/v1/completions`` natively too (``completions: native``): the prompt as one
             user turn, answered as chat.
embed        unit vectors from SHAKE-256 of each input's text: ``dimensions`` numbers (default:
             the upstream id's usual size, else 1536; at most 3072), a shorter vector being
             the longer one's start, renormalized (as OpenAI's shortened vectors are).
image        a PNG of the ``size`` asked for (a ratio: 1024 on the long side; ``auto``: 1024 x
             1024): a gradient between two colours taken from a hash of the prompt (and the
             image's index), the prompt's first words written on it, and ``[demo]``.
video        none: ``with_demo`` leaves a video model with its own provider.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import math
import re
import sys
import textwrap
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .. import embedding, legacy, sse
from ..catalog import Catalog, ModelSpec, ProviderSpec
from ..embedding import EmbeddingRequest
from ..errors import InvalidRequest
from ..generation import ImageRequest, Media
from ..modeltypes import MODEL_TYPES
from .base import Provider
from .shapes import Chunks, completion, text_of, tool_call, wants_usage
from .shapes import usage as usage_object

CHARS_PER_TOKEN = 4
QUOTE_CHARS = 160                      # the most of a user turn or tool result an answer quotes
FILLER = "apiarium-demo"               # the string in the tool arguments the demo makes up
DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
              "text-embedding-ada-002": 1536, "gemini-embedding-001": 3072}
DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 3072
THREAD_FLOATS = 200_000                # embeddings beyond this many numbers are made off the loop
IMAGE_SIDE = 1024                      # the long side of an image asked for by ratio (or auto)
_WORD = re.compile(r"\s*\S+\s*|\s+")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_PARAGRAPH = re.compile(r"\n\s*\n")


def tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def quote(text: str) -> str:
    """``text`` on one line, cut to ``QUOTE_CHARS``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_CHARS else flat[:QUOTE_CHARS - 1].rstrip() + "…"


# ---------------------------------------------------------------------------- JSON schemas
def example(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies a simple JSON schema: its ``const``, an enum's first value, its
    ``default``, the first choice of ``anyOf`` / ``oneOf`` / ``allOf``, else by ``type``: an
    object of its required properties, an array of ``minItems`` items, the ``minimum`` (or 1)
    of a number, false, or ``FILLER`` (stretched to ``minLength``, cut to ``maxLength``)."""
    if not isinstance(schema, dict) or depth > 16:
        return FILLER
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        choices = schema.get(key)
        if isinstance(choices, list) and choices:
            return example(choices[0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {n: example(props.get(n), depth + 1) for n in names}
    if kind == "array":
        least = schema.get("minItems")
        count = least if isinstance(least, int) and 0 < least <= 8 else 0
        return [example(schema.get("items"), depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, kind)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    least = schema.get("minLength")
    text = FILLER
    if isinstance(least, int) and least > len(text):
        text = (f"{FILLER} " * (least // len(FILLER) + 1))[:least]
    most = schema.get("maxLength")
    return text[:most] if isinstance(most, int) and most >= 0 else text


def _number(schema: dict, kind: str) -> int | float:
    """1, or the least value the schema allows (within its maximum)."""
    low, above, high = (_num(schema.get(k)) for k in ("minimum", "exclusiveMinimum", "maximum"))
    value = low if low is not None else 1
    if above is not None and value <= above:
        value = above + 1
    if high is not None and value > high:
        value = high
    return math.ceil(value) if kind == "integer" else value


def _num(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------- chat
@dataclass(frozen=True)
class Reply:
    """The demo's answer to one chat request: text, or one tool call (id, name, arguments)."""
    content: str | None
    call: tuple[str, str, str] | None
    finish: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict:
        return usage_object(self.prompt_tokens, self.completion_tokens)


def _functions(body: dict) -> list[dict]:
    """The function tools a chat request offers (``{"name", "parameters"}`` each)."""
    out = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            out.append(fn)
    return out


def _chosen(functions: list[dict], choice: Any) -> dict | None:
    """The tool to call (None: answer text), as ``tool_choice`` says."""
    if not functions or choice == "none":
        return None
    named = choice.get("function") if isinstance(choice, dict) else None
    name = named.get("name") if isinstance(named, dict) else None
    return next((f for f in functions if f["name"] == name), functions[0])


def _prompt_chars(messages: list, functions: list[dict]) -> int:
    chars = len(orjson.dumps(functions)) if functions else 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        chars += len(text_of(m.get("content")))
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return chars


def _last_text(content: Any) -> str:
    """The last paragraph of a message's text (a Claude Code turn puts reminders first)."""
    if isinstance(content, list):
        texts = [text_of([p]) for p in content]
        text = next((t for t in reversed(texts) if t.strip()), "")
    else:
        text = text_of(content)
    return next((p for p in reversed(_PARAGRAPH.split(text)) if p.strip()), "")


def _tool_name(messages: list, call_id: Any) -> str:
    """The name of the function the assistant called as ``call_id`` ("" if not found)."""
    for m in reversed(messages):
        for tc in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
            if isinstance(tc, dict) and tc.get("id") == call_id:
                fn = tc.get("function")
                return str(fn.get("name") or "") if isinstance(fn, dict) else ""
    return ""


def _last(messages: list, roles: tuple[str, ...]) -> dict:
    """The last message of one of ``roles`` ({} if none)."""
    return next((m for m in reversed(messages) if isinstance(m, dict)
                 and m.get("role") in roles), {})


def _text(alias: str, messages: list) -> str:
    last = _last(messages, ("user", "assistant", "tool"))    # instructions come after turns
    if last.get("role") == "tool":
        name = _tool_name(messages, last.get("tool_call_id"))
        said = quote(text_of(last.get("content")))
        return (f"[demo] The tool {f'`{name}` ' if name else ''}answered: “{said}”. "
                f"(Apiarium's demo provider, standing in for `{alias}`: no model was asked.)")
    said = quote(_last_text(_last(messages, ("user",)).get("content")))
    heard = f"You wrote: “{said}”" if said else "There was no user text to quote."
    return (f"[demo] This answer comes from Apiarium's demo provider, standing in for "
            f"`{alias}`: no model was asked. {heard}")


def _formatted(body: dict, text: str) -> str:
    """``text``, or the JSON the request's ``response_format`` asks for."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(example(schema if isinstance(schema, dict) else
                                    {"type": "object"})).decode()
    if kind == "json_object":
        return orjson.dumps({"demo": True, "answer": text}).decode()
    return text


def _limit(body: dict) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def reply(alias: str, body: dict) -> Reply:
    """The demo's answer to a chat request (``body``: OpenAI's chat shape)."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    functions = _functions(body)
    prompt = max(1, tokens(_prompt_chars(messages, functions)))
    called = any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)
    ours = _last_text(_last(messages, ("user",)).get("content")).strip() == FILLER
    tool = None if called or ours else _chosen(functions, body.get("tool_choice"))
    if tool is not None:
        arguments = orjson.dumps(example(tool.get("parameters") or {"type": "object"}))
        if not arguments.startswith(b"{"):
            arguments = b"{}"
        seed = hashlib.sha256(orjson.dumps(messages) + tool["name"].encode()).hexdigest()
        return Reply(None, (f"call_{seed[:24]}", tool["name"], arguments.decode()),
                     "tool_calls", prompt, tokens(len(tool["name"]) + len(arguments)))
    content, finish = _formatted(body, _text(alias, messages)), "stop"
    limit = _limit(body)
    if limit is not None and tokens(len(content)) > limit:
        content, finish = content[:limit * CHARS_PER_TOKEN], "length"
    return Reply(content, None, finish, prompt, tokens(len(content)))


# ---------------------------------------------------------------------------- embeddings
def vector(text: str, dims: int) -> list[float]:
    """A unit vector of ``dims`` numbers from SHAKE-256 of ``text`` (little-endian int16s)."""
    numbers = array("h", hashlib.shake_256(text.encode("utf-8", "surrogatepass"))
                    .digest(2 * dims))
    if sys.byteorder != "little":                    # pragma: no cover
        numbers.byteswap()
    return embedding.normalized(numbers)


def _dimensions(model: ModelSpec, req: EmbeddingRequest) -> int:
    if req.dimensions is None:
        return DIMENSIONS.get(model.upstream, DEFAULT_DIMENSIONS)
    if req.dimensions > MAX_DIMENSIONS:
        raise InvalidRequest(f"`dimensions` must be at most {MAX_DIMENSIONS} on `{model.alias}` "
                             f"(got {req.dimensions}).", param="dimensions")
    return req.dimensions


# ---------------------------------------------------------------------------- images
def image_size(size: str) -> tuple[int, int]:
    """(width, height) for an ``ImageRequest.size``: ``WxH`` as it says; a ratio with
    ``IMAGE_SIDE`` on its long side; ``auto`` square."""
    m = _SIZE.match(size)
    if m:
        return int(m.group(1)), int(m.group(2))
    if ":" not in size:
        return IMAGE_SIDE, IMAGE_SIDE
    a, _, b = size.partition(":")
    ratio = int(a) / int(b)
    if ratio >= 1:
        return IMAGE_SIDE, round(IMAGE_SIDE / ratio)
    return round(IMAGE_SIDE * ratio), IMAGE_SIDE


def draw(prompt: str, index: int, width: int, height: int) -> bytes:
    """A PNG: a gradient between two colours from a hash of the prompt and ``index``, with
    ``[demo]`` and the prompt's first words on it."""
    from PIL import Image, ImageChops, ImageDraw, ImageFont  # only where images are made

    seed = hashlib.sha256(f"{index}\n{prompt}".encode("utf-8", "surrogatepass")).digest()
    start, end = tuple(seed[0:3]), tuple(seed[3:6])
    ramp = Image.linear_gradient("L")                         # 256 x 256, top to bottom
    across = ramp.transpose(Image.Transpose.ROTATE_90)
    mask = ImageChops.add(ramp, across, scale=2.0) if seed[6] % 2 else ramp
    if seed[7] % 2:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    picture = Image.composite(Image.new("RGB", (width, height), end),
                              Image.new("RGB", (width, height), start), mask)
    pen = ImageDraw.Draw(picture)
    side = min(width, height)
    big = ImageFont.load_default(size=max(10, side // 12))
    small = ImageFont.load_default(size=max(8, side // 20))
    words = " ".join(prompt.split()[:12])
    lines = textwrap.wrap(words, width=max(8, int(width / (side // 12 * 0.55 + 1))))[:4]
    ink, edge = (255, 255, 255), (0, 0, 0)
    margin = max(4, side // 24)
    pen.text((margin, margin), "[demo]", font=small, fill=ink, stroke_width=max(1, side // 256),
             stroke_fill=edge)
    pen.multiline_text((width / 2, height / 2), "\n".join(lines), font=big, fill=ink,
                       anchor="mm", align="center", stroke_width=max(1, side // 128),
                       stroke_fill=edge)
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


# ---------------------------------------------------------------------------- the provider
class DemoProvider(Provider):
    """Answers made here (module docstring); nothing is sent anywhere."""

    kind = "demo"
    owned_by = "apiarium-demo"
    native_dialects: ClassVar[frozenset[str]] = frozenset({"completions"})

    def auth_headers(self) -> dict[str, str]:
        return {}

    def require_configured(self) -> None:
        """Nothing to configure: the demo needs no URL and no key."""

    async def chat(self, model: ModelSpec, body: dict[str, Any],
                   raw: bytes | None) -> dict[str, Any]:
        r = reply(model.alias, body)
        calls = [tool_call(*r.call)] if r.call else None
        return completion(model.alias, r.content, r.finish, tool_calls=calls, usage_=r.usage())

    async def chat_stream(self, model: ModelSpec, body: dict[str, Any],
                          raw: bytes | None) -> AsyncGenerator[bytes, None]:
        r = reply(model.alias, body)
        chunks = Chunks(model.alias, wants_usage(body))
        delay = self.spec.frame_delay_ms / 1000
        yield chunks.role()
        if r.call is not None:
            call_id, name, arguments = r.call
            half = len(arguments) // 2
            frames = [chunks.tool_start(0, call_id, name),
                      chunks.tool_args(0, arguments[:half]),
                      chunks.tool_args(0, arguments[half:])]
        else:
            frames = [chunks.content(w) for w in _WORD.findall(r.content or "")]
        for frame in frames:
            if delay:
                await asyncio.sleep(delay)
            yield frame
        yield chunks.finish(r.finish)
        tail = chunks.usage(r.usage())
        if tail is not None:
            yield tail
        yield sse.DONE

    async def completions(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy completions request (``completions: native``): answered as chat."""
        answer = await self.chat(model, legacy.to_chat(body), None)
        return legacy.from_chat(answer, body)

    def completions_stream(self, model: ModelSpec,
                           body: dict[str, Any]) -> AsyncIterator[bytes]:
        return legacy.stream_from_chat(self.chat_stream(model, legacy.to_chat(body), None),
                                       body)

    async def embed(self, model: ModelSpec, req: EmbeddingRequest) -> dict[str, Any]:
        dims = _dimensions(model, req)
        texts = [t if isinstance(t, str) else ",".join(map(str, t)) for t in req.inputs]

        def make() -> list[list[float]]:
            return [vector(t, dims) for t in texts]
        vectors = await asyncio.to_thread(make) if len(texts) * dims > THREAD_FLOATS else make()
        return embedding.answer(model.alias, vectors, req.encoding_format, req.estimate())

    async def image(self, model: ModelSpec, req: ImageRequest) -> list[Media]:
        width, height = image_size(req.size)

        def make() -> list[bytes]:
            return [draw(req.prompt, i, width, height) for i in range(req.n)]
        return [Media(png, "image/png", f"[demo] {req.prompt}")
                for png in await asyncio.to_thread(make)]


# ---------------------------------------------------------------------------- --demo
def _serves(type_name: str) -> bool:
    method = MODEL_TYPES[type_name].provider_method
    return getattr(DemoProvider, method, None) is not getattr(Provider, method, None)


def _free_name(name: str, taken: Sequence[str]) -> str:
    out = f"{name}-demo"
    while out in taken:
        out += "-demo"
    return out


def with_demo(catalog: Catalog) -> tuple[Catalog, list[str], list[str]]:
    """``apiarium serve --demo``: ``catalog`` with a ``demo`` provider in front of every model
    whose provider has no key (is not ``configured``), one per such provider, named
    ``<provider>-demo`` (its models are ``owned_by`` ``apiarium-demo``); a model of a type
    the demo cannot serve (video) is left as it was, and so is every model whose provider has
    a key.  Returns (the catalog, the aliases now served by the demo, those left
    unconfigured)."""
    stand_ins: dict[str, ProviderSpec] = {}
    models: dict[str, ModelSpec] = {}
    demo: list[str] = []
    left: list[str] = []
    for alias, m in catalog.models.items():
        p = m.provider
        if p.configured:                        # a key, or a demo already
            models[alias] = m
            continue
        if not _serves(m.type):
            models[alias] = m
            left.append(alias)
            continue
        spec = stand_ins.get(p.name)
        if spec is None:
            taken = [*catalog.providers, *(s.name for s in stand_ins.values())]
            spec = stand_ins[p.name] = ProviderSpec(name=_free_name(p.name, taken),
                                                   kind=DemoProvider.kind, base_url="",
                                                   api_key="", auth="none",
                                                   owned_by=DemoProvider.owned_by)
        models[alias] = dataclasses.replace(m, provider=spec)
        demo.append(alias)
    used = {m.provider.name for m in models.values()}
    providers = {n: p for n, p in catalog.providers.items()
                 if n in used or n not in stand_ins}         # originals that still serve
    providers.update({s.name: s for s in stand_ins.values()})
    return Catalog(providers, models), demo, left


def demo_note(served: Sequence[str], left: Sequence[str]) -> str:
    """The one log line of ``apiarium serve --demo``: which models the demo answers for."""
    if not served:
        return "demo mode: every provider has a key, so no model answers from the demo"
    note = (f"demo mode: {len(served)} models answer from the demo provider, as their "
            f"providers have no key: {', '.join(served)}")
    if left:
        note += (f"; {len(left)} left as they were (the demo makes no video): "
                 f"{', '.join(left)}")
    return note




def keyless_note(catalog: Catalog) -> str | None:
    """The one log line of a gateway none of whose providers has a key (None if one has):
    which environment variables would give real answers (those models.yaml reads for each
    provider's missing ``base_url`` / ``api_key``, as the loader recorded them), or how to
    start a demo."""
    providers = [p for p in catalog.providers.values() if p.kind != DemoProvider.kind]
    if not providers or any(p.configured for p in providers):
        return None
    needs = []
    for p in providers:
        fields = [f for f, missing in (("base_url", not p.base_url),
                                       ("api_key", not p.api_key and p.auth != "none"))
                  if missing]
        names = [v for f in fields
                 for v in (p.base_url_vars if f == "base_url" else p.api_key_vars)]
        where = (" and ".join(dict.fromkeys(names)) if names else
                 " and ".join(f"providers.{p.name}.{f}" for f in fields))
        needs.append(f"{where} ({p.name})")
    return (f"no provider has a key, so every model answers 503 provider_not_configured: "
            f"for real answers set {', '.join(needs)} and restart; for demo answers start "
            f"with `scripts/serve --demo` (apiarium serve --demo)")
