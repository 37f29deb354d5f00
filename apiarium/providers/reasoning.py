"""Reasoning controls: the OpenAI ``reasoning_effort`` as each upstream takes it, in one table.

Each model has one kind of control, its ``thinking`` in models.yaml, or by family when not set
(``family``): ``level`` (Gemini 3: ``generationConfig.thinkingConfig.thinkingLevel``),
``budget`` (Gemini 2.5: ``thinkingBudget``; Anthropic: ``thinking: {type: enabled,
budget_tokens}``), ``none`` (no control: ``reasoning_effort`` is not sent).  OpenAI-compatible
upstreams get ``reasoning_effort`` as the client sent it (``none`` there: not sent at all).

    reasoning_effort  Gemini 3 level        Gemini 2.5 budget        Anthropic budget_tokens
    none              MINIMAL (Pro: LOW)    0 (Pro: 128, its least)  thinking not enabled
    minimal           MINIMAL (Pro: LOW)    1024                     1024
    low               LOW                   1024                     2048
    medium            MEDIUM                8192                     8192
    high, xhigh       HIGH                  24576                    24576

(ai.google.dev/gemini-api/docs/openai's table; the Anthropic budgets sit inside the bands the
Messages dialect maps back: below 4096 low, below 16384 medium, above high.)  Never two
controls at once: a Gemini client may instead send Google's own
``extra_body.google.thinking_config`` (``thinking_level`` or ``thinking_budget``, and
``include_thoughts``), exclusive with ``reasoning_effort``, as Google's OpenAI endpoint has it.
Anthropic needs ``max_tokens`` above the budget: it is raised to budget + the visible answer's
limit (within the model's ``max_output_tokens``; a budget that no longer fits is not sent).

Thinking text comes back (``reasoning_content``) only when the client asked for reasoning
(``wants_reasoning``): an effort other than ``none``, or Gemini's ``include_thoughts``.
"""
from __future__ import annotations

import re
from typing import Any

from ..catalog import ModelSpec
from ..errors import InvalidRequest, echo

THINKING = ("level", "budget", "none")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

GEMINI_LEVEL = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM",
                "high": "HIGH", "xhigh": "HIGH"}
GEMINI_PRO_LEVEL = {**GEMINI_LEVEL, "none": "LOW", "minimal": "LOW"}      # Pro has no MINIMAL
GEMINI_BUDGET = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576,
                 "xhigh": 24576}
GEMINI_PRO_LEAST_BUDGET = 128                                              # 2.5 Pro cannot stop
ANTHROPIC_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576,
                    "xhigh": 24576}
ANTHROPIC_LEAST_BUDGET = 1024

# which controls each kind has (``thinking`` in models.yaml)
KIND_CONTROLS = {"gemini": THINKING, "anthropic": ("budget", "none"), "openai": ("none",),
                 "rag": ("none",)}

_NO_THINKING_CLAUDE = re.compile(r"^claude-(instant|2|3-(?!7)|3\.5)")


def thinking_problem(kind: str, value: str) -> str | None:
    """Why ``thinking: value`` does not fit a provider of ``kind`` (None: it does)."""
    allowed = KIND_CONTROLS.get(kind)
    if allowed is None:
        return None                         # an operator's own kind: its business
    if value in allowed:
        return None
    what = {"anthropic": "Anthropic models take a thinking budget (budget or none)",
            "openai": "OpenAI-compatible upstreams take reasoning_effort as it is (only "
                      "`none`, never send it, applies)",
            "rag": "RAG upstreams take no reasoning control (only `none` applies)"}
    return f"{value!r} is not a control a `{kind}` provider has: {what.get(kind, kind)}"


def family(kind: str, model: ModelSpec) -> str:
    """The model's control: its ``thinking``, else by family from the upstream id."""
    if model.thinking:
        return model.thinking
    up = model.upstream.lower().rpartition("/")[2]
    if kind == "gemini":
        if up.startswith("gemini-3"):
            return "level"
        return "budget" if up.startswith("gemini-2.5") else "none"
    if kind == "anthropic":
        return "none" if _NO_THINKING_CLAUDE.match(up) else "budget"
    return "none"


def effort_of(body: dict) -> str | None:
    """The request's ``reasoning_effort`` (checked), or None."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in EFFORTS:
        raise InvalidRequest(f"`reasoning_effort` must be one of {', '.join(EFFORTS)}.",
                             param="reasoning_effort")
    return str(effort)


def _google_config(body: dict) -> tuple[dict | None, str]:
    """Google's ``thinking_config`` as its OpenAI endpoint takes it (``extra_body.google``,
    also ``google`` at the top level), and where it was."""
    for where, holder in (("extra_body.google", (body.get("extra_body") or {})),
                          ("google", body)):
        google = holder.get("google") if isinstance(holder, dict) else None
        if isinstance(google, dict) and google.get("thinking_config") is not None:
            config = google["thinking_config"]
            param = f"{where}.thinking_config"
            if not isinstance(config, dict):
                raise InvalidRequest(f"`{param}` must be an object.", param=param)
            return config, param
    return None, ""


def wants_reasoning(body: dict) -> bool:
    """Whether the client asked to see the model's thinking."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        return True
    config, _ = _google_config(body)
    return bool(config and (config.get("include_thoughts") or config.get("includeThoughts")))


def gemini_thinking(model: ModelSpec, body: dict) -> dict | None:
    """``generationConfig.thinkingConfig`` for this request (None: send none)."""
    effort = effort_of(body)
    config, param = _google_config(body)
    if config is not None:
        if effort is not None:
            raise InvalidRequest(f"`reasoning_effort` and `{param}` are exclusive: send one "
                                 f"of them.", param="reasoning_effort")
        return _google_thinking(config, param)
    if effort is None:
        return None
    kind = family("gemini", model)
    pro = "-pro" in model.upstream.lower()
    if kind == "level":
        level = (GEMINI_PRO_LEVEL if pro else GEMINI_LEVEL)[effort]
        return {"thinkingLevel": level, "includeThoughts": effort != "none"}
    if kind == "budget":
        budget = GEMINI_BUDGET[effort]
        if pro and budget < GEMINI_PRO_LEAST_BUDGET:
            budget = GEMINI_PRO_LEAST_BUDGET
        return {"thinkingBudget": budget, "includeThoughts": effort != "none"}
    return None


def _google_thinking(config: dict, param: str) -> dict:
    names = {"thinking_level": "thinkingLevel", "thinkingLevel": "thinkingLevel",
             "thinking_budget": "thinkingBudget", "thinkingBudget": "thinkingBudget",
             "include_thoughts": "includeThoughts", "includeThoughts": "includeThoughts"}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in names:
            shown = echo(key, False)
            raise InvalidRequest(f"`{param}.{shown}` is not a thinking_config field (use "
                                 f"thinking_level or thinking_budget, and include_thoughts).",
                                 param=f"{param}.{shown}")
        out[names[key]] = value.upper() if names[key] == "thinkingLevel" and \
            isinstance(value, str) else value
    if "thinkingLevel" in out and "thinkingBudget" in out:
        raise InvalidRequest(f"`{param}` has both thinking_level and thinking_budget; Gemini "
                             f"takes one of them.", param=param)
    return out


def anthropic_thinking(model: ModelSpec, body: dict, max_tokens: int) -> tuple[dict | None, int]:
    """(``thinking`` for the Messages request or None, the ``max_tokens`` to send)."""
    effort = effort_of(body)
    if effort is None or effort == "none" or family("anthropic", model) != "budget":
        return None, max_tokens
    budget = ANTHROPIC_BUDGET[effort]
    wanted = max_tokens if max_tokens > budget else budget + max_tokens
    cap = model.max_output_tokens
    if cap and wanted > cap:
        wanted = max(cap, max_tokens)
        budget = min(budget, wanted - 1)
        if budget < ANTHROPIC_LEAST_BUDGET:
            return None, max_tokens
    return {"type": "enabled", "budget_tokens": budget}, wanted
