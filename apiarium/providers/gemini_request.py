"""OpenAI chat request → Gemini ``generateContent`` body.

Request, OpenAI → Gemini (wire-formats 5.2):

    system / developer           systemInstruction.parts (alone, with no other turn: a user turn)
    user / assistant             contents[] role user / model; consecutive same-role turns merged
    image_url, a data: URL       {"inlineData"}; http(s) image URLs get a 400 asking for a data:
                                 URL (fetching arbitrary URLs from the gateway would be an SSRF)
    assistant tool_calls         model {"functionCall": {name, args (parsed)}, "thoughtSignature"}:
                                 the signature the client sent back (tool_calls[i].extra_content
                                 .google.thought_signature), else the one the gateway kept for
                                 the call's id (``Signatures``); on a model that signs its calls
                                 (Gemini 3) a turn whose first call has neither gets Google's
                                 ``skip_thought_signature_validator`` (history the gateway did
                                 not produce, or made before a restart)
    tool message                 user {"functionResponse": {name, response}}: name recovered by
                                 tool_call_id; a non-object result wrapped as {"result": ...}
    tools                        tools[0].functionDeclarations (parameters → parametersJsonSchema)
    tool_choice                  functionCallingConfig.mode: none→NONE, auto→AUTO, required→ANY,
                                 a named function → ANY + allowedFunctionNames
    generationConfig             temperature, top_p→topP, max_(completion_)tokens→maxOutputTokens,
                                 stop→stopSequences, n→candidateCount, seed, presence/frequency
                                 penalties; response_format json_* → responseMimeType (+Schema);
                                 logprobs → responseLogprobs, top_logprobs → logprobs;
                                 reasoning_effort → thinkingConfig (providers/reasoning.py)
    extra_body.google            safety_settings → safetySettings ({category, threshold}, as
                                 Google's OpenAI endpoint takes them); thinking_config
    the rest                     as ``chat_fields.FIELDS`` says: refused with a 400 naming the
                                 field (logit_bias, audio, prediction, ...), or not sent
"""
from __future__ import annotations

from typing import Any

import orjson

from ..catalog import ModelSpec
from ..errors import InvalidRequest, echo
from .chat_fields import refuse_unsupported
from .reasoning import family, gemini_thinking
from .shapes import assistant_tool_calls, client_signature, parse_data_url, text_of
from .signatures import SKIP, Signatures

_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not content:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"`{where}.content` must be a string or a list of parts.",
                             param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("text", "input_text"):
            if p.get("text"):
                parts.append({"text": str(p["text"])})
        elif kind == "image_url":
            url = p.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                raise InvalidRequest(f"`{at}.image_url.url`: Gemini models on this gateway take "
                                     f"images inline only; send the image as a base64 data: URL "
                                     f"(data:image/png;base64,...) instead of a web link.",
                                     param=f"{at}.image_url.url")
            mime, data = parse_data_url(url if isinstance(url, str) else "",
                                        f"{at}.image_url.url")
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            raise InvalidRequest(f"`{at}` has a content part type ({echo(kind)}) that Gemini "
                                 f"models on this gateway do not take; use text or image_url "
                                 f"(a data: URL).", param=at)
    return parts


def _tool_response(m: dict, names: dict, where: str) -> dict:
    call_id = m.get("tool_call_id")
    name = names.get(call_id) or m.get("name")
    if not name:
        raise InvalidRequest(f"`{where}.tool_call_id` ({echo(call_id)}) matches no tool call of an "
                             f"earlier assistant message; Gemini needs the function's name.",
                             param=f"{where}.tool_call_id")
    text = text_of(m.get("content"))
    try:
        result = orjson.loads(text)
    except orjson.JSONDecodeError:
        result = text
    return {"functionResponse": {"name": name, "response": result if isinstance(result, dict)
                                 else {"result": result}}}


class _Signing:
    """Where a functionCall's thought signature comes from (see the module docstring)."""

    def __init__(self, signatures: Signatures | None, required: bool) -> None:
        self.signatures, self.required = signatures, required

    def sign(self, calls: list[dict], raw: list) -> None:
        for part, call in zip(calls, raw, strict=True):
            sig = client_signature(call) or (
                self.signatures.get(call.get("id")) if self.signatures is not None else None)
            if sig:
                part["thoughtSignature"] = sig
        if self.required and calls and "thoughtSignature" not in calls[0]:
            calls[0]["thoughtSignature"] = SKIP


def _assistant_parts(m: dict, names: dict, where: str, signing: _Signing) -> list[dict]:
    text = text_of(m.get("content"))
    parts: list[dict] = [{"text": text}] if text else []
    calls = []
    for id_, name, args in assistant_tool_calls(m, where):
        names[id_] = name
        calls.append({"functionCall": {"name": name, "args": args}})
    signing.sign(calls, m.get("tool_calls") or [])
    return parts + calls


def _contents(messages: list[dict], signing: _Signing) -> tuple[list[dict], list[dict]]:
    system: list[dict] = []
    contents: list[dict] = []
    names: dict = {}
    for i, m in enumerate(messages):
        role, where = m.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(m.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            turn, parts = "user", _user_parts(m.get("content"), where)
        elif role == "assistant":
            turn, parts = "model", _assistant_parts(m, names, where, signing)
        elif role in ("tool", "function"):
            turn, parts = "user", [_tool_response(m, names, where)]
        else:
            raise InvalidRequest(f"`{where}.role` {echo(role)} is not one of system, developer, "
                                 f"user, assistant, tool.", param=f"{where}.role")
        if not parts:
            continue
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return system, contents


def _tools(body: dict) -> dict:
    out: dict[str, Any] = {}
    decls: list[dict[str, Any]] = []
    for k, t in enumerate(body.get("tools") or []):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(f"`tools[{k}]` must be {{\"type\": \"function\", \"function\": "
                                 f"{{\"name\": ...}}}}; Gemini models here take function tools "
                                 f"only.", param=f"tools[{k}]")
        decls.append({"name": fn["name"], **{theirs: fn[ours] for ours, theirs in (
            ("description", "description"), ("parameters", "parametersJsonSchema"))
            if fn.get(ours)}})
    if decls:
        out["tools"] = [{"functionDeclarations": decls}]
    choice = body.get("tool_choice")
    config: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in _MODES:
        config = {"mode": _MODES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    elif choice is not None:
        raise InvalidRequest("`tool_choice` must be none, auto, required or a named function.",
                             param="tool_choice")
    if config:
        out["toolConfig"] = {"functionCallingConfig": config}
    return out


def _generation_config(body: dict, model: ModelSpec | None) -> dict:
    gen: dict = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                         ("n", "candidateCount"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
        if body.get(ours) is not None:
            gen[theirs] = body[ours]
    for limit in ("max_completion_tokens", "max_tokens"):
        if body.get(limit) is not None:
            gen.setdefault("maxOutputTokens", body[limit])
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("`stop` must be a string or a list of strings.", param="stop")
        gen["stopSequences"] = stops
    if body.get("logprobs"):
        gen["responseLogprobs"] = True
    if body.get("top_logprobs"):
        gen["logprobs"] = body["top_logprobs"]
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if fmt["type"] == "json_schema" and schema:
            gen["responseJsonSchema"] = schema
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InvalidRequest("`response_format.type` must be text, json_object or "
                             "json_schema.", param="response_format")
    thinking = gemini_thinking(model, body) if model is not None else None
    if thinking:
        gen["thinkingConfig"] = thinking
    return gen


def to_gemini(body: dict, model: ModelSpec | None = None,
              signatures: Signatures | None = None) -> dict:
    """The ``generateContent`` body for an OpenAI chat ``body``; ``model`` (for its reasoning
    control and whether it signs its calls) and ``signatures`` (the gateway's store) when the
    provider calls it."""
    refuse_unsupported("gemini", body)
    signing = _Signing(signatures, model is not None and family("gemini", model) == "level")
    system, contents = _contents(body.get("messages") or [], signing)
    if not contents and system:            # a system-only conversation: ask it as the user
        contents, system = [{"role": "user", "parts": system}], []
    if not contents:
        raise InvalidRequest("`messages` holds no text to send: add a user message.",
                             param="messages")
    payload: dict[str, Any] = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": system}
    payload.update(_tools(body))
    gen = _generation_config(body, model)
    if gen:
        payload["generationConfig"] = gen
    safety = _safety_settings(body)
    if safety:
        payload["safetySettings"] = safety
    return payload


def _safety_settings(body: dict) -> list[dict] | None:
    """``extra_body.google.safety_settings`` (or ``google.safety_settings``): a list of
    ``{category, threshold}``, as Google's own OpenAI endpoint takes them."""
    for where, holder in (("extra_body.google", body.get("extra_body")), ("google", body)):
        google = holder.get("google") if isinstance(holder, dict) else None
        settings = google.get("safety_settings") if isinstance(google, dict) else None
        if settings is None:
            continue
        param = f"{where}.safety_settings"
        if not isinstance(settings, list) or not all(
                isinstance(s, dict) and set(s) == {"category", "threshold"}
                and all(isinstance(v, str) for v in s.values()) for s in settings):
            raise InvalidRequest(f"`{param}` must be a list of {{\"category\": ..., "
                                 f"\"threshold\": ...}} objects (HARM_CATEGORY_..., "
                                 f"BLOCK_...).", param=param)
        return [dict(s) for s in settings]
    return None
