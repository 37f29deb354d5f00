"""The Gemini fake's strictness, with google-genai's own types: every generateContent body is
validated as the REST ``GenerateContentRequest`` (camelCase, unknown fields refused), and
every answer is checked as a ``GenerateContentResponse``.  On top of the types, what Gemini
itself refuses (wire-formats §5, next-apis §2e):

* ``thinkingLevel`` and ``thinkingBudget`` together (400); ``thinkingLevel`` on a 2.5 model;
* on a Gemini 3 model, a ``functionCall`` part of the history without the
  ``thoughtSignature`` Gemini gave it (400 "Function call is missing a thought_signature"),
  or with one it never gave (400 "Corrupted thought signature"): the first call of each model
  turn must carry one, Google's ``skip_thought_signature_validator`` counting as one.
"""
from __future__ import annotations

import orjson
import pydantic
from google.genai import types as g
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

SKIP = "skip_thought_signature_validator"
DOCS = "https://ai.google.dev/gemini-api/docs/thought-signatures"


class RestGenerationConfig(g.GenerationConfig):
    """The REST GenerationConfig: the SDK's, plus ``imageConfig`` (the SDK moves it elsewhere)."""
    image_config: g.ImageConfig | None = None


class GenerateContentRequest(BaseModel):
    """The REST body of ``models/{m}:generateContent`` (wire-formats §5.2), of SDK types."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    contents: list[g.Content]
    system_instruction: g.Content | None = None
    tools: list[g.Tool] | None = None
    tool_config: g.ToolConfig | None = None
    generation_config: RestGenerationConfig | None = None
    safety_settings: list[g.SafetySetting] | None = None
    cached_content: str | None = None
    service_tier: str | None = None


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def type_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a GenerateContentRequest, worded as Gemini words it (None: it is)."""
    try:
        GenerateContentRequest.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            return (f"Invalid JSON payload received. Unknown name \"{loc[-1]}\" at "
                    f"'{_where(loc[:-1]) or 'request'}': Cannot find field.")
        return f"* GenerateContentRequest.{_where(loc)}: {err['msg']}"
    return None


def thinking_problem(model: str, body: dict) -> str | None:
    gen = body.get("generationConfig") or {}
    thinking = gen.get("thinkingConfig") or {}
    if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
        return ("You can only set one of thinking budget and thinking level. Please use "
                "thinking level for Gemini 3 models.")
    if "thinkingLevel" in thinking and model.startswith("gemini-2"):
        return "Thinking level is not supported for this model."
    return None


def signature_problem(model: str, body: dict, issued: set[str]) -> str | None:
    """What a Gemini 3 model says of the function calls in the history."""
    if not model.startswith("gemini-3"):
        return None
    for i, content in enumerate(body.get("contents") or []):
        if content.get("role") != "model":
            continue
        first = True
        for j, part in enumerate(content.get("parts") or []):
            if "functionCall" not in part:
                continue
            sig = part.get("thoughtSignature")
            name = part["functionCall"].get("name")
            if sig is None and first:
                return (f"Function call is missing a thought_signature in functionCall parts. "
                        f"This is required for tools to work correctly, and missing "
                        f"thought_signature may lead to degraded model performance. Additional "
                        f"data, function call `default_api:{name}` , position {j + 1}. Please "
                        f"refer to {DOCS} for more details.")
            if sig is not None and sig != SKIP and sig not in issued:
                return (f"Corrupted thought signature. (contents[{i}].parts[{j}] "
                        f"function call `{name}`)")
            first = False
    return None


def response(obj: dict) -> dict:
    """``obj``, checked as a GenerateContentResponse.  (Sent as it is, not re-encoded: the
    SDK would re-encode a ``thoughtSignature`` in URL-safe base64, which is not what Gemini
    sends.)"""
    g.GenerateContentResponse.model_validate_json(orjson.dumps(obj))
    return obj
