"""What a model of ``models.yaml`` may use and what it costs: the schema of its ``allow`` (what
a passed-through request may use beyond plain chat, ``passthrough``) and ``credits``, the
checks between them (every allowed hosted tool and premium tier has a price, nothing is priced
that is not allowed), and the model's ``Credits`` (its provider kind's cache-write factor,
Anthropic's long-context rule where the 1M-context beta is allowed).  Problems are
``FILE:LINE``, as everywhere in the config."""
from __future__ import annotations

from pathlib import Path

from .catalog import Allow, Credits, ProviderSpec
from .passthrough import CLIENT_TOOLS, HOSTED_TOOLS, PREMIUM_TIERS, SERVER_TOOLS
from .providers import KindError, provider_class
from .yamlschema import Ctx, ListOf, MapOf, Num, Problem, Section, Str

LONG_CONTEXT_BETA = "context-1m"          # Anthropic's 1M context, and what it costs past 200k
ANTHROPIC_LONG_CONTEXT = {"above_tokens": 200_000, "input": 2.0, "output": 1.5}

ALLOW = Section({"tools": ListOf(Str()), "service_tiers": ListOf(Str()),
                 "anthropic_beta": ListOf(Str()), "fields": ListOf(Str())})
CREDITS = Section({
    "request": Num(None, 0, 1e9),
    "per_1k_tokens": Num(None, 0, 1e9),
    "input": Num(None, 0, 1e9),
    "cached_input": Num(None, 0, 1e9),
    "cache_write": Num(None, 0, 1e9),
    "output": Num(None, 0, 1e9),
    "image": Num(None, 0, 1e9),
    "video_second": Num(None, 0, 1e9),
    "resolution": MapOf(Num(None, 0, 1e6)),
    "cache_write_1h": Num(None, 0, 1e9),
    "tools": MapOf(Num(None, 0, 1e9)),            # per call, by tool family
    "service_tier": MapOf(Num(None, 0, 1000)),    # multipliers of the token price
    "long_context": Section({"above_tokens": Num(None, 1, 1e9, integer=True),
                             "input": Num(None, 0, 1000), "output": Num(None, 0, 1000)}),
})


def model_allow(path: Path, alias: str, m: dict, ctx: Ctx, problems: list[Problem]) -> Allow:
    """``allow`` checked against ``credits``: each hosted tool one the gateway knows, and
    priced (``credits.tools``, 0 allowed) if its vendor runs it (a tool the client runs costs
    its tokens alone: no price), each premium tier priced (``credits.service_tier``), nothing
    priced that is not allowed."""
    def problem(where: tuple, message: str) -> None:
        line = ctx.lines.get(("models", alias, *where), 0) or ctx.lines.get(("models", alias), 0)
        problems.append(Problem(str(path), line, f"models.{alias}.{'.'.join(map(str, where[:2]))}"
                                                 f": {message}"))
    given, prices = m["allow"], m["credits"]
    for i, tool in enumerate(given["tools"]):
        if tool not in HOSTED_TOOLS:
            problem(("allow", "tools", i), f"{tool!r} is not a hosted tool this gateway knows "
                                           f"(known: {', '.join(sorted(HOSTED_TOOLS))})")
        elif tool in SERVER_TOOLS and tool not in prices["tools"]:
            problem(("allow", "tools", i), f"{tool!r} has no price: add credits.tools.{tool} "
                                           f"(credits per call; 0 if its calls cost nothing)")
    for i, tier in enumerate(given["service_tiers"]):
        if tier in ("auto", "default"):
            continue
        if tier not in PREMIUM_TIERS:
            problem(("allow", "service_tiers", i),
                    f"{tier!r} is not a tier (auto, default, {', '.join(sorted(PREMIUM_TIERS))})")
        elif tier not in prices["service_tier"]:
            problem(("allow", "service_tiers", i),
                    f"{tier!r} has no price: add credits.service_tier.{tier} (what it "
                    f"multiplies the token price by, e.g. 2)")
    for name in prices["tools"]:
        if name in CLIENT_TOOLS:
            problem(("credits", "tools", name), f"{name!r} runs on the client: its calls cost "
                                                f"only their tokens (remove this price)")
        elif name not in given["tools"]:
            problem(("credits", "tools", name), f"{name!r} is priced but not allowed: add it "
                                                f"to allow.tools, or remove its price")
    for name in prices["service_tier"]:
        if name not in PREMIUM_TIERS:
            problem(("credits", "service_tier", name),
                    f"{name!r} is not a premium tier ({', '.join(sorted(PREMIUM_TIERS))})")
    for key in ("anthropic_beta", "fields"):
        for i, value in enumerate(given[key]):
            if not value or "," in value or value != value.strip():
                problem(("allow", key, i), f"{value!r} must be one name, without commas or "
                                           f"spaces")
    return Allow(tools=frozenset(given["tools"]), service_tiers=frozenset(given["service_tiers"]),
                 anthropic_beta=tuple(given["anthropic_beta"]), fields=frozenset(given["fields"]))


def model_credits(alias: str, m: dict, provider: ProviderSpec, allow: Allow) -> Credits:
    """The model's price: its type's defaults, its ``credits``, cache writes at its provider
    kind's factor, and Anthropic's long-context rule (2x input, 1.5x output past 200k prompt
    tokens) when it allows the 1M-context beta and says nothing of its own."""
    given = dict(m["credits"])
    long = {k: v for k, v in given.pop("long_context").items() if v is not None}
    if not long and any(f.startswith(LONG_CONTEXT_BETA) for f in allow.anthropic_beta):
        long = dict(ANTHROPIC_LONG_CONTEXT)
    if long:
        given["long_context"] = long
    try:
        factor = provider_class(provider.kind).cache_write_factor
    except KindError:
        factor = 1.0                                   # reported with the provider
    return Credits.for_model(alias, m["type"], given, factor)
