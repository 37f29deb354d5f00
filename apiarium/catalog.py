"""The model catalog: which alias is served by which provider, under which upstream id.

Immutable once built (a reload builds a new one), so handlers can hold a reference
for the length of a request while a SIGHUP swaps in the next.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from .errors import InvalidRequest, NotFound, echo
from .modeltypes import MODEL_TYPES


@dataclass(frozen=True)
class ProviderSpec:
    """One provider of models.yaml.  ``kind`` is as written there (a name from
    ``providers.KINDS`` or a ``package.module:ClassName`` path); ``owned_by`` is what that
    kind's class says /v1/models should show (filled in when the config is loaded)."""
    name: str
    kind: str
    base_url: str
    api_key: str
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    poll_interval_s: float = 10.0
    breaker_failures: int = 3          # consecutive failures that open the circuit (0: never)
    breaker_cooldown_s: float = 30.0   # how long an open circuit skips the provider
    auth: str = "key"                  # "none": no credential is sent, no api_key needed
    responses: bool = True             # openai kind: /v1/responses goes to its own /responses
    frame_delay_ms: float = 20.0       # demo kind: the pause between two stream frames
    owned_by: str = ""
    # the environment variables models.yaml filled base_url and api_key from (none: written
    # there as they are): what an operator sets to change them
    base_url_vars: tuple[str, ...] = ()
    api_key_vars: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        """Whether it can answer: a ``base_url`` and a key (or ``auth: none``); the ``demo``
        kind calls nothing, so it always can."""
        return self.kind == "demo" or bool(self.base_url and (self.api_key or
                                                             self.auth == "none"))

    def setting(self, key: str) -> str:
        """Where ``key`` (``base_url`` or ``api_key``) is set: its environment variable
        (``OPENAI_API_KEY``), else ``providers.NAME.KEY in models.yaml``."""
        names = self.base_url_vars if key == "base_url" else self.api_key_vars
        return " or ".join(names) if names else f"providers.{self.name}.{key} in models.yaml"

    def setup_hint(self) -> str:
        """"" when the provider can be called; else what is missing, as an instruction:
        ``set OPENAI_API_KEY``, ``set GEMINI_HUB_URL and GEMINI_HUB_KEY``."""
        missing = [self.setting(key) for key, value in (("base_url", self.base_url),
                                                        ("api_key", self.api_key))
                   if not value and (key == "base_url" or self.auth != "none")]
        return f"set {' and '.join(missing)}" if missing else ""


@dataclass(frozen=True)
class Allow:
    """What a model lets a request ask of its upstream beyond plain chat
    (``models.<alias>.allow``; ``passthrough`` checks requests against it): hosted ``tools``
    (by family: ``web_search`` stands for ``web_search_20250305`` too), premium
    ``service_tiers`` (``auto`` and ``default`` need no leave), ``anthropic_beta`` flags
    beyond the harmless ones (a name allows itself and ``name-<date>``) and ``fields`` of a
    Messages request beyond the plain ones (``cache_control.ttl`` for the 1-hour cache)."""
    tools: frozenset[str] = frozenset()
    service_tiers: frozenset[str] = frozenset()
    anthropic_beta: tuple[str, ...] = ()
    fields: frozenset[str] = frozenset()

    def __and__(self, other: Allow) -> Allow:
        """What both allow (a request may be served by either model of a fallback chain)."""
        return Allow(self.tools & other.tools, self.service_tiers & other.service_tiers,
                     tuple(f for f in self.anthropic_beta if f in other.anthropic_beta),
                     self.fields & other.fields)

    def beta(self, flag: str) -> bool:
        """Whether ``flag`` (e.g. ``context-1m-2025-08-07``) is one of ``anthropic_beta``."""
        return any(flag == name or flag.startswith(name + "-") for name in self.anthropic_beta)


# Anthropic prices a prompt cache write at 1.25x the input price (5-minute TTL) and 2x (1 hour)
CACHE_WRITE_1H_FACTOR = 2.0
# the tiers a provider reports for its standard price (OpenAI's default, Anthropic's standard)
STANDARD_TIERS = frozenset({"auto", "default", "standard", "standard_only"})


@dataclass(frozen=True)
class Credits:
    """What one request costs; the defaults depend on the model's type (``for_model``).

    Tokens are priced per 1k: ``input`` (uncached input), ``cached_input`` (read from the
    provider's prompt cache), ``cache_write`` (written to it, 5-minute TTL),
    ``cache_write_1h`` (written with Anthropic's 1-hour TTL) and ``output`` (reasoning
    included).  ``per_1k_tokens`` is the older single price: what ``input`` and ``output``
    cost when they are not given; ``cached_input`` costs what ``input`` does unless given,
    ``cache_write`` ``input`` x ``write_factor`` (the provider kind's: 1.25 on Anthropic,
    whose writes cost more, else 1) and ``cache_write_1h`` 2 x ``input``.  The rates are
    worked out once per model (a reload makes new Credits): they are read on every metered
    request.

    ``tools``: credits per call of each hosted tool (by family); ``service_tier``: what a
    premium tier multiplies the token price by (``priority: 2``); ``long_context``:
    ``{above_tokens, input, output}``, the multipliers of the input-side and output prices of
    a request whose prompt is longer than ``above_tokens`` (Gemini Pro, Claude's 1M context)."""
    request: float = 0.0
    per_1k_tokens: float = 0.0
    image: float = 0.0
    video_second: float = 0.0
    resolution: Mapping[str, float] = field(default_factory=dict)   # video multipliers
    input: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    output: float | None = None
    cache_write_1h: float | None = None
    tools: Mapping[str, float] = field(default_factory=dict)
    service_tier: Mapping[str, float] = field(default_factory=dict)
    long_context: Mapping[str, float] = field(default_factory=dict)
    write_factor: float = 1.0

    @cached_property
    def input_rate(self) -> float:
        return self.per_1k_tokens if self.input is None else self.input

    @cached_property
    def cached_input_rate(self) -> float:
        return self.input_rate if self.cached_input is None else self.cached_input

    @cached_property
    def cache_write_rate(self) -> float:
        return self.input_rate * self.write_factor if self.cache_write is None \
            else self.cache_write

    @cached_property
    def cache_write_1h_rate(self) -> float:
        return self.input_rate * CACHE_WRITE_1H_FACTOR if self.cache_write_1h is None \
            else self.cache_write_1h

    @cached_property
    def output_rate(self) -> float:
        return self.per_1k_tokens if self.output is None else self.output

    def tool_rate(self, family: str) -> float:
        """Credits per call of the hosted tool ``family`` (0: not priced).  A web search
        call is priced as ``web_search``, else as ``web_search_preview``: both tools make
        the same ``web_search_call`` items."""
        rate = self.tools.get(family)
        if rate is None and family == "web_search":
            rate = self.tools.get("web_search_preview")
        return rate or 0.0

    def tier_factor(self, tier: str) -> float:
        """What the token price is multiplied by on ``tier`` as the upstream reported it:
        its ``service_tier`` entry; 1 for the standard tiers; a premium tier without an entry
        (OpenAI reports a ``fast`` request as ``priority``) costs the dearest entry."""
        factor = self.service_tier.get(tier)
        if factor is not None:
            return factor
        if not tier or tier in STANDARD_TIERS or not self.service_tier:
            return 1.0
        return max(1.0, *self.service_tier.values())

    @classmethod
    def for_model(cls, alias: str, type_: str, given: Mapping | None = None,
                  write_factor: float = 1.0) -> Credits:
        """Type defaults (an alias ending in -pro costs double), overridden by ``given``;
        ``write_factor``: what a cache write costs by default, x the input price."""
        factor = 2.0 if alias.endswith("-pro") else 1.0
        base = MODEL_TYPES[type_].credits
        values: dict[str, Any] = {k: (v * factor if isinstance(v, float) else v)
                                  for k, v in base.items()}
        values.update({k: v for k, v in (given or {}).items() if v is not None and v != {}})
        return cls(**values, write_factor=write_factor)



@dataclass(frozen=True)
class ModelSpec:
    alias: str
    provider: ProviderSpec
    upstream: str
    type: str = "chat"
    created: int = 0
    credits: Credits = field(default_factory=Credits)
    fallbacks: tuple[str, ...] = ()
    max_output_tokens: int = 0         # the most output tokens a request may ask for (0: any)
    # reasoning control (providers/reasoning.py): "level", "budget", "none"; "" = by family
    thinking: str = ""
    cache: str = ""                    # "auto": the gateway adds cache breakpoints (Anthropic)
    completions: str = "chat"          # "native": /v1/completions goes to the upstream's own
    allow: Allow = field(default_factory=Allow)   # hosted tools, tiers, betas, fields

    @property
    def owned_by(self) -> str:
        return self.provider.owned_by or self.provider.name


class Catalog:
    def __init__(self, providers: Mapping[str, ProviderSpec], models: Mapping[str, ModelSpec]):
        self.providers = MappingProxyType(dict(providers))
        self.models = MappingProxyType(dict(models))
        self._allowed: dict[str, Allow] = {}
        for alias, spec in self.models.items():
            allow = spec.allow
            for other in self.chain(spec)[1:]:
                allow &= other.allow
            self._allowed[alias] = allow

    def allowed(self, model: ModelSpec) -> Allow:
        """What a request to ``model`` may ask for: what it and each of its fallbacks allow
        (any of them may serve it)."""
        return self._allowed.get(model.alias) or model.allow

    def __len__(self) -> int:
        return len(self.models)

    def resolve(self, alias: object) -> ModelSpec:
        if not isinstance(alias, str) or not alias:
            raise InvalidRequest("`model` must be a non-empty string naming a model; "
                                 "GET /v1/models lists them.", param="model", code="invalid_model")
        spec = self.models.get(alias)
        if spec is None:
            raise NotFound(f"The model `{echo(alias, quote=False)}` does not exist. GET "
                           f"/v1/models lists the {len(self.models)} models this gateway "
                           f"serves.",
                           param="model", code="model_not_found")
        return spec

    def resolve_for(self, alias: object, endpoint: str) -> ModelSpec:
        """Resolve, and refuse a model whose type ``endpoint`` does not serve (the
        ``endpoints`` of its row in ``MODEL_TYPES``)."""
        spec = self.resolve(alias)
        if endpoint not in MODEL_TYPES[spec.type].endpoints:
            hint = MODEL_TYPES[spec.type].home
            raise InvalidRequest(f"`{spec.alias}` is a {spec.type} model and cannot be used with "
                                 f"{endpoint}; use {hint} instead.",
                                 param="model", code="model_type_mismatch")
        return spec

    def chain(self, model: ModelSpec) -> list[ModelSpec]:
        """The model, then its fallbacks, in order."""
        return [model, *(self.models[a] for a in model.fallbacks if a in self.models)]

    def listing(self) -> list[dict]:
        return [{"id": m.alias, "object": "model", "created": m.created,
                 "owned_by": m.owned_by, "type": m.type} for m in self.models.values()]
