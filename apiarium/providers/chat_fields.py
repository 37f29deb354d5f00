"""Every field of an OpenAI chat request, and what each kind of upstream does with it.

``FIELDS`` is the table docs/api.md prints (tests/test_chat_fields.py holds the two equal, and
holds the translators to it).  A value starting ``400`` means the kind refuses the field when
it is set (not null, false, 0 or empty) with a 400 naming it: ``refuse_unsupported`` does that
for the translating kinds before anything else; ``ignored`` means it is not sent; anything
else says where it goes.  An OpenAI-compatible upstream gets the body as it is.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest

KINDS = ("openai", "anthropic", "gemini", "rag")
PASSED = "passed"
IGNORED = "ignored"


def _row(anthropic: str, gemini: str, rag: str = IGNORED, openai: str = PASSED
         ) -> Mapping[str, str]:
    return {"openai": openai, "anthropic": anthropic, "gemini": gemini, "rag": rag}


FIELDS: Mapping[str, Mapping[str, str]] = {
    "model": _row("`model` (the upstream id)", "the URL's model (the upstream id)",
                  "`model` (the upstream id)", "passed (the upstream id)"),
    "messages": _row("`system` + `messages`", "`systemInstruction` + `contents`",
                     "`query`: the user, system and developer texts"),
    "stream": _row("`stream`", "`:streamGenerateContent`", "the answer sent as a stream"),
    "stream_options": _row("`include_usage`: the usage chunk", "`include_usage`: the usage chunk",
                           "`include_usage`: the usage chunk"),
    "max_tokens": _row("`max_tokens` (default 4096; raised above a thinking budget)",
                       "`maxOutputTokens`"),
    "max_completion_tokens": _row("`max_tokens` (default 4096; raised above a thinking budget)",
                                  "`maxOutputTokens`"),
    "temperature": _row("`temperature`, clamped to 0..1 (not with thinking, nor to models "
                        "without sampling)", "`temperature`"),
    "top_p": _row("`top_p` (not with thinking, nor to models without sampling)", "`topP`"),
    "top_k": _row(IGNORED, "`topK`"),
    "stop": _row("`stop_sequences`", "`stopSequences`"),
    "n": _row("400 above 1", "`candidateCount` (400 above 1 when streaming)"),
    "seed": _row(IGNORED, "`seed`"),
    "frequency_penalty": _row(IGNORED, "`frequencyPenalty`"),
    "presence_penalty": _row(IGNORED, "`presencePenalty`"),
    "logit_bias": _row("400", "400"),
    "logprobs": _row("400", "`responseLogprobs`; answered as `choices[].logprobs`"),
    "top_logprobs": _row("400", "`logprobs`"),
    "response_format": _row("`json_schema` → `output_config.format`; `json_object` 400",
                            "`json_object` / `json_schema` → `responseMimeType` + "
                            "`responseJsonSchema`"),
    "tools": _row("`tools` (function tools)", "`functionDeclarations` (function tools)"),
    "tool_choice": _row("`tool_choice`", "`toolConfig.functionCallingConfig`"),
    "parallel_tool_calls": _row("`false` → `disable_parallel_tool_use`", IGNORED),
    "reasoning_effort": _row("`thinking.budget_tokens`", "`thinkingConfig`",
                             openai="passed (not with `thinking: none`)"),
    "user": _row("`metadata.user_id`", IGNORED),
    "safety_identifier": _row(IGNORED, IGNORED),
    "prompt_cache_key": _row(IGNORED, IGNORED),
    "metadata": _row(IGNORED, IGNORED),
    "store": _row(IGNORED, IGNORED),
    "service_tier": _row(IGNORED, IGNORED),
    "verbosity": _row(IGNORED, IGNORED),
    "modalities": _row("400 unless `[\"text\"]`", "400 unless `[\"text\"]`"),
    "audio": _row("400", "400"),
    "prediction": _row("400", "400"),
    "web_search_options": _row("400", "400"),
    "functions": _row("400 (use `tools`)", "400 (use `tools`)"),
    "function_call": _row("400 (use `tool_choice`)", "400 (use `tool_choice`)"),
    "extra_body.google.thinking_config": _row(IGNORED, "`thinkingConfig` (not with "
                                                       "`reasoning_effort`)"),
    "extra_body.google.safety_settings": _row(IGNORED, "`safetySettings`"),
}

def _is_set(field: str, value: Any) -> bool:
    if value is None or value is False:
        return False
    if field == "modalities":
        return not (isinstance(value, list) and set(value) <= {"text"})
    if field == "web_search_options":        # {} asks for search
        return True
    return value not in (0, "", [], {})


def refuse_unsupported(kind: str, body: dict) -> None:
    """A 400 naming the first field of ``body`` that ``kind`` refuses (``FIELDS``)."""
    for field, value in body.items():
        what = FIELDS.get(field, {}).get(kind, "")
        if what.startswith("400") and field != "n" and _is_set(field, value):
            name = {"anthropic": "Anthropic", "gemini": "Gemini"}.get(kind, kind)
            why = what.removeprefix("400").strip(" ()")
            raise InvalidRequest(f"`{field}` is not supported by {name} models on this gateway"
                                 f"{f' ({why})' if why else ''}; leave it out.", param=field)
